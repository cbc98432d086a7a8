"""Suite: one forward of the base causal LM over 1 row (a greedy step) and over L rows (a
speculative verification), with its linear layers as ``F.linear`` (the reference) and as
W @ x^T (``sgdd.models.fewrows``, what ``sgdd speculate`` uses on CPU).

Both forms run on the same weights in one process, alternating, after a 128-token prompt; each
figure is the median of ``reps`` x 10 forwards. The ratio that decides whether speculation can
pay on a machine is ``verify_vs_greedy``: the cost of a verification pass in greedy steps.
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
    from sgdd.runtime import pick_precision

    cpu = torch.device("cpu")
    bases = {}
    for method, few in (("f_linear", False), ("fewrows", True)):
        lm = FrozenCausalLM(model, cpu, pick_precision("fp32", cpu))  # a model each: conversion is in place
        bases[method] = BaseLM(lm, few_rows=few)
    V = bases["f_linear"].lm.model.config.vocab_size
    prompt = [(7 * i) % V for i in range(PROMPT)]
    token = {m: b.start(prompt, hidden=False)[0] for m, b in bases.items()}
    times: dict[str, dict[int, list[float]]] = {m: {r: [] for r in ROWS} for m in bases}
    for rep in range(reps):
        for m in (bases if rep % 2 == 0 else reversed(list(bases))):
            for r in ROWS:
                _time_forward(bases[m], token[m], r, 2)  # warm-up
                times[m][r].append(statistics.median(_time_forward(bases[m], token[m], r, 10)) * 1000)
    table = {m: {f"ms_{r}_rows": summary(t[r]) for r in ROWS} for m, t in times.items()}
    med = {m: {r: statistics.median(t[r]) for r in ROWS} for m, t in times.items()}
    ratios = {f"verify{block}_vs_greedy_f_linear": med["f_linear"][block] / med["f_linear"][1],
              f"verify{block}_vs_greedy_fewrows": med["fewrows"][block] / med["fewrows"][1]}
    ratios |= {f"fewrows_speedup_{r}_rows": med["f_linear"][r] / med["fewrows"][r] for r in ROWS}
    return {"model": model, "prompt_tokens": PROMPT, "methods": table, "ratios": ratios}
