"""--refine encoder: the frozen encoder as judge; it never lowers the cosine it optimises and is
reproducible for a seed."""

import json

import pytest
import torch

from sgdd.cache import open_cache
from sgdd.cache.views import sentence_view
from sgdd.decoding.refine import content_positions, deletion_gains, refine, remask, remask_counts
from sgdd.decoding.rerank import ReEncoder
from sgdd.decoding.samplers import Sampling
from sgdd.metrics import cosine
from sgdd.models.checkpoint import load_model
from sgdd.models.diffusion import get_schedule
from sgdd.runtime import pick_precision
from sgdd.stages import evaluate
from tests.helpers_eval import collect_tiny
from tests.evaluate.test_evaluate import eval_cfg, make_run, read_report

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def collected(tmp_path_factory, tiny_encoder_dir):
    return collect_tiny(tmp_path_factory.mktemp("collected"), tiny_encoder_dir)


def test_remask_takes_the_least_confident_content_tokens():
    ids = torch.tensor([[0, 7, 8, 9, 2, 1], [0, 5, 2, 1, 1, 1]])
    content = content_positions(ids, torch.tensor([6, 6]), eos_id=2)
    assert content.tolist() == [[False, True, True, True, False, False], [False, True, False, False, False, False]]
    conf = torch.tensor([[0.0, -1.0, -3.0, -2.0, -9.0, -9.0], [0.0, -1.0, -9.0, -9.0, -9.0, -9.0]])
    k = remask_counts(content.sum(1), 4)
    assert k.tolist() == [[1, 1, 1, 2], [1, 1, 1, 1]]  # up to half the content, at least 1, at most all
    assert remask(ids, conf, content, torch.tensor([2, 1]), 4).tolist() == [[0, 7, 4, 4, 2, 1], [0, 4, 2, 1, 1, 1]]


def test_deletion_gains_score_each_one_token_deletion():
    ids = torch.tensor([[0, 7, 8, 9, 2, 1], [0, 5, 6, 6, 7, 9]])  # the second row fills L without an end token
    content = content_positions(ids, torch.tensor([6, 6]), eos_id=2)
    seen = []

    def encode(x):  # a bag of content tokens, with a position weight so that order matters
        seen.append(x.clone())
        keep = content_positions(x, torch.full((x.shape[0],), x.shape[1]), eos_id=2)
        weight = keep.float() * (1 + 0.1 * torch.arange(x.shape[1]))
        return torch.zeros(x.shape[0], 10).scatter_add_(1, x, weight)

    target = torch.tensor([[0, 0, 0, 0, 0, 1.0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1.0, 1, 1, 0, 0]])
    current = cosine(encode(ids), target)
    gains = deletion_gains(ids, content, encode, target, current, eos_id=2)
    variants = seen[-1]
    assert variants.tolist() == [[0, 8, 9, 2, 1, 1], [0, 7, 9, 2, 1, 1], [0, 7, 8, 2, 1, 1],
                                 [0, 6, 6, 7, 9, 2], [0, 5, 6, 7, 9, 2], [0, 5, 6, 7, 9, 2],
                                 [0, 5, 6, 6, 9, 2], [0, 5, 6, 6, 7, 2]]
    expected = cosine(encode(variants), target[torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])]) - \
        current[torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])]
    assert torch.allclose(gains[content], expected)
    assert bool(torch.isinf(gains[~content]).all())
    assert int(gains[0].argmax()) == 3  # token 9 is not in the first target: deleting it helps most
    assert int(gains[1].argmax()) == 5


def _refine(model, encoder, tokenizer, special, z, ids, seed, order="confidence"):
    from sgdd.stages.evaluate.data import to_texts

    def encode(x):
        return encoder.encode(to_texts(x, "sentences", tokenizer, special))

    return refine(model, z, ids, torch.full((ids.shape[0],), ids.shape[1]), torch.zeros(ids.shape), encode,
                  rounds=3, candidates=6, sampling=Sampling(steps=4, temperature=1.0), noise=get_schedule("cosine"),
                  seed=seed, batch_size=8, eos_id=special["eos_id"], autocast=pick_precision("fp32", CPU).autocast,
                  order=order)


