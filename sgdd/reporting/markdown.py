"""``report.md``: the tables of an eval report, its pictures and a few samples, for people."""

from __future__ import annotations

import os
from pathlib import Path

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
        for metric, first in c["first"].items():
            rows.append([r["setting"], c["n"], metric, first, r["metrics"][metric], c["gain"][metric]])
    return _table(["setting", "candidates", "metric", "first candidate", "reranked", "gain"], rows) if rows else []


def _samples_table(samples: list[dict]) -> list[str]:
    has_source = any("source" in s for s in samples)
    header = (["source"] if has_source else []) + ["reference", "output"]
    rows = [([s.get("source", "")] if has_source else []) + [s["reference"], s["output"]]
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path
