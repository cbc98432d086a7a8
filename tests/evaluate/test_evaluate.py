"""Stage 3 end to end on tiny caches: report files, samplers, sweeps, the three tasks (reconstruction,
paraphrase, MTP), reranking by the encoder, run resolution and refusals of bad input."""

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sgdd.cache import open_cache
from sgdd.cache.views import sentence_view
from sgdd.cli import cli
from sgdd.decoding.maskgit import Trajectory
from sgdd.decoding.samplers import SAMPLERS
from sgdd.metrics import IBLEU_ALPHA, bleu, distinct_n, self_bleu
from sgdd.models.checkpoint import model_meta, save_model
from sgdd.models.decoder import Decoder
from sgdd.config import from_dict, load_yaml
from sgdd.models.decoder import DecoderConfig
from sgdd.stages.evaluate.config import EvalConfig
from sgdd.errors import SgddError
from sgdd.runtime import pick_precision
from sgdd.stages import evaluate
from sgdd.stages.evaluate import batches, resolve
from tests.helpers import SENTENCES, build_cache
from tests.helpers_eval import build_pair_cache, build_window_cache, collect_tiny, nearest_decoder

MAX_LEN = 16


def make_run(run_dir: Path, cache_dir: Path, cond_dim: int | None = None, max_len: int = MAX_LEN,
             checkpoints: tuple[str, ...] = ("best", "last"), extra_meta: dict | None = None,
             ema: bool = False) -> Path:
    """A run directory holding a random tiny decoder saved the way the trainer saves it."""
    info = open_cache(cache_dir).encoder_info
    special = {k: info[k] for k in ("pad_id", "mask_id", "bos_id", "eos_id")}
    torch.manual_seed(0)
    cfg = DecoderConfig(n_layers=1, d_model=16, n_heads=2, max_len=max_len, cond_tokens=2)
    model = Decoder(cfg, info["vocab_size"], cond_dim or info["hidden_size"], info["embed_dim"], info["mask_id"])
    weights = {k: torch.zeros_like(v) for k, v in model.state_dict().items()} if ema else None
    for name in checkpoints:
        meta = {**model_meta(model, cache_dir, special), **(extra_meta or {})}
        save_model(run_dir / "checkpoints" / name, model, meta, **({"ema_weights": weights} if ema else {}))
    return run_dir


def eval_cfg(run_dir: Path | None, **kw) -> EvalConfig:
    base = {"run": None if run_dir is None else str(run_dir), "steps": 4, "batch_size": 3, "device": "cpu",
            "precision": "fp32"}
    return from_dict(EvalConfig, {**base, **kw})


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def lookup_decoder(answers: dict, wrong_at: int | None = None):
    """A stand-in for ``decode`` that looks each condition's reference ids up (optionally with a
    wrong token at one position), reporting one forward pass."""

    def perfect_decode(model, z, **kw):
        ids = torch.stack([answers[tuple(v.tolist())] for v in z.float()]).clone()
        if wrong_at is not None:
            ids[:, wrong_at] = (ids[:, wrong_at] + 1) % model.vocab_size
        return ids, Trajectory(torch.ones_like(ids), 1, torch.ones(ids.shape[0], dtype=torch.long))

    return perfect_decode


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


