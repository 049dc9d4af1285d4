"""SAGANetsCaptioner: the text side of SAGANets (the SAGANets paper, sections 4.1 and 4.3).

GPT-2 predicts caption k+1 of a FlintstonesSV story from the serialized prefix

    P_k = [S_1, C_1, ..., S_k, C_k, S_{k+1}]

where S_i is the added special token <SCENE_i> and C_i the i-th caption; the target caption and
EOS follow, and the cross-entropy covers those target tokens only (everything else is -100).
Training draws k ~ U{0..K} per story (the data module); GPT-2 is fully fine-tuned as in the paper,
or adapted with LoRA on `c_attn` (peft) for larger models, the scene-token embeddings trained too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchmetrics.classification import MultilabelF1Score
from torchmetrics.text import Perplexity
from transformers import LogitsProcessor, LogitsProcessorList

from visiontales.backbones import load_gpt2
from visiontales.errors import VisionTalesError
from visiontales.evaluation.text_metrics import CaptionScores
from visiontales.models.text_generation import TextGenerationModule
from visiontales.vocabulary import MAIN_CHARACTERS, STORY_LENGTH, named_characters

SCENE_TOKENS = [f"<SCENE_{i}>" for i in range(1, STORY_LENGTH + 1)]


class SAGANetsCaptioner(TextGenerationModule, kind="saganets_captioner"):
    """GPT-2 that writes the next caption of a story from a prefix of its captions."""

    datamodule_class = "data_modules.flintstones.FlintstonesSVDataModule"

    def __init__(
        self,
        gpt2: str = "openai-community/gpt2",
        ignore_prefix: bool = False,
        lora_rank: int = 0,
        lora_alpha: int = 32,
        max_caption_tokens: int = 48,
        max_new_tokens: int = 40,
        max_prefix_len: int = 3,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            gpt2: GPT-2 to fine-tune: hub id (gpt2), local directory, "tiny" or "tiny-domain".
            ignore_prefix: ablation: read only the scene token S_{k+1}, never the earlier captions.
            lora_rank: 0 fine-tunes all of GPT-2 (the paper); r > 0 trains rank-r LoRA adapters on
                `c_attn` and the scene-token embeddings instead.
            lora_alpha: LoRA alpha (the update is scaled by alpha / r).
            max_caption_tokens: each caption is truncated to this many tokens.
            max_new_tokens: longest caption generated, in tokens.
            max_prefix_len: the most captions `continue_story` reads before writing the next: the K
                it was trained with (the paper: 3), taken from the data module when fitting. A longer
                prefix would end in a scene token it never learned to write after (a captioner
                trained with K = 3 wrote empty fifth captions from four-caption prefixes).
            **kwargs: the optimiser and decoding options of TextGenerationModule (lr, weight_decay,
                warmup_steps, decoding, num_beams, top_p, temperature, samples_to_log).
        """
        if not 0 <= max_prefix_len <= STORY_LENGTH - 1:
            raise VisionTalesError(f"max_prefix_len must be within 0..{STORY_LENGTH - 1}, got {max_prefix_len}")
        super().__init__(max_new_tokens=max_new_tokens, **kwargs)
        self.gpt2, self.tokenizer = load_gpt2(gpt2)
        self.tokenizer.add_special_tokens({"additional_special_tokens": SCENE_TOKENS})
        self.gpt2.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        self.scene_ids = self.tokenizer.convert_tokens_to_ids(SCENE_TOKENS)
        if lora_rank:
            from peft import LoraConfig, get_peft_model

            self.gpt2 = get_peft_model(self.gpt2, LoraConfig(
                r=lora_rank, lora_alpha=lora_alpha, target_modules=["c_attn"],
                trainable_token_indices={"wte": self.scene_ids}))
        self.init_metrics({"scores": CaptionScores,
                           "char_f1": lambda: MultilabelF1Score(len(MAIN_CHARACTERS), average="micro"),
                           "ppl": lambda: Perplexity(ignore_index=-100)})

    # ------------------------------------------------------------------------------- inputs

    def caption_ids(self, caption: str) -> list[int]:
        return self.tokenizer(" " + caption.strip())["input_ids"][: self.hparams.max_caption_tokens]

    def prefix_ids(self, captions: list[str]) -> list[int]:
        """P_k for the k given captions: [S_1, C_1, ..., S_k, C_k, S_{k+1}]."""
        k = len(captions)
        ids = []
        if not self.hparams.ignore_prefix:
            for i, caption in enumerate(captions):
                ids += [self.scene_ids[i], *self.caption_ids(caption)]
        return ids + [self.scene_ids[k]]

    def inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, labels), right-padded; labels are -100 except caption k+1 + EOS."""
        rows, targets = [], []
        for texts, k in zip(batch["texts"], batch["prefix_len"], strict=True):
            rows.append(self.prefix_ids(texts[:k]))
            targets.append(self.caption_ids(texts[k]) + [self.tokenizer.eos_token_id])
        t = max(len(p) + len(c) for p, c in zip(rows, targets, strict=True))
        ids = torch.full((len(rows), t), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), t), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), t), dtype=torch.long)
        for i, (prefix, target) in enumerate(zip(rows, targets, strict=True)):
            n = len(prefix) + len(target)
            ids[i, :n] = torch.tensor(prefix + target)
            labels[i, len(prefix):n] = torch.tensor(target)
            mask[i, :n] = 1
        return ids.to(self.device), mask.to(self.device), labels.to(self.device)

    def forward_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean target-token cross-entropy, logits, labels)."""
        ids, mask, labels = self.inputs(batch)
        out = self.gpt2(input_ids=ids, attention_mask=mask, labels=labels)
        return out.loss, out.logits, labels

    @torch.no_grad()
    def next_captions(self, prefixes: list[list[str]]) -> list[str]:
        """Caption k+1 for each list of k captions (k may differ between items; 0 <= k < 5)."""
        rows = [self.prefix_ids(p) for p in prefixes]
        t = max(map(len, rows))
        # left padding, so that every row's generation starts right after its prefix
        ids = torch.full((len(rows), t), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), t), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, t - len(row):] = torch.tensor(row)
            mask[i, t - len(row):] = 1
        out = self.gpt2.generate(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
            # a caption has words, never a scene token, and names each character once
            min_new_tokens=2, suppress_tokens=self.scene_ids,
            logits_processor=LogitsProcessorList([CastOnce(self.tokenizer, t, self.device)]), **self.decoding_options())
        return [s.strip() for s in self.tokenizer.batch_decode(out[:, t:], skip_special_tokens=True)]

    def continue_story(self, captions: list[str], steps: int) -> list[str]:
        """The next `steps` captions after `captions` (any number, even none), one at a time, each
        from the last `max_prefix_len` captions before it at most (the prefixes it was trained on)."""
        story = list(captions)
        for _ in range(steps):
            story.append(self.next_captions([story[max(0, len(story) - self.hparams.max_prefix_len):]])[0])
        return story[len(captions):]

    # ------------------------------------------------------------------------------ export

    def export(self, directory: Path) -> list[Path]:
        """GPT-2 in transformers format with the scene tokens in its tokenizer; a LoRA captioner as
        peft adapters (scene-token rows included) over its base GPT-2."""
        before = set(directory.iterdir())
        self.tokenizer.save_pretrained(directory)
        self.gpt2.save_pretrained(directory)
        return sorted(set(directory.iterdir()) - before)

    def export_usage(self) -> str:
        scenes = ", ".join(f'"{t}"' for t in SCENE_TOKENS)
        if self.hparams.lora_rank:
            load = f"""from peft import PeftModel

tokenizer = AutoTokenizer.from_pretrained(DIR)
base = AutoModelForCausalLM.from_pretrained("{self.gpt2.peft_config['default'].base_model_name_or_path}")
base.resize_token_embeddings(len(tokenizer))  # room for the scene tokens
model = PeftModel.from_pretrained(base, DIR).eval()"""
        else:
            load = """tokenizer = AutoTokenizer.from_pretrained(DIR)
model = AutoModelForCausalLM.from_pretrained(DIR).eval()"""
        return f"""With transformers (the prefix serialized as the captioner reads it: `<SCENE_1> caption 1 ...
<SCENE_k> caption k<SCENE_k+1>`, each caption after a space):

```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DIR = "."
{load}
prefix = ["Fred is walking in the yard.", "Fred and Barney are talking in the yard."]
text = "".join(f"<SCENE_{{i + 1}}> {{c.strip()}}" for i, c in enumerate(prefix)) + f"<SCENE_{{len(prefix) + 1}}>"
ids = tokenizer(text, return_tensors="pt").input_ids
with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens={self.hparams.max_new_tokens}, min_new_tokens=2,
                         suppress_tokens=tokenizer.convert_tokens_to_ids([{scenes}]),
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
```

This is the captioner's greedy decoding; VisionTales also bans a character's name once the
caption has written it (`visiontales.models.captioner.CastOnce`, a `LogitsProcessor`)."""

    # ------------------------------------------------------------------------------- hooks

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self._trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "drop_images"):
            datamodule.drop_images()  # the captioner reads captions only
        if stage == "fit" and "max_prefix_len" in getattr(datamodule, "hparams", {}):
            self.hparams.max_prefix_len = datamodule.hparams.max_prefix_len  # kept in the checkpoint

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _, _ = self.forward_loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["texts"]))
        return loss

    def evaluation_step(self, batch: dict[str, Any], split: str) -> dict[str, Any]:
        metrics = self.split_metrics[split]
        loss, logits, labels = self.forward_loss(batch)
        self.log(f"{split}/loss", loss, batch_size=len(batch["texts"]), sync_dist=True)
        metrics["ppl"].update(logits[:, :-1].float(), labels[:, 1:])
        ks = batch["prefix_len"]
        prefixes = [texts[:k] for texts, k in zip(batch["texts"], ks, strict=True)]
        generated = self.next_captions(prefixes)
        references = [texts[k] for texts, k in zip(batch["texts"], ks, strict=True)]
        metrics["scores"].update([f"{s}#{k}" for s, k in zip(batch["story_id"], ks, strict=True)], generated,
                                 [[r] for r in references])
        annotated = torch.stack([chars[k] for chars, k in zip(batch["characters"], ks, strict=True)])
        metrics["char_f1"].update(named_characters(generated).to(self.device), annotated.int())
        return {"samples": [{"prefix": " / ".join(p) or "(none)", "generated": g, "reference": r}
                            for p, g, r in zip(prefixes, generated, references, strict=True)]}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        prefixes = [texts[:k] for texts, k in zip(batch["texts"], batch["prefix_len"], strict=True)]
        generated = self.next_captions(prefixes)
        return [{"story_id": s, "prefix": p, "generated": g, "reference": texts[len(p)]}
                for s, p, g, texts in zip(batch["story_id"], prefixes, generated, batch["texts"], strict=True)]