@pytest.mark.parametrize("order", ["confidence", "usefulness", "both"])
def test_refinement_never_lowers_the_cosine_and_is_reproducible(tmp_path, collected, order):
    from sgdd.decoding.maskgit import decode
    from sgdd.stages.evaluate.data import to_texts

    cache = open_cache(collected)
    run_dir = make_run(tmp_path / "run", collected)
    model, _ = load_model(run_dir / "checkpoints" / "best")
    special = {k: cache.encoder_info[k] for k in ("pad_id", "mask_id", "bos_id", "eos_id")}
    tokenizer = cache.tokenizer()
    encoder = ReEncoder(cache.encoder_info, CPU, pick_precision("fp32", CPU))
    z = sentence_view(cache.split("train"), 16, special["pad_id"]).vectors[:6]
    ids = decode(model, z, 4)
    history = _refine(model, encoder, tokenizer, special, z, ids, seed=3, order=order)
    assert len(history) == 4 and history[0].accepted is None
    for before, after in zip(history, history[1:]):
        assert bool((after.cosine >= before.cosine).all())  # per row, every round
        changed = (after.ids != before.ids).any(1)
        assert torch.equal(changed, after.accepted)  # a row changes only when it took a better candidate
    assert bool(history[-1].accepted.any() or history[1].accepted.any())  # it did improve something
    # the recorded cosine is the re-encoded output's
    texts = to_texts(history[-1].ids, "sentences", tokenizer, special)
    true = torch.nn.functional.cosine_similarity(encoder.encode(texts), z.float())
    assert torch.allclose(true, history[-1].cosine, atol=1e-5)
    again = _refine(model, encoder, tokenizer, special, z, ids, seed=3, order=order)
    assert all(torch.equal(a.ids, b.ids) for a, b in zip(history, again))


def test_refinement_through_eval_reports_every_round(tmp_path, collected):
    run_dir = make_run(tmp_path / "run", collected)
    common = dict(split="train", max_samples=6, refine="encoder", refine_steps=2, refine_candidates=4,
                  refine_temperature=1.0, metrics=["bleu", "encoder_cosine", "bow_f1"])
    out = evaluate.run(eval_cfg(run_dir, out=str(tmp_path / "a"), **common))
    report = read_report(out)
    rounds = report["results"][0]["refinement"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    cosines = [r["cosine"] for r in rounds]
    assert cosines == sorted(cosines)
    assert all(r["metrics"]["encoder_cosine"] == pytest.approx(100 * r["cosine"], abs=1e-3) for r in rounds)
    assert report["metrics"] == rounds[-1]["metrics"]
    plain = read_report(evaluate.run(eval_cfg(run_dir, out=str(tmp_path / "plain"), split="train", max_samples=6,
                                              metrics=["bleu", "encoder_cosine", "bow_f1"])))
    assert rounds[0]["metrics"] == pytest.approx(plain["metrics"])  # round 0 is the plain decode
    assert "## Refinement by the encoder" in (out / "report.md").read_text()
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert all("before_refinement" in r for r in rows)
    again = read_report(evaluate.run(eval_cfg(run_dir, out=str(tmp_path / "b"), **common)))
    repeat = again["results"][0]["refinement"]
    assert [r["cosine"] for r in repeat] == pytest.approx(cosines, abs=1e-6)
    assert [r["metrics"] for r in repeat] == [pytest.approx(r["metrics"]) for r in rounds]
    assert [json.loads(x)["output"] for x in (tmp_path / "b" / "samples.jsonl").read_text().splitlines()] == \
        [r["output"] for r in rows]