# -- reconstruction --------------------------------------------------------------------------
def test_end_to_end_writes_report_samples_trajectories_and_config(tmp_path, tiny_cache):
    run_dir = make_run(tmp_path / "run", tiny_cache)
    out = evaluate.run(eval_cfg(run_dir))
    assert out == run_dir / "eval-test"  # the cache has a test split: it is the default

    report = read_report(out)
    assert list(report["metrics"]) == ["bleu", "sentence_bleu", "exact_match", "token_accuracy", "bow_f1"]  # task defaults
    assert all(0 <= v <= 100 for v in report["metrics"].values())
    assert (report["split"], report["checkpoint"], report["n"], report["task"]) == ("test", "best", 4, "reconstruction")
    assert report["copy_source"] is None  # only pairs have a source to copy
    assert report["cache"] == str(tiny_cache.resolve()) and report["run"] == str(run_dir)
    assert report["weights"] == "model"
    assert report["forward_passes"] == 2 * 4  # 2 batches of 3 + 1 rows, 4 steps each
    assert report["forward_passes_per_sequence"] == 4
    assert report["settings"]["steps"] == 4 and report["settings"]["schedule"] == "cosine"
    assert report["settings"]["sampler"] == "maskgit_plus"
    assert report["sentences_per_s"] > 0 and report["wall_seconds"] >= report["decode_seconds"] > 0
    (result,) = report["results"]
    assert result["speed"]["peak_memory_mb"] > 0 and result["speed"]["tokens_per_s"] > 0
    assert result["samples"] == "samples.jsonl"

    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    split = open_cache(tiny_cache).split("test")
    assert [r["id"] for r in rows] == split.column("id")
    assert [r["reference"] for r in rows] == split.column("text")  # the tokenizer round trip is exact here
    assert all(isinstance(r["output"], str) for r in rows)

    trajectories = (out / "trajectories.txt").read_text()
    assert trajectories.count("step   1 |") == 3 and "step   4 |" in trajectories  # 3 rows, 4 steps
    md = (out / "report.md").read_text()
    assert "## Results" in md and "| default |" in md and "## Denoising trajectories" in md
    assert "![denoising trajectories](trajectory.png)" in md and (out / "trajectory.png").stat().st_size > 1000

    resolved = load_yaml(out / "eval-config.yaml", EvalConfig)
    assert (resolved.split, resolved.run, resolved.out) == ("test", str(run_dir), str(out))
    assert resolved.shards == str(tiny_cache.resolve())


def test_perfect_decoder_scores_100_in_row_order(tmp_path, tiny_cache, monkeypatch):
    run_dir = make_run(tmp_path / "run", tiny_cache)
    view = sentence_view(open_cache(tiny_cache).split("validation"), MAX_LEN, pad_id=1)
    monkeypatch.setattr(batches, "decode", lookup_decoder(dict(zip(map(tuple, view.vectors.tolist()), view.ids))))
    out = evaluate.run(eval_cfg(run_dir, split="validation", out=str(tmp_path / "report"),
                                metrics=["bleu", "exact_match", "token_accuracy", "distinct_1"]))
    assert out == tmp_path / "report"
    metrics = read_report(out)["metrics"]
    assert metrics["bleu"] == pytest.approx(100) and metrics["exact_match"] == metrics["token_accuracy"] == 100.0
    assert metrics["distinct_1"] == pytest.approx(distinct_n(SENTENCES[24:28], 1))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_through_the_stage(tmp_path, tiny_cache, sampler):
    run_dir = make_run(tmp_path / "run", tiny_cache)
    out = evaluate.run(eval_cfg(run_dir, sampler=sampler, steps=8, max_samples=3, metrics=["exact_match"],
                                temperature=0.5, top_k=5, top_p=0.9, alg_temp=0.2, cfg_scale=0.5, trajectories=1))
    report = read_report(out)
    assert report["settings"]["sampler"] == sampler and report["settings"]["top_k"] == 5
    assert 1 <= report["forward_passes_per_sequence"] <= 8


def test_seed_makes_sampling_reproducible(tmp_path, tiny_cache):
    run_dir = make_run(tmp_path / "run", tiny_cache)

    def outputs(seed, name):
        out = evaluate.run(eval_cfg(run_dir, seed=seed, temperature=1.0, metrics=["bleu"], trajectories=0,
                                    out=str(tmp_path / name)))
        return [json.loads(x)["output"] for x in (out / "samples.jsonl").read_text().splitlines()]

    assert outputs(0, "a") == outputs(0, "b") != outputs(1, "c")


def test_sweep_gives_one_result_per_setting_with_plots(tmp_path, tiny_cache):
    run_dir = make_run(tmp_path / "run", tiny_cache)
    out = evaluate.run(eval_cfg(run_dir, sweep=["steps=2,4", "sampler=maskgit_plus,threshold"], tau=0.01,
                                metrics=["bleu", "exact_match"]))
    report = read_report(out)
    assert [r["setting"] for r in report["results"]] == [
        "steps=2 sampler=maskgit_plus", "steps=2 sampler=threshold", "steps=4 sampler=maskgit_plus",
        "steps=4 sampler=threshold"]
    assert [r["settings"]["steps"] for r in report["results"]] == [2, 2, 4, 4]
    passes = [r["speed"]["forward_passes_per_sequence"] for r in report["results"]]
    assert passes[0] == 2 and passes[2] == 4 and passes[1] <= 2 and passes[3] <= 4
    assert report["metrics"] == report["results"][0]["metrics"]
    for k in range(1, 5):
        assert len((out / f"samples-{k}.jsonl").read_text().splitlines()) == 4
    assert {"quality_vs_steps.png", "quality_vs_speed.png", "trajectory.png"} <= set(report["files"])
    md = (out / "report.md").read_text()
    assert md.count("| steps=") == 4 and "![bleu vs steps](quality_vs_steps.png)" in md


