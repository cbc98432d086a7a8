"""python -m bench [--quick] [--only collect,generate,train,decode,scale,fewrows] [--reps N] [--n N]
                 [--collect-methods sgdd,ceiling,...] [--precision-steps N] [--json FILE]

Runs the suites, prints one table per suite and writes everything as JSON. --quick is a
seconds-long smoke run on the tiny in-process model: it exercises every code path and asserts
nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import collect, collect_llm, decode, fewrows, generate, precision, scale, train
from bench.common import Setup, pick_model, write_corpus

SUITES = ("collect", "collect_llm", "generate", "precision", "train", "decode", "scale", "fewrows")


def machine() -> dict:
    import torch

    from sgdd.runtime import cpu_bf16_native

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "processor": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_native": cpu_bf16_native(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def build_cache(setup: Setup) -> str:
    """One sgdd cache of the corpus, shared by the train suite."""
    from sgdd.stages.collect.config import CollectConfig
    from sgdd.stages import collect as stage

    out = setup.workdir / "cache"
    stage.run(CollectConfig(model=setup.model, dataset=str(setup.corpus), out=str(out), min_words=1,
                            max_words=10_000, max_tokens=32))
    return str(out)


def train_run(setup: Setup, cache_dir: str, steps: int) -> str:
    """A small trained decoder for the decode suite (its quality does not matter: both samplers
    decode the same model)."""
    from sgdd.models.decoder import DecoderConfig
    from sgdd.stages import train as stage
    from sgdd.stages.train.config import OptimConfig, TrainConfig

    out = setup.workdir / "run"
    cfg = TrainConfig(shards=cache_dir, out=str(out), val_split=None, model=DecoderConfig(**train.DECODER),
                      optim=OptimConfig(max_steps=steps, batch_size=32, warmup_steps=2), log_every=0, save_every=0)
    stage.run(cfg)
    return str(out)


def fmt_row(name: str, stats: dict) -> str:
    cells = []
    for key, value in stats.items():
        if isinstance(value, dict) and "median" in value:
            cells.append(f"{key}={value['median']:.4g} [{value['min']:.4g}..{value['max']:.4g}]")
        elif isinstance(value, float):
            cells.append(f"{key}={value:.4g}")
        else:
            cells.append(f"{key}={value}")
    return f"  {name:<14} " + "  ".join(cells)


def print_suite(name: str, result: dict) -> None:
    print(f"\n== {name} ==")
    for method, stats in result.get("methods", {}).items():
        print(fmt_row(method, stats))
    for key in ("small", "large"):
        if key in result:
            print(fmt_row(key, result[key]))
    print(fmt_row("ratios", result["ratios"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, a few hundred sentences, one repetition")
    ap.add_argument("--only", default=",".join(SUITES), help=f"comma-separated suites ({', '.join(SUITES)})")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per method (default 3; 1 with --quick)")
    ap.add_argument("--n", type=int, default=None, help="sentences (default 5000; 256 with --quick)")
    ap.add_argument("--collect-methods", default=None,
                    help=f"collect suite: comma-separated methods to run (default all: {', '.join(collect.METHODS)}; "
                         "sgdd and ceiling are always needed)")
    ap.add_argument("--precision-steps", type=int, default=None,
                    help="timed training steps per method in the precision suite (default 20 after 3 warm-up steps, 3 "
                         "with --quick; under 10 get 1 warm-up step); emulated bf16 on a CPU without native bf16 "
                         "takes tens of times fp32's time per step (38x on an AVX2 EPYC, BENCHMARKS.md 0)")
    ap.add_argument("--json", default="bench-results.json", help="where to write the results")
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SUITES)
    if unknown:
        ap.error(f"unknown suite(s) {', '.join(sorted(unknown))} (valid: {', '.join(SUITES)})")
    if args.precision_steps is not None and args.precision_steps < 1:
        ap.error(f"--precision-steps must be at least 1, got {args.precision_steps}")
    reps = args.reps or (1 if args.quick else 3)
    n = args.n or (256 if args.quick else 5000)
    collect_methods = [m.strip() for m in args.collect_methods.split(",")] if args.collect_methods else None
    if collect_methods is not None:
        try:
            collect.check_methods(collect_methods)  # before any work
        except ValueError as e:
            ap.error(f"--collect-methods: {e}")

    workdir = Path(tempfile.mkdtemp(prefix="sgdd-bench-"))
    try:
        setup = Setup(model=pick_model(workdir, args.quick), corpus=workdir / "corpus.txt", n=n, quick=args.quick,
                      workdir=workdir)
        write_corpus(setup.corpus, n, args.quick)
        results: dict = {"machine": machine(), "quick": args.quick, "n": n, "reps": reps, "model": setup.model,
                         "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        m = results["machine"]
        print(f"machine: {m['processor']} ({m['cpus']} cores, torch capability {m['cpu_capability']}, native bf16: "
              f"{'yes' if m['bf16_native'] else 'no'}), {m['threads']} threads, torch {m['torch']}, "
              f"GPU: {m['cuda'] or 'none'}")
        cache_dir = run_dir = None
        if {"collect_llm", "generate"} & set(only):
            llm = collect_llm.pick_llm(workdir, args.quick)
            docs = write_corpus(workdir / "documents.txt", 200, args.quick, documents=True)
        if "collect_llm" in only:
            results["collect_llm"] = collect_llm.run_suite(llm, docs, workdir, reps, windows=8 if args.quick else 40,
                                                           sample_size=64 if args.quick else 512)
            print_suite("collect (LLM mode)", results["collect_llm"])
        if "generate" in only:
            results["generate"] = generate.run_suite(llm, docs, workdir, reps, batch=64,
                                                     windows=64 if args.quick else 128,
                                                     new_tokens=4 if args.quick else 32,
                                                     prompt_tokens=16 if args.quick else 128)
            print_suite("collect --generate (batches of --batch-size prompts vs one chunk)", results["generate"])
        if "collect" in only:
            results["collect"] = collect.run_suite(setup, reps, collect_methods)
            print_suite("collect", results["collect"])
        if {"precision", "train", "decode"} & set(only):
            cache_dir = build_cache(setup)
        if "precision" in only:
            steps = args.precision_steps or (3 if args.quick else 20)
            results["precision"] = precision.run_suite(cache_dir, reps, steps=steps,
                                                       warmup=1 if args.quick or steps < 10 else 3)
            print_suite("precision", results["precision"])
        if "train" in only:
            steps = 3 if args.quick else 20
            results["train"] = train.run_suite(setup, reps, cache_dir, steps=steps, warmup=1 if args.quick else 3)
            print_suite("train", results["train"])
        if "decode" in only:
            run_dir = train_run(setup, cache_dir, steps=5 if args.quick else 200)
            dn = 64 if args.quick else 512
            results["decode"] = decode.run_suite(run_dir, reps, n=dn, steps=16, cfg_scale=0.0)
            print_suite("decode", results["decode"])
            results["decode_cfg"] = decode.run_suite(run_dir, reps, n=dn, steps=16, cfg_scale=1.5)
            print_suite("decode (cfg 1.5)", results["decode_cfg"])
        if "scale" in only:
            results["scale"] = scale.run_suite(setup, small=128 if args.quick else 2000, factor=10,
                                               train_steps=2 if args.quick else 10)
            print_suite("scale", results["scale"])
        if "fewrows" in only:
            results["fewrows"] = fewrows.run_suite(collect_llm.pick_llm(workdir, args.quick), reps)
            print_suite("few-row forwards of the causal LM (greedy step vs verification)", results["fewrows"])
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"\nresults written to {args.json}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
