"""Suite 4, scale: collect and train at two corpus sizes about 10x apart. Collect time should
grow like the corpus and peak memory should not; a training step should not care at all."""

from __future__ import annotations

from pathlib import Path

from bench.collect import max_tokens
from bench.common import Setup, run_worker, write_corpus


def run_suite(setup: Setup, small: int, factor: int, train_steps: int) -> dict:
    sizes = {"small": small, "large": small * factor}
    out: dict = {"sizes": sizes}
    for name, n in sizes.items():
        corpus = write_corpus(setup.workdir / f"scale-{name}.txt", n, setup.quick)
        cache = setup.workdir / f"scale-cache-{name}"
        c = run_worker("bench.collect", {"method": "sgdd", "model": setup.model, "corpus": str(corpus),
                                         "out": str(cache), "keep": True, "max_tokens": max_tokens(setup.quick)})
        t = run_worker("bench.train", {"method": "cache", "cache": str(cache), "model": setup.model,
                                       "steps": train_steps, "warmup": 2})
        out[name] = {"rows": c["rows"], "collect_seconds": c["seconds"], "collect_peak_rss_mib": c["peak_rss_mib"],
                     "train_steps_per_s": t["steps_per_s"], "train_peak_rss_mib": t["peak_rss_mib"]}
    s, l = out["small"], out["large"]
    out["ratios"] = {
        "size": l["rows"] / s["rows"],
        "collect_time": l["collect_seconds"] / s["collect_seconds"],
        "collect_peak_rss": l["collect_peak_rss_mib"] / s["collect_peak_rss_mib"],
        "train_step_time": s["train_steps_per_s"] / l["train_steps_per_s"],
        "train_peak_rss": l["train_peak_rss_mib"] / s["train_peak_rss_mib"],
    }
    return out


def cleanup(workdir: Path) -> None:
    import shutil

    for p in workdir.glob("scale-cache-*"):
        shutil.rmtree(p, ignore_errors=True)