def test_ema_weights_are_used_when_the_checkpoint_has_them(tmp_path, tiny_cache):
    run_dir = make_run(tmp_path / "run", tiny_cache, ema=True)
    report = read_report(evaluate.run(eval_cfg(run_dir, max_samples=2, trajectories=0)))
    assert report["weights"] == "ema"


def test_latest_run_is_the_one_trained_last(tmp_path, tiny_cache, monkeypatch):
    root = tmp_path / "runs"
    old, new = make_run(root / "old", tiny_cache), make_run(root / "new", tiny_cache, checkpoints=("last",))
    (root / "empty").mkdir()
    for run_dir, stamp in ((old, 2_000_000_000), (new, 1_000_000_000)):
        for f in run_dir.glob("checkpoints/*/model.safetensors"):
            os.utime(f, (stamp, stamp))
    assert resolve.latest_run(root) == old
    monkeypatch.chdir(tmp_path)
    # the defaults (auto precision: what this CPU is measured to run faster) with guidance and sampling
    out = evaluate.run(eval_cfg(None, metrics=["exact_match"], max_samples=2, precision="auto",
                                cfg_scale=1.5, temperature=0.7, trajectories=0))
    assert out.resolve() == (old / "eval-test").resolve()
    report = read_report(out)
    auto = pick_precision("auto", torch.device("cpu")).name
    assert report["n"] == 2 and report["precision"] == auto and report["forward_passes"] == 4
    assert not (out / "trajectories.txt").exists()


# -- re-encoding: encoder cosine and reranking of candidates ---------------------------------
@pytest.fixture(scope="module")
def collected(tmp_path_factory, tiny_encoder_dir) -> Path:
    return collect_tiny(tmp_path_factory.mktemp("collected"), tiny_encoder_dir)


def test_encoder_cosine_of_a_perfect_decoder_is_100(tmp_path, collected, monkeypatch):
    split = open_cache(collected).split("train")
    view = sentence_view(split, MAX_LEN, pad_id=open_cache(collected).encoder_info["pad_id"])
    monkeypatch.setattr(batches, "decode", nearest_decoder(view.vectors, view.ids))
    report = read_report(evaluate.run(eval_cfg(make_run(tmp_path / "run", collected), split="train", max_samples=6,
                                               metrics=["exact_match", "encoder_cosine"])))
    assert report["metrics"]["exact_match"] == 100.0
    assert report["metrics"]["encoder_cosine"] == pytest.approx(100.0, abs=1e-3)


def test_candidates_are_reranked_by_the_encoder(tmp_path, collected):
    run_dir = make_run(tmp_path / "run", collected)
    common = {"split": "train", "max_samples": 8, "temperature": 1.0, "metrics": ["bleu", "encoder_cosine"]}
    plain = evaluate.run(eval_cfg(run_dir, out=str(tmp_path / "plain"), **common))
    out = evaluate.run(eval_cfg(run_dir, candidates=3, out=str(tmp_path / "reranked"), **common))
    report = read_report(out)
    c = report["results"][0]["candidates"]
    assert c["n"] == 3 and c["samplers"] == ["maskgit_plus"] * 3 and sum(c["chosen_share"]) == pytest.approx(1)
    assert c["cosine_chosen"] >= c["cosine_first"]  # the closest of 3 is at least as close as the first
    assert report["metrics"]["encoder_cosine"] == pytest.approx(100 * c["cosine_chosen"], abs=1e-3)
    assert c["first"]["encoder_cosine"] == pytest.approx(100 * c["cosine_first"], abs=1e-3)
    assert c["gain"] == {m: pytest.approx(report["metrics"][m] - c["first"][m]) for m in report["metrics"]}
    assert c["first"] == pytest.approx(read_report(plain)["metrics"])  # candidate 1 is the plain decode
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    plain_rows = [json.loads(x) for x in (plain / "samples.jsonl").read_text().splitlines()]
    assert [r["candidates"][0] for r in rows] == [r["output"] for r in plain_rows]
    assert all(r["output"] == r["candidates"][r["chosen"]] and -1 <= r["cosine"] <= 1 for r in rows)
    assert report["results"][0]["speed"]["forward_passes_per_sequence"] == 3 * 4
    assert "## Reranking by the encoder" in (out / "report.md").read_text()