class CastOnce(LogitsProcessor):
    """Bans a main character's name once the caption being generated has named them: no "Wilma and
    Wilma". A name (or "Slate" for Mr Slate) is found as its token sequence after a space, as
    captions are written (`caption_ids`), and banned by its first token (so a name split into
    several tokens also bans other words that start with its first, e.g. " Mr"); generated tokens
    begin at position `start` of every row. A handful of tensor operations a step, whatever the batch."""

    def __init__(self, tokenizer, start: int, device: torch.device | str = "cpu") -> None:
        self.start = start
        variants = [(character, tokenizer(" " + name)["input_ids"])
                    for character, names in enumerate([[n, "Slate"] if n == "Mr Slate" else [n] for n in MAIN_CHARACTERS])
                    for name in names]
        self.first = torch.tensor([ids[0] for _, ids in variants], device=device)  # what bans each variant
        self.owner = torch.tensor([character for character, _ in variants], device=device)
        single = [(c, ids[0]) for c, ids in variants if len(ids) == 1]
        self.single_ids = torch.tensor([token for _, token in single], dtype=torch.long, device=device)
        self.single_owner = torch.zeros(len(single), len(MAIN_CHARACTERS), device=device)
        self.single_owner[torch.arange(len(single)), torch.tensor([c for c, _ in single], dtype=torch.long)] = 1.0
        self.longer = [(c, torch.tensor(ids, device=device)) for c, ids in variants if len(ids) > 1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.start:]
        named = ((generated[..., None] == self.single_ids).any(1).float() @ self.single_owner) > 0  # (B, 7)
        for character, ids in self.longer:
            if generated.shape[1] >= len(ids):
                named[:, character] |= (generated.unfold(1, len(ids), 1) == ids).all(-1).any(-1)
        # a token that starts several variants is banned if any of theirs is named
        banned = scores.new_zeros(scores.shape).index_add_(1, self.first, named[:, self.owner].to(scores.dtype))
        return scores.masked_fill_(banned > 0, -float("inf"))
