"""Where a training step of the CPU-size decoder spends its time: torch.profiler over a few
bf16 steps on a sentence cache, the operators with the most self CPU time.

    python -m bench.profile_train --cache cache/quickstart
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import profile

from bench.train import BATCH, DECODER, decoder_from_cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="cache/quickstart", help="sentence cache")
    ap.add_argument("--steps", type=int, default=3, help="profiled steps (after 3 warm-up steps)")
    ap.add_argument("--rows", type=int, default=15, help="operators to list")
    args = ap.parse_args()

    from sgdd.models.diffusion import DiffusionConfig
    from sgdd.stages.train.loss import draw_noise, masked_diffusion_loss

    view, model, opt = decoder_from_cache(args.cache)
    dcfg, gen = DiffusionConfig(), torch.Generator().manual_seed(0)

    def step(i: int) -> None:
        idx = torch.arange(i * BATCH, (i + 1) * BATCH) % len(view)
        noise = draw_noise(BATCH, DECODER["max_len"], dcfg, 0.1, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            parts = masked_diffusion_loss(model, view.ids[idx], view.vectors[idx], noise, dcfg)
        (parts.weighted / BATCH).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(3):
        step(i)
    with profile() as prof:
        for i in range(args.steps):
            step(3 + i)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
