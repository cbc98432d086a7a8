"""The report people look at: trajectory text, report.md tables, PNG plots (and their absence)."""

import torch

from sgdd.reporting.labels import label
from sgdd.stages.evaluate.sweep import expand_sweep, parse_sweep
from sgdd.decoding.trajectory import TokenTrajectory, render_text, trajectory_of
from sgdd.config import from_dict
from sgdd.stages.evaluate.config import EvalConfig
from sgdd.reporting import markdown, plots, quality_vs_speed, quality_vs_steps, trajectory_figure, write_markdown
from tests.helpers import build_tokenizer


def result(changes: dict, bleu: float, per_s: float, candidates: dict | None = None) -> dict:
    r = {"setting": label(changes), "changes": changes, "metrics": {"bleu": bleu, "exact_match": bleu / 2},
         "speed": {"forward_passes_per_sequence": changes.get("steps", 16), "sequences_per_s": per_s,
                   "tokens_per_s": per_s * 32, "peak_memory_mb": 100.0, "peak_memory_kind": "process peak RSS"}}
    if candidates:
        r["candidates"] = candidates
    return r


def a_report(results: list[dict]) -> dict:
    return {"run": "runs/x", "checkpoint": "best", "weights": "ema", "cache": "cache/x", "split": "validation",
            "kind": "sentences", "task": "reconstruction", "unit": "sentences", "n": 200, "dropped": 3,
            "device": "cpu", "precision": "bf16", "batch_size": 128, "results": results}


# -- trajectories ----------------------------------------------------------------------------
def test_trajectory_text_shows_each_step_and_what_it_committed():
    tok = build_tokenizer()
    bos, eos, pad = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    the, cat, sat = (tok.convert_tokens_to_ids(w) for w in ("the", "cat", "sat"))
    ids = torch.tensor([bos, the, cat, sat, eos, pad, pad])
    steps = torch.tensor([1, 2, 3, 2, 1, 1, 3])
    traj = trajectory_of(ids, steps, tok, eos_id=eos, pad_id=pad)
    assert traj.tokens == ["<s>", "the", "cat", "sat", "</s>"] and traj.hidden_tail == 2 and traj.steps == 3
    assert render_text(traj, "title").splitlines() == [
        "title",
        "step   1 | <s> ___ ___ ___ </s>   + <s> </s>",
        "step   2 | <s> the ___ sat </s>   + the sat",
        "step   3 | <s> the cat sat </s>   + cat",
        "         (2 padding positions after the end not shown; committed at steps 1-3)",
    ]
    uncut = trajectory_of(ids, steps, tok)  # no end token given (MTP blocks): everything is shown
    assert len(uncut.tokens) == 7 and uncut.hidden_tail == 0 and uncut.tail_steps is None
    no_eos = trajectory_of(torch.tensor([bos, the, cat, pad, pad]), torch.tensor([1, 4, 5, 2, 3]), tok, eos, pad)
    assert no_eos.tokens == ["<s>", "the", "cat"] and no_eos.tail_steps == (2, 3)  # trailing padding is cut


def test_a_step_that_only_fills_padding_says_so():
    traj = TokenTrajectory(tokens=["a", "b"], committed_at=[1, 3], hidden_tail=4, tail_steps=(2, 2))
    assert "step   2 | a _   + (padding only)" in render_text(traj)
    assert render_text(traj).endswith("(4 padding positions after the end not shown; committed at steps 2-2)")


# -- sweeps ----------------------------------------------------------------------------------
def test_sweep_grid_order_values_and_labels():
    assert parse_sweep(["steps=4,8", "block-length=none,8", "tau=1e-1"]) == {
        "steps": [4, 8], "block_length": [None, 8], "tau": [0.1]}
    cfg = from_dict(EvalConfig, {"sweep": ["steps=4,8", "sampler=maskgit_plus,llada"], "temperature": 0.5})
    grid = expand_sweep(cfg)
    assert [label(c) for c, _ in grid] == ["steps=4 sampler=maskgit_plus", "steps=4 sampler=llada",
                                           "steps=8 sampler=maskgit_plus", "steps=8 sampler=llada"]
    assert all(s.temperature == 0.5 and s.sweep == [] for _, s in grid)
    assert [(s.steps, s.sampler) for _, s in grid][1] == (4, "llada")
    assert expand_sweep(EvalConfig()) == [({}, EvalConfig())] and label({}) == "default"


# -- plots -----------------------------------------------------------------------------------
def test_plots_are_drawn_only_when_there_is_something_to_plot(tmp_path):
    sweep = [result({"steps": s, "sampler": n}, b + s, 100 / s) for s in (4, 8, 16) for n, b in (("a", 0), ("b", 5))]
    assert quality_vs_steps(sweep, "bleu", tmp_path / "steps.png") == tmp_path / "steps.png"
    assert quality_vs_speed(sweep, "bleu", tmp_path / "speed.png") == tmp_path / "speed.png"
    assert (tmp_path / "steps.png").read_bytes()[:4] == b"\x89PNG"
    one_step = [result({"sampler": "a"}, 1, 1), result({"sampler": "b"}, 2, 2)]
    assert quality_vs_steps(one_step, "bleu", tmp_path / "none.png") is None  # steps were not swept
    assert quality_vs_speed(one_step[:1], "bleu", tmp_path / "none.png") is None  # one point is no plot
    assert not (tmp_path / "none.png").exists()
    traj = TokenTrajectory(tokens=["<s>", "a", "long", "sentence"] * 10, committed_at=list(range(1, 41)), hidden_tail=0)
    assert trajectory_figure([("row 1", traj)], tmp_path / "t.png").stat().st_size > 1000
    assert trajectory_figure([], tmp_path / "t2.png") is None


def test_without_matplotlib_nothing_is_drawn_and_the_report_says_how(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "plots_available", lambda: False)
    sweep = [result({"steps": s}, s, 1) for s in (4, 8)]
    assert quality_vs_steps(sweep, "bleu", tmp_path / "x.png") is None
    report = {**a_report(sweep), "plots_available": False}
    md = write_markdown(report, tmp_path, {"bleu vs steps": None}, "", []).read_text()
    assert "pip install 'sgdd[report]'" in md and "![" not in md


# -- report.md -------------------------------------------------------------------------------
def test_markdown_tables(tmp_path):
    gain = {"n": 4, "first": {"bleu": 10.0, "exact_match": 5.0}, "gain": {"bleu": 2.0, "exact_match": 1.0}}
    results = [result({"steps": 8}, 12.0, 50.0, gain), result({"steps": 16}, 20.0, 25.5)]
    (tmp_path / "plot.png").write_bytes(b"png")
    samples = [{"reference": "a | b", "output": "a b"}] * 12
    md = write_markdown(a_report(results), tmp_path, {"bleu vs steps": tmp_path / "plot.png", "gone": None},
                        "step   1 | x", samples).read_text()
    assert "| setting | bleu | exact_match | passes / seq | sentences / s | tokens / s | peak MiB |" in md
    assert "| steps=8 | 12.00 | 6.00 | 8 | 50.00 | 1600 | 100.00 |" in md
    assert "| steps=8 | 4 | bleu | 10.00 | 12.00 | 2.00 |" in md  # reranking: first, reranked, gain
    assert "![bleu vs steps](plot.png)" in md and "gone" not in md
    assert "```text\nstep   1 | x\n```" in md
    assert md.count("| a \\| b | a b |") == markdown.SAMPLES_SHOWN  # cells escape the pipe
    assert "ema weights" in md and "3 left out" in md and "eval-config.yaml" in md