def test_candidate_samplers_are_used_in_turn(tmp_path, collected):
    out = evaluate.run(eval_cfg(make_run(tmp_path / "run", collected), split="train", max_samples=4, candidates=3,
                                candidate_samplers=["maskgit_plus", "threshold"], metrics=["bleu"]))
    c = read_report(out)["results"][0]["candidates"]
    assert c["samplers"] == ["maskgit_plus", "threshold", "maskgit_plus"]


# -- paraphrase ------------------------------------------------------------------------------
PAIRS = [("the cat sat on the mat", "a cat was sitting on the mat"),
         ("the dog ran in the park", "in the park the dog was running"),
         ("she wrote a long letter", "a long letter was written by her"),
         ("the river flows north", "the river runs to the north")]


def test_paraphrase_metrics_of_a_perfect_decoder(tmp_path, monkeypatch):
    cache = build_pair_cache(tmp_path / "pairs", PAIRS)
    run_dir = make_run(tmp_path / "run", cache)
    split = open_cache(cache).split("test")
    view = sentence_view(split, MAX_LEN, pad_id=1)
    monkeypatch.setattr(batches, "decode", lookup_decoder(dict(zip(map(tuple, view.vectors.tolist()), view.ids))))
    out = evaluate.run(eval_cfg(run_dir))
    report = read_report(out)
    targets, sources = [p[1] for p in PAIRS], [p[0] for p in PAIRS]
    m = report["metrics"]
    assert report["task"] == "paraphrase" and list(m) == ["bleu", "bleu_source", "ibleu", "diffuseq_bleu", "distinct_2", "bow_f1"]
    assert m["bleu"] == pytest.approx(100) and m["diffuseq_bleu"] == pytest.approx(100)
    assert m["bleu_source"] == pytest.approx(bleu(targets, sources)) and 0 < m["bleu_source"] < 100
    assert m["ibleu"] == pytest.approx(IBLEU_ALPHA * 100 - (1 - IBLEU_ALPHA) * m["bleu_source"])
    assert m["distinct_2"] == pytest.approx(distinct_n(targets, 2))
    floor = report["copy_source"]["bleu"]  # the source copied as the output, scored against the target
    assert floor == pytest.approx(bleu(sources, targets)) and 0 < floor < 100
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == sources and [r["output"] for r in rows] == targets
    md = (out / "report.md").read_text()
    assert "| source | reference | output |" in md and f"source sentence copied as the output: bleu {floor:.2f}" in md


def test_paraphrase_diversity_with_several_samples(tmp_path, tiny_encoder_dir):
    pairs = list(zip(SENTENCES[:4], SENTENCES[4:8]))
    cache = build_pair_cache(tmp_path / "pairs", pairs, encoder_dir=tiny_encoder_dir)
    out = evaluate.run(eval_cfg(make_run(tmp_path / "run", cache), candidates=3, temperature=1.0))
    report = read_report(out)
    assert list(report["metrics"]) == ["bleu", "bleu_source", "ibleu", "diffuseq_bleu", "distinct_2", "bow_f1",
                                       "self_bleu"]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert all(len(r["candidates"]) == 3 and r["output"] == r["candidates"][r["chosen"]] for r in rows)
    assert report["metrics"]["self_bleu"] == pytest.approx(self_bleu([], [], samples=[r["candidates"] for r in rows]))


# -- MTP head --------------------------------------------------------------------------------
BLOCK = 4


@pytest.fixture
def window_cache(tmp_path):
    rows = [[0, 5, 6, 7, 8, 9, 10, 2], [0, 11, 12, 13, 14, 2], [0, 15, 2]]  # 5, 3 and 0 full blocks of 4
    outputs = [[t + 1 for t in r] for r in rows]
    cache, _ = build_window_cache(tmp_path / "windows", rows, outputs, sample_size=8)
    return cache, outputs


