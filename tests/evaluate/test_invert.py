"""`sgdd invert`: encode a text, decode it, print the reconstruction and its trajectory."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sgdd.cache import open_cache
from sgdd.cache.views import sentence_view
from sgdd.cli import cli
from sgdd.decoding.rerank import ReEncoder
from sgdd.config import from_dict
from sgdd.stages.evaluate.config import EvalConfig
from sgdd.runtime import pick_precision
from sgdd.stages.evaluate import batches, invert
from tests.helpers import SENTENCES
from tests.helpers_eval import collect_tiny, nearest_decoder
from tests.evaluate.test_evaluate import make_run


@pytest.fixture(scope="module")
def collected(tmp_path_factory, tiny_encoder_dir) -> Path:
    return collect_tiny(tmp_path_factory.mktemp("collected"), tiny_encoder_dir)


def invert_cfg(run_dir: Path, **kw) -> EvalConfig:
    return from_dict(EvalConfig, {"run": str(run_dir), "steps": 4, "device": "cpu", "precision": "fp32", **kw})


def test_cli_prints_reconstruction_and_trajectory(tmp_path, collected):
    run_dir = make_run(tmp_path / "run", collected)
    r = CliRunner().invoke(cli, ["invert", "--run", str(run_dir), "--steps", "4", "--device", "cpu",
                                 "--precision", "fp32", SENTENCES[0], SENTENCES[1]], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.output.count("input:") == 2 and r.output.count("reconstruction:") == 2
    assert f"input:          {SENTENCES[0]}" in r.output
    assert r.output.count("step   1 |") == 2 and "step   4 |" in r.output and "4 forward passes" in r.output
    assert "sampler maskgit_plus, 4 steps, schedule cosine" in r.output


def test_a_perfect_decoder_inverts_exactly(tmp_path, collected, monkeypatch):
    cache = open_cache(collected)
    view = sentence_view(cache.split("train"), 16, cache.encoder_info["pad_id"])
    monkeypatch.setattr(batches, "decode", nearest_decoder(view.vectors, view.ids))
    results = invert.run(invert_cfg(make_run(tmp_path / "run", collected)), [SENTENCES[3], SENTENCES[7]])
    assert [r["output"] for r in results] == [SENTENCES[3], SENTENCES[7]]
    assert all(r["cosine"] == pytest.approx(1.0, abs=1e-4) for r in results)


def test_candidates_keep_the_closest_and_out_writes_files(tmp_path, collected):
    run_dir = make_run(tmp_path / "run", collected)
    results = invert.run(invert_cfg(run_dir, candidates=3, temperature=1.0, out=str(tmp_path / "inv")), [SENTENCES[5]])
    (r,) = results
    assert len(r["candidates"]) == 3 and r["output"] == r["candidates"][r["candidate"]]
    encoder = ReEncoder(open_cache(collected).encoder_info, torch.device("cpu"), pick_precision("fp32", torch.device("cpu")))
    target = encoder.encode([SENTENCES[5]])
    cos = torch.nn.functional.cosine_similarity(encoder.encode(r["candidates"]), target.expand(3, -1))
    assert r["cosine"] == pytest.approx(float(cos.max()), abs=1e-4)
    saved = json.loads((tmp_path / "inv" / "invert.json").read_text())
    assert saved["results"][0]["output"] == r["output"] and saved["sampling"]["temperature"] == 1.0
    assert "step   1 |" in (tmp_path / "inv" / "trajectories.txt").read_text()
    assert (tmp_path / "inv" / "trajectory.png").stat().st_size > 1000


def test_vectors_are_rounded_like_the_cache_stores_them():
    v = torch.tensor([[1.0 + 2 ** -12, 0.1]])
    assert invert.as_stored(v, "fp16")[0, 0] == 1.0 and invert.as_stored(v, "fp32")[0, 0] == v[0, 0]
    assert invert.as_stored(v, "bf16")[0, 1] == torch.tensor(0.1).bfloat16().float()


@pytest.mark.parametrize("which, args, message", [
    ("tiny", ["some text"], "needs the cache's encoder"),
    ("mtp", ["some text"], "is an MTP head (next_block view)"),
    ("collected", ["  "], "give at least one non-empty text"),
    ("collected", ["--set", "sampler=beam", "text"], "sampler 'beam' unknown"),
    ("collected", ["--tau", "2", "text"], "tau must be in (0, 1]"),
])
def test_bad_input_gives_one_line_and_exit_1(tmp_path, tiny_cache, collected, which, args, message):
    cache = tiny_cache if which == "tiny" else collected
    run_dir = make_run(tmp_path / "run", cache, extra_meta={"view": "next_block"} if which == "mtp" else None)
    r = CliRunner().invoke(cli, ["invert", "--run", str(run_dir), "--device", "cpu", *args])
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.startswith("Error:")]) == 1


def test_no_text_is_a_usage_error(tmp_path):
    r = CliRunner().invoke(cli, ["invert", "--run", str(tmp_path)])
    assert r.exit_code == 2 and "Missing argument 'TEXTS...'" in r.output


def test_invert_refines_with_the_encoder_and_takes_a_length_rule(tmp_path, collected):
    run_dir = make_run(tmp_path / "run", collected)
    r = CliRunner().invoke(cli, ["invert", "--run", str(run_dir), "--steps", "4", "--device", "cpu",
                                 "--precision", "fp32", "--length", "oracle", "--refine", "encoder",
                                 "--refine-steps", "2", "--refine-candidates", "3", SENTENCES[2]],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "refined:        cosine by round" in r.output and r.output.count("->") == 2
    (res,) = invert.run(invert_cfg(run_dir, length="oracle", refine="encoder", refine_steps=2, refine_candidates=3),
                        [SENTENCES[2]])
    assert res["refinement"] == sorted(res["refinement"]) and res["cosine"] == res["refinement"][-1]
    tokenizer = open_cache(collected).tokenizer()
    assert res["length"] == len(tokenizer(SENTENCES[2])["input_ids"])  # oracle: the input's own token count
    bad = CliRunner().invoke(cli, ["invert", "--run", str(run_dir), "--length", "predicted", "x y"])
    assert bad.exit_code == 1 and "needs a model trained with a length head" in bad.output
