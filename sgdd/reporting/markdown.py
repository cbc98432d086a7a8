"""``report.md``: the tables of an eval report, its pictures and a few samples, for people."""

from __future__ import annotations

import os
from pathlib import Path

from sgdd.io import write_text_atomic

SAMPLES_SHOWN = 8


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return out


def results_table(report: dict) -> list[str]:
    """One row per setting: its metrics, forward passes, throughput and peak memory."""
    results = report["results"]
    metrics = list(dict.fromkeys(k for r in results for k in r["metrics"]))
    unit = report["unit"]
    header = ["setting", *metrics, "passes / seq", f"{unit} / s", "tokens / s", "peak MiB"]
    rows = [[r["setting"], *(r["metrics"].get(m) for m in metrics), r["speed"]["forward_passes_per_sequence"],
             r["speed"]["sequences_per_s"], r["speed"]["tokens_per_s"], r["speed"]["peak_memory_mb"]]
            for r in results]
    return _table(header, rows)


def rerank_table(report: dict) -> list[str]:
    """Per setting with candidates: each metric of the first candidate, of the reranked output,
    and the gain."""
    rows = []
    for r in report["results"]:
        c = r.get("candidates")
        if not c:
            continue
        reranked = c.get("reranked", r["metrics"])
        for metric, first in c["first"].items():
            rows.append([r["setting"], c["n"], metric, first, reranked[metric], c["gain"][metric]])
    return _table(["setting", "candidates", "metric", "first candidate", "reranked", "gain"], rows) if rows else []


def refinement_table(report: dict) -> list[str]:
    """Per setting refined with the encoder: each round's mean cosine, share of rows improved and metrics."""
    refined = [r for r in report["results"] if r.get("refinement")]
    if not refined:
        return []
    metrics = list(dict.fromkeys(k for r in refined for x in r["refinement"] for k in x["metrics"]))
    rows = [[r["setting"], x["round"], x["cosine"], None if x["accepted"] is None else 100 * x["accepted"],
             *(x["metrics"].get(m) for m in metrics)] for r in refined for x in r["refinement"]]
    return _table(["setting", "round", "cosine", "rows improved %", *metrics], rows)


def length_table(report: dict) -> list[str]:
    rows = [[r["setting"], r["length"]["rule"], r["length"]["mean_decoded"], r["length"]["mean_reference"],
             r["length"]["exact_share"], (r["length"]["beam"] or {}).get("by", "")]
            for r in report["results"] if r.get("length")]
    return _table(["setting", "length", "mean decoded", "mean reference", "exact %", "beam kept by"], rows) \
        if rows else []


def header_facts(report: dict) -> list[str]:
    """The time input's schedule and the run's validation masked accuracy, as bullet lines."""
    lines = []
    t = report.get("time_input")
    if t:
        kappa = f", kappa {t['kappa']}" if t.get("kappa") is not None else ""
        lines.append(f"- decode-time t: the training time of the share still masked under the {t['schedule']} "
                     f"schedule{kappa} (read from the {t['from']})")
    v = report.get("validation")
    if v:
        at = f", at the checkpoint {v['checkpoint']:.2f}%" if v.get("checkpoint") is not None else ""
        lines.append(f"- validation masked accuracy (teacher forced at the masked positions; the figure comparable "
                     f"with Xiao 2026's 81.3%, not a decode): best {v['best']:.2f}% (step {v['best_step']}), "
                     f"last {v['last']:.2f}% (step {v['last_step']}){at}")
    return lines


def _samples_table(samples: list[dict]) -> list[str]:
    has_source = any("source" in s for s in samples)
    refined = any("before_refinement" in s for s in samples)
    header = (["source"] if has_source else []) + ["reference"] + (["decoded"] if refined else []) + ["output"]
    rows = [([s.get("source", "")] if has_source else []) + [s["reference"]]
            + ([s.get("before_refinement", "")] if refined else []) + [s["output"]]
            for s in samples[:SAMPLES_SHOWN]]
    return _table(header, rows)


def write_markdown(report: dict, out: Path, pictures: dict[str, Path | None], trajectory_text: str,
                   samples: list[dict]) -> Path:
    """Write ``out/report.md``; ``pictures`` maps a caption to a PNG in ``out`` (None = not drawn)."""
    first = report["results"][0]
    lines = [
        f"# sgdd eval: {Path(report['run']).name}",
        "",
        f"- run `{report['run']}`, checkpoint `{report['checkpoint']}` ({report['weights']} weights)",
        f"- cache `{report['cache']}`, split `{report['split']}` ({report['kind']}): task **{report['task']}**, "
        f"{report['n']} {report['unit']}" + (f", {report['dropped']} left out (longer than the model's length)"
                                              if report.get("dropped") else ""),
        f"- device {report['device']}, precision {report['precision']}, batch size {report['batch_size']}",
        *header_facts(report),
        f"- reproduce: `sgdd eval --config {out / 'eval-config.yaml'}`",
        "",
        "## Results",
        "",
        *results_table(report),
        "",
        *([f"Floor, the source sentence copied as the output: "
           + ", ".join(f"{k} {v:.2f}" for k, v in report["copy_source"].items()), ""]
          if report.get("copy_source") else []),
        "Passes / seq: model forward calls each sequence took part in (a CFG step is one batched call; with "
        "--candidates every candidate counts). Peak memory: " + first["speed"]["peak_memory_kind"] + ".",
        "",
    ]
    lengths = length_table(report)
    if lengths:
        lines += ["## Length", "", "Positions decoded per row (start and end tokens included) against the "
                  "reference's length.", "", *lengths, ""]
    refinement = refinement_table(report)
    if refinement:
        lines += ["## Refinement by the encoder", "",
                  "Round 0 is the decode; each round remasks the least confident tokens of every output, "
                  "re-decodes several candidates and keeps one only if it raises the cosine to the condition.",
                  "", *refinement, ""]
    rerank = rerank_table(report)
    if rerank:
        lines += ["## Reranking by the encoder", "",
                  "Each row decodes several candidates and keeps the one whose re-encoded vector is closest "
                  "to the condition.", "", *rerank, ""]
    drawn = {caption: p for caption, p in pictures.items() if p is not None}
    if drawn:
        lines += ["## Plots", ""] + [f"![{caption}]({os.path.relpath(p, out)})\n" for caption, p in drawn.items()]
    elif not report.get("plots_available", True):
        lines += ["Plots: `pip install 'sgdd[report]'` (matplotlib) to draw them.", ""]
    if trajectory_text:
        lines += ["## Denoising trajectories", "",
                  f"Setting `{first['setting']}`: the sequence after each step (`_` = still masked) and the "
                  "tokens the step committed.", "", "```text", trajectory_text, "```", ""]
    if samples:
        lines += ["## Samples", "", *_samples_table(samples), ""]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path