def mtp_run(tmp_path, cache) -> Path:
    return make_run(tmp_path / "mtp", cache, max_len=BLOCK, extra_meta={"view": "next_block", "block_length": BLOCK})


def window_answers(cache: Path, outputs: list[list[int]]) -> dict:
    hidden = open_cache(cache).split("test").array("hidden").float()
    answers = {}
    for n, row in enumerate(outputs):
        for l in range(len(row) - BLOCK + 1):
            answers[tuple(hidden[n, l].tolist())] = torch.tensor(row[l:l + BLOCK])
    return answers


@pytest.mark.parametrize("wrong_at, accuracy, accepted", [(None, [100] * 4, 4), (2, [100, 100, 0, 100], 2),
                                                          (0, [0, 100, 100, 100], 0)])
def test_mtp_position_accuracy_and_acceptance_length(tmp_path, window_cache, monkeypatch, wrong_at, accuracy, accepted):
    cache, outputs = window_cache
    monkeypatch.setattr(batches, "decode", lookup_decoder(window_answers(cache, outputs), wrong_at))
    report = read_report(evaluate.run(eval_cfg(mtp_run(tmp_path, cache))))
    m = report["metrics"]
    assert report["task"] == "mtp" and report["n"] == 8 and report["unit"] == "windows"
    assert [m[f"position_accuracy@{k}"] for k in range(1, BLOCK + 1)] == pytest.approx(accuracy)
    assert m["accepted_tokens"] == accepted and m["acceptance_length"] == accepted + 1  # + the base model's token


def test_mtp_with_the_first_token_given(tmp_path, window_cache, monkeypatch):
    cache, outputs = window_cache
    perfect, calls = lookup_decoder(window_answers(cache, outputs)), []

    def decode_given(model, z, **kw):
        ids, traj = perfect(model, z)
        assert torch.equal(kw["prefix"], ids[:, :1])  # the base model's own next token is given
        ids[:, 0] = (ids[:, 0] + 1) % model.vocab_size  # a wrong position 1 must not count
        calls.append(len(z))
        return ids, traj

    monkeypatch.setattr(batches, "decode", decode_given)
    report = read_report(evaluate.run(eval_cfg(mtp_run(tmp_path, cache), given=1)))
    m = report["metrics"]
    assert sum(calls) == report["n"] == 8
    assert [k for k in m if k.startswith("position_accuracy@")] == [f"position_accuracy@{k}" for k in range(2, BLOCK + 1)]
    assert m["accepted_tokens"] == BLOCK - 1 and m["acceptance_length"] == BLOCK


def test_given_tokens_need_an_mtp_eval(tmp_path, tiny_cache):
    with pytest.raises(SgddError, match="given=1 needs an MTP eval"):
        evaluate.run(eval_cfg(make_run(tmp_path / "run", tiny_cache), given=1))


