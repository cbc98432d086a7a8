"""The files of an eval beside report.json (samples, trajectories, plots, report.md) and the
table it prints."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sgdd.decoding.trajectory import render_text, trajectory_of
from sgdd.io import write_text_atomic
from sgdd.stages.evaluate.data import EvalData
from sgdd.stages.evaluate.score import Setting

def sample_rows(data: EvalData, s: Setting) -> list[dict]:
    rows = []
    for i, (row_id, ref, hyp) in enumerate(zip(data.row_ids, data.refs, s.hyps)):
        row = {"id": row_id, "reference": ref, "output": hyp}
        if data.sources is not None:
            row["source"] = data.sources[i]
        if s.refined is not None:
            row["cosine"] = round(float(s.refined[1][i]), 4)
            row["before_refinement"] = s.refined[0][i]
        elif s.cos is not None:
            row["cosine"] = round(float(s.cos[s.chosen[i] if s.chosen is not None else 0, i]), 4)
        if s.candidates is not None:
            row["candidates"] = [c[i] for c in s.candidates]
            row["chosen"] = int(s.chosen[i])
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def trajectories(data: EvalData, s: Setting, tokenizer, special: dict) -> list[tuple[str, object]]:
    """(title, TokenTrajectory) of the first rows of a setting."""
    eos, pad = (None, None) if data.kind == "windows" else (special.get("eos_id"), special.get("pad_id"))
    ids = s.ids if s.traj_ids is None else s.traj_ids  # the outputs as first decoded (before refinement)
    shown = []
    for i in range(s.committed_at.shape[0]):
        n = int(s.lengths[i]) if s.lengths is not None else s.committed_at.shape[1]
        row = ids[i]
        shown.append((f"{data.row_ids[i]}: {data.refs[i]}"[:110],
                      trajectory_of(row[:n], s.committed_at[i, :n], tokenizer, eos, pad)))
    return shown


def print_table(report: dict) -> None:
    click.echo(f"eval {report['run']} [{report['checkpoint']}, {report['weights']} weights] on {report['split']} "
               f"({report['task']}): {report['n']} {report['unit']}")
    for r in report["results"]:
        speed = r["speed"]
        scores = ", ".join(f"{k} {v:.2f}" for k, v in r["metrics"].items())
        click.echo(f"  {r['setting']}: {scores} | {speed['forward_passes_per_sequence']:.1f} passes/seq, "
                   f"{speed['sequences_per_s']:.1f} {report['unit']}/s")
        for x in r.get("refinement") or []:
            click.echo(f"    refinement round {x['round']}: cosine {x['cosine']:.4f}, "
                       + ", ".join(f"{k} {v:.2f}" for k, v in x["metrics"].items()))
    if report.get("copy_source"):
        click.echo("  copying the source (floor): " + ", ".join(f"{k} {v:.2f}" for k, v in report["copy_source"].items()))
    v = report.get("validation")
    if v:
        click.echo(f"  validation masked accuracy (comparable with Xiao 2026's 81.3%): best {v['best']:.2f}%, "
                   f"last {v['last']:.2f}%")


def write_report_files(out: Path, report: dict, data: EvalData, settings: list[Setting], tokenizer,
                       special: dict) -> None:
    """samples, trajectories, plots and report.md beside report.json."""
    from sgdd.reporting import plots, write_markdown

    many = len(settings) > 1
    for k, (s, result) in enumerate(zip(settings, report["results"]), start=1):
        name = f"samples-{k}.jsonl" if many else "samples.jsonl"
        write_jsonl(out / name, sample_rows(data, s))
        result["samples"] = name
    shown = trajectories(data, settings[0], tokenizer, special)
    text = "\n\n".join(render_text(traj, title) for title, traj in shown)
    if shown:
        (out / "trajectories.txt").write_text(text + "\n")
    metric = next(iter(report["results"][0]["metrics"]), None)
    pictures = {
        f"{metric} vs steps": plots.quality_vs_steps(report["results"], metric, out / "quality_vs_steps.png"),
        f"{metric} vs speed": plots.quality_vs_speed(report["results"], metric, out / "quality_vs_speed.png",
                                                     data.unit),
        "denoising trajectories": plots.trajectory_figure(shown[:3], out / "trajectory.png"),
    }
    report["plots_available"] = plots.plots_available()
    report["files"] = sorted(p.name for p in pictures.values() if p is not None)
    write_markdown(report, out, pictures, text, sample_rows(data, settings[0]))
