"""python -m bench.fingerprint [--root DIR] [--json FILE] [--compare FILE]

A behaviour fingerprint for refactoring: collects a tiny in-process RoBERTa over a few
sentences, trains three fixed-seed decoders for a few steps through the real CLI (the
from-scratch AdaLN default, the pretrained-body recipe with a length head and length batches,
and cross-attention with padded batches, a cosine schedule and EMA), evaluates each, and
prints the sha256 of every checkpoint tensor file and of every report's numbers. Two trees
that behave the same print the same hashes. --compare FILE exits 1 on any difference.

Everything runs under --root (default /tmp/sgdd-fingerprint), which is emptied first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

TINY = ["--set", "model.n_layers=1", "--set", "model.d_model=32", "--set", "model.n_heads=2",
        "--set", "model.max_len=16", "--set", "model.cond_tokens=2", "--set", "model.dropout=0.0",
        "--set", "optim.warmup_steps=2", "--set", "optim.max_steps=6", "--set", "optim.batch_size=4",
        "--set", "eval_every=0", "--set", "save_every=0", "--set", "log_every=1",
        "--precision", "fp32", "--device", "cpu", "--seed", "3"]
RUNS = {
    "adaln": [],
    "body": ["--set", "model.init_body=encoder", "--set", "model.conditioning=prefix", "--set", "model.n_layers=2",
             "--set", "model.d_model=null", "--set", "model.length_head=true", "--set", "batching=by_length",
             "--set", "diffusion.stratified=true", "--set", "optim.body_lr=1e-4"],
    "cross": ["--set", "model.conditioning=cross", "--set", "batching=padded", "--set", "diffusion.schedule=cosine",
              "--set", "ema_decay=0.9"],
}
EVALS = {"adaln": [], "body": ["--length", "predicted"], "cross": ["--sweep", "steps=2,4"]}
VOLATILE = ("seconds", "per_s", "elapsed", "time", "memory", "date", "created")


def sgdd(root: Path, *args: str) -> None:
    env_cmd = [sys.executable, "-m", "sgdd.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(root / "home")}  # PYTHONPATH passes through
    done = subprocess.run(env_cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"fingerprint: {' '.join(args[:1])} failed:\n{done.stderr[-3000:]}")


def numbers(obj, path: str = "") -> dict:
    """Every number in a report, by its dotted path, without timings and memory."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out |= numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out |= numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        if not any(word in path for word in VOLATILE):
            out[path] = obj
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprint(root: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers import SENTENCES, build_encoder_dir

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    encoder = build_encoder_dir(root / "encoder")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    cache = root / "cache"
    sgdd(root, "collect", "--model", str(encoder), "--dataset", str(corpus), "--out", str(cache),
         "--precision", "fp32", "--dtype", "fp32", "--device", "cpu")
    out = {}
    for name, extra in RUNS.items():
        run = root / "runs" / name
        sgdd(root, "train", "--shards", str(cache), "--out", str(run), *TINY, *extra)
        sgdd(root, "eval", "--run", str(run), "--split", "train", "--steps", "4", "--device", "cpu",
             "--precision", "fp32", "--out", str(run / "eval"), *EVALS[name])
        for f in sorted((run / "checkpoints").rglob("*.safetensors")):
            out[f"{name}/{f.relative_to(run)}"] = sha(f.read_bytes())
        report = json.loads((run / "eval" / "report.json").read_text())
        out[f"{name}/eval/report.json numbers"] = sha(json.dumps(numbers(report), sort_keys=True).encode())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/sgdd-fingerprint", help="working directory (emptied first)")
    ap.add_argument("--json", help="write the fingerprint here")
    ap.add_argument("--compare", help="a fingerprint written earlier; exit 1 on any difference")
    args = ap.parse_args()
    fp = fingerprint(Path(args.root))
    for k, v in fp.items():
        print(f"{v}  {k}")
    if args.json:
        Path(args.json).write_text(json.dumps(fp, indent=1) + "\n")
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        diff = sorted(k for k in old.keys() | fp.keys() if old.get(k) != fp.get(k))
        print("identical" if not diff else "DIFFERENT: " + ", ".join(diff))
        sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
