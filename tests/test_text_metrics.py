import pytest

from visiontales.evaluation.text_metrics import SCORE_NAMES, CaptionScores, coco_caption_scores

REFS = {"a": ["the dog ran on the beach .", "a dog played by the sea ."],
        "b": ["we had a big cake at the party .", "the party had a cake ."]}


def test_exact_prediction_scores_one():
    scores = coco_caption_scores({"a": REFS["a"][0], "b": REFS["b"][0]}, REFS)
    for name in ("bleu1", "bleu4", "meteor", "rougeL"):
        assert scores[name] == pytest.approx(1.0, abs=1e-6)
    assert scores["cider"] > 1.0


def test_worse_predictions_score_lower():
    good = coco_caption_scores({"a": "the dog ran on the beach .", "b": "we had a cake at the party ."}, REFS)
    bad = coco_caption_scores({"a": "a car in the snow .", "b": "the mountain lake ."}, REFS)
    empty = coco_caption_scores({"a": "", "b": ""}, REFS)
    for name in SCORE_NAMES:
        assert good[name] > bad[name] >= empty[name] - 1e-9 >= -1e-9


def test_one_meteor_jvm_serves_the_process_and_one_that_fails_is_stopped(monkeypatch):
    from visiontales.evaluation import text_metrics

    preds = {"a": "the dog ran .", "b": "a cake ."}
    first = coco_caption_scores(preds, REFS)
    jvm = text_metrics._meteor.meteor_p
    assert coco_caption_scores(preds, REFS) == first and text_metrics._meteor.meteor_p is jvm
    monkeypatch.setattr(text_metrics.ProcessMeteor, "_stat", lambda *args: 1 / 0)  # fails holding its lock
    with pytest.raises(ZeroDivisionError):
        coco_caption_scores(preds, REFS)
    assert text_metrics._meteor is None and jvm.poll() is not None  # dropped and its JVM stopped, no hang


def test_metric_scores_each_key_once():
    once, twice = CaptionScores(), CaptionScores()
    once.update(["a", "b"], ["the dog ran .", "a cake ."], [REFS["a"], REFS["b"]])
    twice.update(["a", "b"], ["the dog ran .", "a cake ."], [REFS["a"], REFS["b"]])
    twice.update(["a"], ["the dog ran ."], [REFS["a"]])  # a padded repeat, as DistributedSampler makes
    first, second = once.compute(), twice.compute()
    assert set(first) == set(SCORE_NAMES)
    assert all(first[k].item() == pytest.approx(second[k].item()) for k in SCORE_NAMES)


def _score_on_two_ranks(rank: int, store_path: str, out: str, fail: bool) -> None:
    """One gloo rank of test_under_ddp_rank_0_alone_scores_and_every_rank_gets_its_scores_or_its_error;
    scoring is replaced by a recorder."""
    import json

    import torch.distributed as dist

    from visiontales.evaluation import text_metrics

    calls = []

    def score(predictions, references):
        calls.append(sorted(predictions))
        if fail:
            raise text_metrics.VisionTalesError("java: not found on PATH")
        return {"bleu1": len(predictions)}

    text_metrics.coco_caption_scores = score
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    metric = CaptionScores()
    metric.update([f"k{rank}"], [f"prediction {rank}"], [["a reference"]])
    try:
        result = {name: value.item() for name, value in metric.compute().items()}
    except text_metrics.VisionTalesError as error:
        result = {"error": str(error)}
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"result": result, "calls": calls}, f)
    dist.destroy_process_group()


@pytest.mark.parametrize("fail", [False, True])
def test_under_ddp_rank_0_alone_scores_and_every_rank_gets_its_scores_or_its_error(tmp_path, fail):
    import json

    import torch.multiprocessing as mp

    mp.start_processes(_score_on_two_ranks, args=(str(tmp_path / "store"), str(tmp_path / "out"), fail), nprocs=2,
                       start_method="fork")
    results = [json.loads((tmp_path / f"out.{rank}").read_text()) for rank in (0, 1)]
    assert [r["calls"] for r in results] == [[["k0", "k1"]], []]  # rank 0 scored both ranks' keys, once
    if fail:  # rank 0's error reaches rank 1, which would otherwise wait for scores forever
        assert [r["result"] for r in results] == [{"error": "java: not found on PATH"}] * 2
    else:
        assert [r["result"] for r in results] == [{"bleu1": 2.0}] * 2