def test_mtp_head_decodes_its_block_end_to_end(tmp_path, window_cache):
    cache, _ = window_cache
    out = evaluate.run(eval_cfg(mtp_run(tmp_path, cache), max_samples=6, steps=2, sweep=["sampler=llada,threshold"],
                                block_length=2))
    report = read_report(out)
    assert report["n"] == 6 and len(report["results"]) == 2
    rows = [json.loads(x) for x in (out / "samples-1.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["test-0@0", "test-0@1", "test-0@2", "test-0@3", "test-0@4", "test-1@0"]
    assert 1 <= report["results"][0]["metrics"]["acceptance_length"] <= BLOCK + 1
    assert report["results"][0]["speed"]["tokens_per_s"] == pytest.approx(
        report["results"][0]["speed"]["sequences_per_s"] * BLOCK)


# -- run resolution and bad input ------------------------------------------------------------
def test_no_run_at_all(tmp_path):
    with pytest.raises(SgddError, match="no trained run under"):
        resolve.latest_run(tmp_path / "runs")


def test_run_without_checkpoint(tmp_path, tiny_cache):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SgddError) as e:
        evaluate.run(eval_cfg(tmp_path / "run"))
    assert "has no checkpoint (train it first with `sgdd train`)" in one_line_error(e)
    make_run(tmp_path / "half", tiny_cache, checkpoints=("last",))
    with pytest.raises(SgddError, match="no 'best' checkpoint \\(has: last\\)"):
        evaluate.run(eval_cfg(tmp_path / "half"))


def test_unknown_split(tmp_path, tiny_cache):
    with pytest.raises(SgddError) as e:
        evaluate.run(eval_cfg(make_run(tmp_path / "run", tiny_cache), split="nope"))
    assert "has no split 'nope'" in one_line_error(e)


def test_config_validation_uses_the_registries():
    with pytest.raises(SgddError) as e:
        from_dict(EvalConfig, {"metrics": ["rouge"], "schedule": "zigzag", "steps": 0, "sampler": "beam"})
    message = one_line_error(e)
    assert "valid: bleu, sentence_bleu, exact_match, token_accuracy, encoder_cosine" in message
    assert "valid: cosine, linear" in message and "steps must be at least 1" in message
    assert f"valid: {', '.join(SAMPLERS)}" in message


@pytest.fixture
def bad_input_env(tmp_path, tiny_cache, window_cache):
    run_dir = make_run(tmp_path / "run", tiny_cache)
    empty = build_cache(tmp_path / "empty", {"train": [], "test": []})
    return {"run": run_dir, "empty": empty, "windows": window_cache[0],
            "narrow": make_run(tmp_path / "narrow", tiny_cache, cond_dim=8),
            "othertok": make_run(tmp_path / "othertok", tiny_cache, extra_meta={"tokenizer_sha256": "f" * 64})}


@pytest.mark.parametrize("args, message", [
    (["--set", "sampler=beam"], "sampler 'beam' unknown (valid: maskgit_plus, random, entropy, topk_margin, llada, threshold)"),
    (["--metric", "rouge"], "metric 'rouge' unknown (valid: bleu, sentence_bleu"),
    (["--steps", "0"], "steps must be at least 1, got 0"),
    (["--tau", "0"], "tau must be in (0, 1], got 0.0"),
    (["--tau", "1.5"], "tau must be in (0, 1], got 1.5"),
    (["--set", "schedule=zigzag"], "schedule 'zigzag' unknown (valid: cosine, linear, square, cubic, sqrt)"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--block-length", "0"], "block_length must be at least 1"),
    (["--candidates", "3"], "would decode identical candidates"),
    (["--set", "candidate_samplers=[beam]", "--candidates", "2"], "candidate sampler 'beam' unknown"),
    (["--sweep", "steps=4,0"], "sweep steps=0: steps must be at least 1"),
    (["--sweep", "width=4"], "--sweep key 'width' cannot be swept (valid: sampler, steps"),
    (["--sampler", "llada", "--steps", "1"], "2 semi-autoregressive blocks need at least 2 steps (one per block), got steps=1"),
    (["--shards", "{empty}"], "is empty"),
    (["--shards", "{windows}"], "does not fit the model"),
    (["--run", "{narrow}"], "its vectors have shape (16,), the model takes (8,)"),
    (["--run", "{othertok}"], "is not the one the model was trained with (ffffffffffff...)"),
    (["--metric", "ibleu"], "metric ibleu needs source sentences (a pair cache, kind 'pairs')"),
    (["--metric", "self_bleu", "--temperature", "1"], "metric self_bleu needs several samples per row"),
    (["--metric", "acceptance_length", "--metric", "bleu_source"], "metric bleu_source needs source sentences"),
    (["--candidates", "2", "--temperature", "1"], "needs the cache's encoder"),
])
def test_bad_input_gives_one_line_and_exit_1(args, message, bad_input_env):
    args = [a.format(**bad_input_env) for a in args]
    if "--run" not in args:
        args = ["--run", str(bad_input_env["run"]), *args]
    r = CliRunner().invoke(cli, ["eval", "--device", "cpu", "--precision", "fp32", "--steps", "4", *args]
                           if "--steps" not in args else ["eval", "--device", "cpu", *args])
    assert r.exit_code == 1, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.startswith("Error:")]) == 1


def test_consistent_labels_need_an_mtp_eval(tmp_path, tiny_cache):
    with pytest.raises(SgddError, match="consistent_labels applies to an MTP eval"):
        evaluate.run(eval_cfg(make_run(tmp_path / "run", tiny_cache), consistent_labels=True))
