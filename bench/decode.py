"""Suite 3, decode: sgdd's MaskGIT sampler vs a faithful re-implementation of LLaDA's
``generate`` loop, at equal steps and equal outputs; and threshold decoding's pass count.

The LLaDA-style reference (after the public LLaDA ``generate.py``, re-written here) at every
step: runs the full model, conditioning included, on the whole batch (conditional and
unconditional rows concatenated for CFG); takes logits at every position; passes them through
the Gumbel-noise function in float64; takes a float64 softmax over the whole vocabulary at every
position for the confidence; and commits, per row, the most confident masked positions. Here
it commits the same number of tokens per step as sgdd's plan, so both decode the same tokens.

Worker: ``python -m bench.decode '{"method": ..., "run": ..., "n": ..., "steps": ...}'``
"""

from __future__ import annotations

import json
import sys
import time

from bench.common import alternate, peak_rss_mib, summary

METHODS = ["sgdd", "llada"]


def llada_generate(model, z, steps: int, cfg_scale: float = 0.0, temperature: float = 0.0):
    """Reference loop: no cached condition, logits and float64 softmax at every position."""
    import torch
    import torch.nn.functional as F

    from sgdd.decoding.schedules import unmask_plan

    B, L = z.shape[0], model.cfg.max_len
    x = torch.full((B, L), model.mask_id, dtype=torch.long)
    plan, before = unmask_plan(L, steps), L
    for after in plan:
        mask_index = x == model.mask_id
        t = mask_index.float().mean(1)
        if cfg_scale > 0:
            drop = torch.arange(2 * B) >= B
            hidden = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([z, z]), drop)
            logits_c, logits_u = model.logits(hidden).chunk(2)
            logits = logits_u + (cfg_scale + 1) * (logits_c - logits_u)
        else:
            logits = model.logits(model(x, t, z))  # [B, L, V]: every position
        logits = logits.to(torch.float64)
        if temperature > 0:  # Gumbel-max in float64, as LLaDA's add_gumbel_noise
            noise = torch.rand_like(logits, dtype=torch.float64)
            logits = logits.exp() / (-torch.log(noise)) ** temperature
        x0 = logits.argmax(-1)  # [B, L]
        p = F.softmax(logits, dim=-1)  # float64 over the whole vocabulary
        x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
        x0 = torch.where(mask_index, x0, x)
        confidence = torch.where(mask_index, x0_p, torch.tensor(-float("inf"), dtype=torch.float64))
        transfer = torch.zeros_like(x, dtype=torch.bool)
        for j in range(B):
            _, sel = torch.topk(confidence[j], k=before - after)
            transfer[j, sel] = True
        x[transfer] = x0[transfer]
        before = after
    return x


def worker(args: dict) -> dict:
    import torch

    from sgdd.cache import open_cache
    from sgdd.cache.views import sentence_view
    from sgdd.decoding.maskgit import decode
    from sgdd.models.checkpoint import load_model

    torch.manual_seed(0)
    model, meta = load_model(f"{args['run']}/checkpoints/best")
    model.eval()
    cache = open_cache(meta["cache"])
    split = "validation" if "validation" in cache.splits else cache.splits[0]
    view = sentence_view(cache.split(split), model.cfg.max_len, meta["special_ids"]["pad_id"], args["n"])
    z = view.vectors
    bs = 64
    outputs = []
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for lo in range(0, len(z), bs):
            if args["method"] == "sgdd":
                outputs.append(decode(model, z[lo:lo + bs], args["steps"], cfg_scale=args["cfg_scale"]))
            else:
                outputs.append(llada_generate(model, z[lo:lo + bs], args["steps"], cfg_scale=args["cfg_scale"]))
    seconds = time.perf_counter() - start
    ids = torch.cat(outputs)
    return {"sentences_per_s": len(z) / seconds, "ids": ids.tolist(), "peak_rss_mib": peak_rss_mib()}


def run_suite(run_dir: str, reps: int, n: int, steps: int, cfg_scale: float) -> dict:
    raw = alternate("bench.decode", METHODS, {"run": run_dir, "n": n, "steps": steps, "cfg_scale": cfg_scale}, reps)
    same = sum(a == b for a, b in zip(raw["sgdd"][0]["ids"], raw["llada"][0]["ids"])) / n
    table = {m: {"sentences_per_s": summary([r["sentences_per_s"] for r in runs]),
                 "peak_rss_mib": summary([r["peak_rss_mib"] for r in runs])} for m, runs in raw.items()}
    speedup = table["sgdd"]["sentences_per_s"]["median"] / table["llada"]["sentences_per_s"]["median"]
    return {"methods": table, "ratios": {"sgdd_vs_llada_sentences_per_s": speedup, "identical_outputs": same},
            "settings": {"n": n, "steps": steps, "cfg_scale": cfg_scale}}


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
