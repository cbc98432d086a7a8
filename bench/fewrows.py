"""Suite: one forward of the base causal LM over 1 row (a greedy step) and over L rows (a
speculative verification), with its linear layers as ``F.linear`` (the reference) and as
W @ x^T (``sgdd.models.fewrows``, what ``sgdd speculate`` uses on CPU), the latter with each
one-row form (``linear``: F.linear at one row; ``padded``: the row twice as W @ x^T). Where the
CPU computes bf16 natively, also the model as ``sgdd speculate --precision bf16`` runs it (bf16
weights, the row padded to two, rowwise attention): ``bf16_verify*_vs_bf16_greedy``.

The forms run on the same weights in one process, alternating, after a 128-token prompt; each
figure is the median of ``reps`` x 10 forwards. The ratio that decides whether speculation can
pay on a machine is ``verify_vs_greedy``: the cost of a verification pass in greedy steps, the
greedy step taken in the faster one-row form (what ``sgdd speculate --one-row auto`` picks).
"""

from __future__ import annotations

import statistics
import time

from bench.common import summary

ROWS = (1, 2, 4, 8)
PROMPT = 128


def _time_forward(base, token: int, rows: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        keep = base.length
        t = time.perf_counter()
        base.extend([token] * rows)
        out.append(time.perf_counter() - t)
        base.rollback(keep)
    return out


def run_suite(model: str, reps: int, block: int = 4) -> dict:
    import torch

    from sgdd.decoding.speculate import BaseLM
    from sgdd.models.causal_lm import FrozenCausalLM
    from sgdd.models.fewrows import ONE_ROW_FORMS, set_one_row
    from sgdd.runtime import cpu_bf16_native, pick_precision

    cpu = torch.device("cpu")
    bases = {}
    for method, few in (("f_linear", False), ("fewrows", True)):
        lm = FrozenCausalLM(model, cpu, pick_precision("fp32", cpu))  # a model each: conversion is in place
        bases[method] = BaseLM(lm, few_rows=few, one_row="linear")
    if cpu_bf16_native():  # bf16 weights, the padded one-row form and rowwise attention (speculate --precision bf16)
        bases["bf16"] = BaseLM(FrozenCausalLM(model, cpu, pick_precision("bf16", cpu)))
    V = bases["f_linear"].lm.model.config.vocab_size
    prompt = [(7 * i) % V for i in range(PROMPT)]
    token = {m: b.start(prompt, hidden=False)[0] for m, b in bases.items()}
    # (method, one-row form): the fewrows model is timed in each form, switched in place
    methods = [("f_linear", None), *(("fewrows", form) for form in ONE_ROW_FORMS)]
    methods += [("bf16", None)] if "bf16" in bases else []
    names = {m: m[0] if m[1] in (None, "linear") else f"{m[0]}_{m[1]}" for m in methods}
    times: dict[str, dict[int, list[float]]] = {names[m]: {r: [] for r in ROWS} for m in methods}
    for rep in range(reps):
        for method, form in (methods if rep % 2 == 0 else reversed(methods)):
            base = bases[method]
            if form is not None:
                set_one_row(base.lm.model, form)
            name = names[(method, form)]
            for r in ROWS:
                _time_forward(base, token[method], r, 2)  # warm-up
                times[name][r].append(statistics.median(_time_forward(base, token[method], r, 10)) * 1000)
    table = {m: {f"ms_{r}_rows": summary(t[r]) for r in ROWS} for m, t in times.items()}
    med = {m: {r: statistics.median(t[r]) for r in ROWS} for m, t in times.items()}
    greedy_ms = min(med["fewrows"][1], med["fewrows_padded"][1])
    ratios = {f"verify{block}_vs_greedy_f_linear": med["f_linear"][block] / med["f_linear"][1],
              f"verify{block}_vs_greedy_fewrows": med["fewrows"][block] / med["fewrows"][1],
              f"verify{block}_vs_fastest_greedy": med["fewrows"][block] / greedy_ms,
              "padded_speedup_1_row": med["fewrows"][1] / med["fewrows_padded"][1]}
    ratios |= {f"fewrows_speedup_{r}_rows": med["f_linear"][r] / med["fewrows"][r] for r in ROWS}
    if "bf16" in med:
        ratios |= {f"bf16_verify{r}_vs_bf16_greedy": med["bf16"][r] / med["bf16"][1] for r in ROWS[1:]}
        ratios["bf16_greedy_speedup_vs_fastest_fp32"] = greedy_ms / med["bf16"][1]
    return {"model": model, "prompt_tokens": PROMPT, "methods": table, "ratios": ratios}
