"""Suite "precision": the training step of the quickstart decoder in each precision, with and
without ``torch.compile``, against the old default path (``precision: auto`` used to mean bf16
autocast on every CPU: the ``bf16`` method), in one run.

Every method runs the real trainer (``load_data``, ``build_model``, ``new_state``,
``train_step``: sampler, noise, masked loss, backward, clip, AdamW) on the same cache in its own
process. Reported per method: training tokens/s (real tokens of the batch), model FLOPs per step
(``torch.utils.flop_counter`` on one step) and MFU against the measured matmul peak *of the
precision the method computes in* (fp32 or bf16, on the decoder's own matrix shapes).

Methods::

    fp32          fp32, no compile
    bf16          bf16 autocast, no compile (the old default on every CPU)
    auto          ``precision: auto`` (the choice this machine gets), no compile
    auto_compile  ``precision: auto`` with ``train.compile: true``
    auto_plain_ce ``precision: auto`` with the vocabulary projection and the cross-entropy as before
                  the fused loss (logits [M, V] formed, autograd backward): the reference for it
    auto_corpus_vocab ``precision: auto`` with ``model.vocab: corpus`` (the output projection over the
                  training split's tokens only; the number is reported as ``out_vocab``)

Worker: ``python -m bench.precision '{"method": ..., "cache": ..., "steps": ..., "warmup": ...}'``
"""

from __future__ import annotations

import json
import sys
import time

from bench.common import alternate, flop_counter, summary
from bench.train import BATCH, DECODER, matmul_peak

METHODS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "auto": ("auto", False),
           "auto_compile": ("auto", True), "auto_plain_ce": ("auto", False), "auto_corpus_vocab": ("auto", False)}


def capability() -> dict:
    """What decides the precision on this CPU: torch's capability and the native bf16 units."""
    import torch

    from sgdd.runtime import cpu_bf16_native

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_native": cpu_bf16_native()}


def worker(args: dict) -> dict:
    import torch

    from sgdd.models.decoder import DecoderConfig
    from sgdd.runtime import pick_precision
    from sgdd.stages.train.config import OptimConfig, TrainConfig
    from sgdd.stages.train.data import load_data
    from sgdd.stages.train.model import build_model, compile_model
    from sgdd.stages.train.state import new_state
    from sgdd.stages.train.step import train_step

    precision, compiled = METHODS[args["method"]]
    if args["method"] == "auto_plain_ce":
        import functools

        from sgdd.stages.train import step

        step.masked_diffusion_loss = functools.partial(step.masked_diffusion_loss, fused=False)
    cfg = TrainConfig(shards=args["cache"], out=None, val_split=None, precision=precision, device="cpu",
                      compile=compiled,
                      model=DecoderConfig(**DECODER, vocab="corpus" if args["method"] == "auto_corpus_vocab" else "full"),
                      optim=OptimConfig(batch_size=BATCH, warmup_steps=2, max_steps=10_000))
    device = torch.device("cpu")
    prec = pick_precision(precision, device)
    data = load_data(cfg)
    state = new_state(build_model(cfg, data), cfg, data, prec, device)
    if compiled:
        compile_model(state.model)
    for _ in range(args["warmup"]):
        train_step(state, data.train, cfg, prec, device)
    tokens = seconds = 0.0
    for _ in range(args["steps"]):
        began = time.perf_counter()
        stats = train_step(state, data.train, cfg, prec, device)
        seconds += time.perf_counter() - began
        tokens += stats.samples * data.train.length
    with flop_counter() as counter:
        train_step(state, data.train, cfg, prec, device)
    flops = counter.get_total_flops()
    d, L, V, E = DECODER["d_model"], DECODER["max_len"], data.vocab_size, data.embeddings.shape[1]
    shapes = [(BATCH * L, d, 3 * d), (BATCH * L, d, 4 * d), (BATCH * L, 4 * d, d), (BATCH * L // 2, E, V)]
    dtype = torch.bfloat16 if prec.autocast_dtype == torch.bfloat16 else torch.float32
    peak = matmul_peak(shapes, dtype=dtype)
    step_s = seconds / args["steps"]
    out_vocab = V if state.model.out_vocab is None else len(state.model.out_vocab)
    return {"precision": prec.name, "compile": compiled, "out_vocab": out_vocab, "tokens_per_s": tokens / seconds,
            "step_s": step_s,
            "flops_per_step": flops, "peak_tflops": peak / 1e12, "mfu": flops / step_s / peak}


def run_suite(cache_dir: str, reps: int, steps: int, warmup: int) -> dict:
    raw = alternate("bench.precision", list(METHODS), {"cache": cache_dir, "steps": steps, "warmup": warmup}, reps)
    table = {m: {k: summary([r[k] for r in runs]) for k in ("tokens_per_s", "mfu", "peak_tflops")}
             | {"precision": runs[0]["precision"], "out_vocab": runs[0]["out_vocab"]} for m, runs in raw.items()}
    speed = {m: t["tokens_per_s"]["median"] for m, t in table.items()}
    best_fixed = max(speed["fp32"], speed["bf16"])
    return {"capability": capability(), "methods": table,
            "ratios": {"auto_over_old_default": speed["auto"] / speed["bf16"],
                       "auto_over_best_fixed": speed["auto"] / best_fixed,
                       "compile_gain": speed["auto_compile"] / speed["auto"],
                       "fused_ce_gain": speed["auto"] / speed["auto_plain_ce"],
                       "corpus_vocab_gain": speed["auto_corpus_vocab"] / speed["auto"],
                       "best_over_old_default": max(speed["auto"], speed["auto_compile"]) / speed["bf16"]}}


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
