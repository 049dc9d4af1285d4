"""BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr with pycocoevalcap, as a torchmetrics Metric.

The protocol of lichengunc/vist_eval (a coco-caption fork): predictions and references are PTB-
tokenised by Stanford CoreNLP, METEOR is the Java 1.5 jar (NLTK's and HF `evaluate`'s METEOR give
other numbers), one prediction per key scored against every reference of that key. Both the
tokenizer and METEOR run Java, which must be on PATH.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil

import torch
import torch.distributed as dist
from pycocoevalcap.meteor.meteor import Meteor
from torchmetrics import Metric

from visiontales.errors import VisionTalesError

SCORE_NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider")


def coco_caption_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """Corpus-level scores (fractions, not x100) for one prediction and n references per key."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if shutil.which("java") is None:
        raise VisionTalesError("java: not found on PATH; METEOR and the PTB tokenizer of pycocoevalcap "
                               "need a Java runtime (e.g. apt-get install default-jre-headless)")
    if not predictions:
        return {name: 0.0 for name in SCORE_NAMES}
    # one tokenizer run (one JVM start) for both sides
    both = {("ref", k): [{"caption": r} for r in references[k]] for k in predictions}
    both.update({("hyp", k): [{"caption": p}] for k, p in predictions.items()})
    tokenized = PTBTokenizer().tokenize(both)
    gts = {k: tokenized[("ref", k)] for k in predictions}
    # an empty hypothesis would trip BLEU's length assertions; it scores as a single unknown word
    res = {k: [tokenized[("hyp", k)][0] or "<empty>"] for k in predictions}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its length statistics
        bleu, _ = Bleu(4).compute_score(gts, res)
    meteor_score = _meteor_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return dict(zip(SCORE_NAMES, [*bleu, meteor_score, rouge, cider], strict=True))


class ProcessMeteor(Meteor):
    """pycocoevalcap's Meteor, remembering the process that started its JVM (a forked child must not
    write to its parent's), and stopped without waiting for its lock, which a failed request leaves
    held (pycocoevalcap's `__del__` would wait forever)."""

    def __init__(self) -> None:
        super().__init__()
        self.pid = os.getpid()

    def __del__(self) -> None:
        if os.getpid() == getattr(self, "pid", None):  # no pid: the JVM never started
            self.meteor_p.kill()
            self.meteor_p.wait()


_meteor: ProcessMeteor | None = None  # this process's (_meteor_score)


def _meteor_score(gts: dict, res: dict) -> float:
    """Corpus METEOR from one METEOR 1.5 JVM per process, started on first use and kept: the jar loads
    its paraphrase tables at the first request (~10 s on 2 cores), then scores a batch in milliseconds,
    and validation scores every epoch. A scorer that failed mid-request is dropped."""
    global _meteor
    if _meteor is None or _meteor.pid != os.getpid() or _meteor.meteor_p.poll() is not None:
        _meteor = ProcessMeteor()
    try:
        return _meteor.compute_score(gts, res)[0]
    except BaseException:
        _meteor = None
        raise


def _as_tensors(scores: dict[str, float]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(float(value)) for name, value in scores.items()}


class CaptionScores(Metric):
    """Accumulates (key, prediction, references) and scores them with `coco_caption_scores`.

    Keys are what the references are keyed by (the photo sequence for VIST). A key seen twice,
    e.g. when DistributedSampler pads the last batch with repeats, is scored once. Under DDP the
    states are gathered on every rank and rank 0 alone scores them (one METEOR JVM, not one per
    rank), broadcasting the scores (or its error) to the others.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("keys", default=[], dist_reduce_fx="cat")
        self.add_state("predictions", default=[], dist_reduce_fx="cat")
        self.add_state("references", default=[], dist_reduce_fx="cat")

    def update(self, keys: list[str], predictions: list[str], references: list[list[str]]) -> None:
        self.keys.extend(keys)
        self.predictions.extend(predictions)
        self.references.extend(references)

    def compute(self) -> dict[str, torch.Tensor]:
        group = self.process_group
        if not (self.sync_on_compute and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(group) > 1):
            return _as_tensors(self._score())
        # every rank holds the same gathered states: rank 0 scores them (one METEOR JVM) and sends
        # the scores, or its error, which the other ranks waiting in the broadcast raise too
        box = [None]
        if dist.get_rank(group) == 0:
            try:
                box[0] = self._score()
            except Exception as error:
                box[0] = error
        dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0) if group else 0, group=group)
        if isinstance(box[0], Exception):
            raise box[0]
        return _as_tensors(box[0])

    def _score(self) -> dict[str, float]:
        return coco_caption_scores(dict(zip(self.keys, self.predictions, strict=True)),
                                   dict(zip(self.keys, self.references, strict=True)))

    def _sync_dist(self, dist_sync_fn=None, process_group=None) -> None:
        # the states are Python strings, which torchmetrics' tensor all-gather cannot carry
        gathered: list = [None] * dist.get_world_size(process_group or self.process_group)
        dist.all_gather_object(gathered, (self.keys, self.predictions, self.references),
                               group=process_group or self.process_group)
        self.keys = [k for keys, _, _ in gathered for k in keys]
        self.predictions = [p for _, preds, _ in gathered for p in preds]
        self.references = [r for _, _, refs in gathered for r in refs]
