"""Suite 2, train: the decoder trained from the cache vs the seed plan's design, where the frozen
encoder runs inside every training step to produce the condition vectors.

Both methods train the same decoder with the same batches and noise; only where the vectors
come from differs. Reported: steps/s, the share of step time spent getting data (for
``encoder_loop``: tokenising and running the encoder), and model FLOP utilisation (FLOPs counted
by ``torch.utils.flop_counter`` on one step) against the bf16 matmul peak of the decoder's own
matrix shapes, measured in the same process.

Worker: ``python -m bench.train '{"method": ..., "cache": ..., "model": ..., "steps": ...}'``
"""

from __future__ import annotations

import json
import sys
import time

from bench.common import Setup, alternate, flop_counter, peak_rss_mib, summary

METHODS = ["cache", "encoder_loop"]
DECODER = dict(n_layers=4, d_model=256, n_heads=4, max_len=32)
BATCH = 64


def matmul_peak(shapes: list[tuple[int, int, int]], seconds: float = 0.5, dtype=None) -> float:
    """Best matmul throughput (FLOP/s) in ``dtype`` (default bf16) over the given (m, k, n) shapes."""
    import torch

    dtype = dtype or torch.bfloat16
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(3):
            a @ b
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start))
    return best


def decoder_from_cache(cache_dir: str):
    """(sentence view, CPU-size decoder with the cache's embeddings, AdamW), seeded: the set-up
    every training benchmark shares."""
    import torch

    from sgdd.cache import open_cache
    from sgdd.cache.views import sentence_view
    from sgdd.models.decoder import Decoder
    from sgdd.models.decoder import DecoderConfig

    torch.manual_seed(0)
    cache = open_cache(cache_dir)
    info = cache.encoder_info
    view = sentence_view(cache.split("train"), DECODER["max_len"], info["pad_id"])
    emb = cache.embeddings()
    model = Decoder(DecoderConfig(**DECODER), info["vocab_size"], view.vectors.shape[1], emb.shape[1], info["mask_id"])
    model.load_embeddings(emb)
    return view, model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def worker(args: dict) -> dict:
    import torch

    from sgdd.models.diffusion import DiffusionConfig
    from sgdd.runtime import pick_precision
    from sgdd.stages.train.loss import draw_noise, masked_diffusion_loss

    view, model, opt = decoder_from_cache(args["cache"])
    prec = pick_precision("bf16", torch.device("cpu"))
    dcfg = DiffusionConfig()
    gen = torch.Generator().manual_seed(0)

    encoder = tokenizer = None
    if args["method"] == "encoder_loop":
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args["model"])
        encoder = AutoModel.from_pretrained(args["model"]).eval().requires_grad_(False)

    def get_batch(step: int):
        idx = torch.arange(step * BATCH, (step + 1) * BATCH) % len(view)
        x0 = view.ids[idx]
        if encoder is None:
            return x0, view.vectors[idx]
        enc = tokenizer([view.texts[i] for i in idx.tolist()], padding=True, return_tensors="pt")
        with torch.inference_mode(), prec.autocast():
            h = encoder(**enc).last_hidden_state.float()
        m = enc["attention_mask"].unsqueeze(-1).float()
        return x0, ((h * m).sum(1) / m.sum(1)).clone()

    def step(x0, z):
        noise = draw_noise(x0.shape[0], x0.shape[1], dcfg, 0.1, gen)
        with prec.autocast():
            parts = masked_diffusion_loss(model, x0, z, noise, dcfg)
        (parts.weighted / x0.shape[0]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for s in range(args["warmup"]):
        step(*get_batch(s))
    data_s = total_s = 0.0
    for s in range(args["steps"]):
        t0 = time.perf_counter()
        batch = get_batch(args["warmup"] + s)
        t1 = time.perf_counter()
        step(*batch)
        t2 = time.perf_counter()
        data_s, total_s = data_s + (t1 - t0), total_s + (t2 - t0)

    x0, z = get_batch(0)
    with flop_counter() as counter:
        step(x0, z)
    flops = counter.get_total_flops()
    d, L, V, E = DECODER["d_model"], DECODER["max_len"], model.vocab_size, model.tok_emb.weight.shape[1]
    peak = matmul_peak([(BATCH * L, d, 3 * d), (BATCH * L, d, 4 * d), (BATCH * L, 4 * d, d), (BATCH * L // 2, E, V)])
    step_s = total_s / args["steps"]
    return {"steps_per_s": 1 / step_s, "data_share": data_s / total_s, "decoder_s": (total_s - data_s) / args["steps"],
            "flops_per_step": flops, "mfu": flops / (total_s - data_s) * args["steps"] / peak,
            "peak_tflops": peak / 1e12, "peak_rss_mib": peak_rss_mib()}


def run_suite(setup: Setup, reps: int, cache_dir: str, steps: int, warmup: int) -> dict:
    raw = alternate("bench.train", METHODS, {"cache": cache_dir, "model": setup.model, "steps": steps,
                                             "warmup": warmup}, reps)
    table = {m: {k: summary([r[k] for r in runs]) for k in ("steps_per_s", "data_share", "mfu", "peak_tflops",
                                                            "peak_rss_mib")} for m, runs in raw.items()}
    cache_sps = table["cache"]["steps_per_s"]["median"]
    loop_sps = table["encoder_loop"]["steps_per_s"]["median"]
    loop_data = table["encoder_loop"]["data_share"]["median"]
    allowed = 1 / (1 - loop_data)  # speed-up if the encoder's share of the step vanished entirely
    achieved = cache_sps / loop_sps
    return {"methods": table, "ratios": {"speedup": achieved, "speedup_allowed": allowed,
                                         "achieved_over_allowed": achieved / allowed}}


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
