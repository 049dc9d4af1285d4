"""The text models against plain transformers on the same model and batches, in the same process:

- training: tokens/s of `Trainer.fit` (as `visiontales fit` runs, TensorBoard logging on) against a
  hand-written loop (fetch, loss, backward, AdamW step) over the same data module;
- generation: tokens/s of the models' own decoding (`SAGANetsCaptioner.next_captions`,
  `CLIPStoryteller.generate_stories`: left padding, the KV cache, the captioner's cast and
  empty-caption rules) against `model.generate` called directly on the same prefixes, with the same
  greedy decoding and token limit.

Tokens are the supervised ones in training (each target caption or story and its EOS) and, in
generation, those of each text written and its EOS, counted alike on both sides from the decoded
texts. The reference tokenizes the same captions the stock way (left-padded text with the scene
tokens). Targets: every ratio >= 0.95.

    python bench/text_models.py [--gpt2 small|tiny] [--steps 30] [--batch-size 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from results import record
from timing import StepTimer, median_step

TARGET = 0.95


SIZES = {"small": {"n_layer": 6, "n_embd": 512, "n_head": 8}}  # distilgpt2's depth, random weights


def gpt2_spec(size: str, folder: Path) -> str:
    """`tiny`, or a GPT-2 of one of SIZES with random weights and the tiny tokenizer, written to `folder`."""
    if size == "tiny":
        return "tiny"
    from transformers import GPT2Config, GPT2LMHeadModel

    from visiontales.backbones import load_gpt2

    _, tokenizer = load_gpt2("tiny")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, **SIZES[size])
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def captioner_and_data(gpt2: str, root: Path, batch_size: int):
    from data_modules.flintstones import FlintstonesSVDataModule
    from visiontales.models.captioner import SAGANetsCaptioner

    L.seed_everything(0)
    return SAGANetsCaptioner(gpt2=gpt2, lr=1e-3), FlintstonesSVDataModule(str(root), batch_size=batch_size)


def storyteller_and_data(gpt2: str, root: Path, batch_size: int):
    """CLIP features computed every step in both loops (no feature cache: the same work)."""
    from data_modules.vist import VISTDataModule
    from visiontales.models.storyteller import CLIPStoryteller

    L.seed_everything(0)
    return (CLIPStoryteller(gpt2=gpt2, clip="tiny", conditioning="prefix", lr=1e-3, feature_cache=False),
            VISTDataModule(str(root), batch_size=batch_size, num_workers=0))


def supervised_tokens(model, batch) -> int:
    """Target tokens of a batch (what the loss covers): each story, or caption k+1, and its EOS."""
    if hasattr(model, "story_ids"):
        return sum(map(len, model.story_ids(batch)))
    return sum(len(model.caption_ids(texts[k])) + 1 for texts, k in zip(batch["texts"], batch["prefix_len"], strict=True))


def loss_of(model, batch) -> torch.Tensor:
    return model.forward_loss(batch)[0] if hasattr(model, "forward_loss") else model.loss(batch)


def plain_training(make, gpt2: str, root: Path, steps: int, batch_size: int) -> float:
    """Tokens/s of a hand-written loop over the data module's batches (median step, warm-up left out)."""
    model, dm = make(gpt2, root, batch_size)
    dm.setup("fit")
    if hasattr(model, "scene_ids"):
        dm.drop_images()  # as the captioner's setup asks: it reads captions only
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=model.hparams.lr)
    times, tokens = [time.perf_counter()], []
    while len(tokens) < steps:
        for batch in dm.train_dataloader():
            loss = loss_of(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tokens.append(supervised_tokens(model, batch))  # counted inside the step, as in the callback
            times.append(time.perf_counter())
            if len(tokens) == steps:
                break
    return statistics.median(tokens) / median_step(times, 6)


class TokenCounter(StepTimer):
    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.tokens.append(supervised_tokens(pl_module, batch))


def lightning_training(make, gpt2: str, root: Path, steps: int, batch_size: int, workdir: Path) -> float:
    """Tokens/s of `Trainer.fit` (median step, warm-up left out)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    model, dm = make(gpt2, root, batch_size)
    counter = TokenCounter()
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[counter],
                        logger=TensorBoardLogger(workdir, name="bench"), log_every_n_steps=10)
    trainer.fit(model, dm)
    return statistics.median(counter.tokens) / counter.step_seconds()


def written_tokens(tokenizer, texts: list[str]) -> int:
    """Tokens of the texts written, each as its model reads a text (after a space) and its EOS:
    counted alike for both sides from their decoded texts."""
    return sum(len(tokenizer(" " + text.strip())["input_ids"]) + 1 for text in texts)


def timed(ours, reference, rounds: int) -> tuple[tuple[float, list[str]], tuple[float, list[str]]]:
    """((median seconds, texts) of `ours`, the same of `reference`), the two alternating each round."""
    times: dict = {ours: [], reference: []}
    texts: dict = {}
    reference(), ours()  # warm-up, untimed, so neither side's first round pays for it
    for _ in range(rounds):  # alternate, so drift in machine load hits both alike
        for fn in (reference, ours):
            start = time.perf_counter()
            texts[fn] = fn()
            times[fn].append(time.perf_counter() - start)
    return (statistics.median(times[ours]), texts[ours]), (statistics.median(times[reference]), texts[reference])


def captioner_generation(gpt2: str, root: Path, batch_size: int, rounds: int) -> tuple[float, float]:
    """(tokens/s of next_captions, of model.generate) on the test split's prefixes."""
    model, dm = captioner_and_data(gpt2, root, batch_size)
    model.eval()
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    prefixes = [texts[:k] for texts, k in zip(batch["texts"], batch["prefix_len"], strict=True)]
    tok = model.tokenizer
    # the stock way from the same captions: the serialized prefixes as text, tokenized left-padded
    texts = ["".join(f"<SCENE_{i + 1}> {c.strip()}" for i, c in enumerate(p)) + f"<SCENE_{len(p) + 1}>"
             for p in prefixes]
    options = model.decoding_options()

    def plain() -> list[str]:
        inputs = tok(texts, padding=True, padding_side="left", return_tensors="pt")
        with torch.no_grad():
            out = model.gpt2.generate(**inputs, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **options)
        return tok.batch_decode(out[:, inputs.input_ids.shape[1]:], skip_special_tokens=True)

    (ours_s, ours), (reference_s, theirs) = timed(lambda: model.next_captions(prefixes), plain, rounds)
    return written_tokens(tok, ours) / ours_s, written_tokens(tok, theirs) / reference_s


def storyteller_generation(gpt2: str, root: Path, batch_size: int, rounds: int) -> tuple[float, float]:
    """(tokens/s of generate_stories, of model.generate on the same CLIP prefixes) on the test split."""
    model, dm = storyteller_and_data(gpt2, root, batch_size)
    model.eval()
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    tok = model.tokenizer
    options = {**model.decoding_options(), "no_repeat_ngram_size": model.hparams.no_repeat_ngram_size}

    def plain() -> list[str]:
        with torch.no_grad():
            prefix = model.condition(batch)
            out = model.gpt2.generate(inputs_embeds=prefix, attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long),
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **options)
        return tok.batch_decode(out, skip_special_tokens=True)

    (ours_s, ours), (reference_s, theirs) = timed(lambda: model.generate_stories(batch), plain, rounds)
    return written_tokens(tok, ours) / ours_s, written_tokens(tok, theirs) / reference_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpt2", choices=["tiny", *SIZES], default="small",
                        help="GPT-2 size: small (6 layers, 512 wide, random weights) or tiny (2 x 64, where "
                             "Lightning's fixed cost per step is a large share of a ~15 ms step)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()

    from data_modules.synthetic import write_synthetic_flintstones, write_synthetic_vist

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("VISIONTALES_HOME", str(tmp / "home"))
        write_synthetic_flintstones(tmp / "f", seed=0, episodes=20)
        write_synthetic_vist(tmp / "v", seed=0, albums=60)
        gpt2 = gpt2_spec(opts.gpt2, tmp / "gpt2")
        lines = []
        for name, make, root in (("captioner", captioner_and_data, tmp / "f"),
                                 ("storyteller", storyteller_and_data, tmp / "v")):
            plain, ours = [], []
            for _ in range(2):  # alternate, so drift in machine load hits both alike
                plain.append(plain_training(make, gpt2, root, opts.steps, opts.batch_size))
                ours.append(lightning_training(make, gpt2, root, opts.steps, opts.batch_size, tmp))
            lines.append((f"{name}_train", max(ours), max(plain), "Lightning / plain loop training tokens/s"))
        for name, measure, root in (("captioner", captioner_generation, tmp / "f"),
                                    ("storyteller", storyteller_generation, tmp / "v")):
            ours, plain = measure(gpt2, root, opts.batch_size * 4, opts.rounds)
            lines.append((f"{name}_generate", ours, plain, "own decoding / model.generate tokens/s"))
    print(f"\n{opts.gpt2} GPT-2 (and tiny CLIP), batch {opts.batch_size} in training and {opts.batch_size * 4} in generation, "
          f"CPU threads {torch.get_num_threads()}")
    for name, ours, plain, _ in lines:
        print(f"{name:<22} ours {ours:9.0f} tokens/s   reference {plain:9.0f} tokens/s")
    for name, ours, plain, what in lines:
        record(name, ours / plain, TARGET, "higher", what, gpt2=opts.gpt2, tokens_per_s=round(ours),
               reference_tokens_per_s=round(plain))


if __name__ == "__main__":
    main()
