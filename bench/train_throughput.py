"""Training throughput of Stage 2 on this machine: tokens/s and the share of step time spent
waiting for data, for the seed-size decoder (configs/wiki-reconstruct.yaml: 6 layers, 512
wide, 8 heads, 64 tokens) and the CPU-size one (configs/cpu-small.yaml: 4 layers, 256 wide,
4 heads, 32 tokens), in fp32 and bf16 autocast; ``--sizes quickstart`` and ``--sizes recon`` time
the train sections of configs/quickstart.yaml and configs/recon-cpu.yaml (the reconstruction recipe
on a pretrained body: give a cache they collected, which carries the encoder's weights).

Each configuration runs the real trainer's ``train_step`` (sampler, noise, masked loss with
logits at masked positions only, backward, clip, AdamW, EMA off) on a sentence cache:
``--warmup`` steps, then ``--steps`` timed steps; the table shows medians and the spread.
tokens/s counts every position of every block (padding included), as metrics.jsonl does.

    python -m bench.train_throughput                      # cache/quickstart if present
    python -m bench.train_throughput --cache cache/wiki --steps 20 --threads 2
    python -m bench.train_throughput --cache cache/quickstart --sizes quickstart --precisions auto
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"seed": "wiki-reconstruct.yaml", "cpu": "cpu-small.yaml", "quickstart": "quickstart.yaml",
         "recon": "recon-cpu.yaml"}


def synthetic_cache(root: Path) -> Path:
    """A 2048-sentence cache of the test sentences (tiny vocabulary) when no real cache exists."""
    from tests.helpers import SENTENCES, build_cache

    texts = [SENTENCES[i % len(SENTENCES)] for i in range(2048)]
    return build_cache(root / "bench", {"train": texts}, dim=384, shard_size=1024)


def measure(cache: str, size: str, precision: str, steps: int, warmup: int, batch_size: int | None) -> dict:
    """Median step time, tokens/s and data share of one decoder size at one precision."""
    import torch

    from sgdd.config import apply_overrides, load_yaml
    from sgdd.runtime import pick_device, pick_precision
    from sgdd.stages.train.config import TrainConfig
    from sgdd.stages.train.data import load_data
    from sgdd.stages.train.model import build_model
    from sgdd.stages.train.state import new_state
    from sgdd.stages.train.step import train_step

    cfg = load_yaml(ROOT / "configs" / SIZES[size], TrainConfig)
    over = {"shards": cache, "precision": precision, "device": "cpu", "val_split": None, "ema_decay": 0.0}
    if batch_size:
        over["optim.batch_size"] = batch_size
    cfg = apply_overrides(cfg, over)
    device = pick_device("cpu")
    prec = pick_precision(precision, device)
    data = load_data(cfg)
    model = build_model(cfg, data)
    state = new_state(model, cfg, data, prec, device)
    times, shares = [], []
    for i in range(warmup + steps):
        began = time.perf_counter()
        stats = train_step(state, data.train, cfg, prec, device)
        seconds = time.perf_counter() - began
        if i >= warmup:
            times.append(seconds)
            shares.append(stats.data_s / seconds)
    tokens = cfg.optim.batch_size * data.train.length
    return {"size": size, "precision": precision, "params_M": model.num_params() / 1e6,
            "batch": cfg.optim.batch_size, "block": data.train.length, "threads": torch.get_num_threads(),
            "step_s": statistics.median(times), "step_s_min": min(times), "step_s_max": max(times),
            "tokens_per_s": tokens / statistics.median(times), "data_share": statistics.median(shares)}


def print_table(rows: list[dict]) -> None:
    print(f"{'decoder':<8} {'prec':<5} {'params':>7} {'batch x L':>10} {'step s (min..max)':>20} "
          f"{'tokens/s':>10} {'data wait':>10}")
    for r in rows:
        spread = f"{r['step_s']:.3f} ({r['step_s_min']:.3f}..{r['step_s_max']:.3f})"
        print(f"{r['size']:<8} {r['precision']:<5} {r['params_M']:>6.1f}M {r['batch']:>5} x {r['block']:<3} "
              f"{spread:>20} {r['tokens_per_s']:>10.0f} {100 * r['data_share']:>9.2f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=None, help="sentence cache (default cache/quickstart, else a synthetic one)")
    ap.add_argument("--sizes", default="seed,cpu")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None, help="override the presets' batch sizes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()

    import torch

    from sgdd.runtime import default_threads

    default_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = args.cache
    if cache is None:
        cache = str(ROOT / "cache/quickstart") if (ROOT / "cache/quickstart/train/manifest.json").is_file() \
            else str(synthetic_cache(Path(tempfile.mkdtemp())))
    print(f"cache {cache}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.warmup} warm-up + {args.steps} timed steps each (medians)", file=sys.stderr)
    rows = []
    for size in args.sizes.split(","):
        for precision in args.precisions.split(","):
            rows.append(measure(cache, size, precision, args.steps, args.warmup, args.batch_size))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
