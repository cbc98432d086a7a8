"""Shared pieces of the Stage 2 tests: a one-thread fixture, a tiny TrainConfig, comparisons."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sgdd.config import apply_overrides
from sgdd.stages.train.config import TrainConfig


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny models gain nothing from threads, and on a busy machine they lose a lot (spin waits).
    Every test under tests/train/ uses it (conftest.py); import it into another test module to use it there."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # run() leaves the thread count alone then
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = {
    "model.n_layers": 1, "model.d_model": 32, "model.n_heads": 2, "model.max_len": 16,
    "model.cond_tokens": 2, "model.dropout": 0.0, "model.cond_drop": 0.1,
    "optim.lr": 1e-3, "optim.warmup_steps": 2, "optim.max_steps": 4, "optim.batch_size": 4,
    "optim.grad_accum": 1, "precision": "fp32", "device": "cpu",
    "eval_every": 0, "eval_batches": 2, "save_every": 0, "log_every": 1,
}


# the reconstruction recipe on a tiny body cache (conftest's body_cache), with the corpus vocabulary
BODY_RECIPE = {"model.init_body": "encoder", "model.conditioning": "prefix", "model.d_model": None,
               "model.n_layers": 2, "model.length_head": True, "batching": "by_length", "model.vocab": "corpus"}


def tiny_cfg(cache, out, **overrides) -> TrainConfig:
    """A decoder of a few thousand parameters that trains in milliseconds per step, in fp32 on CPU."""
    cfg = TrainConfig(shards=str(cache), out=str(out))
    nulls = {k: None for k, v in overrides.items() if v is None and "." not in k}  # apply_overrides skips None
    return dataclasses.replace(apply_overrides(cfg, TINY | {k: v for k, v in overrides.items() if k not in nulls}),
                               **nulls)


def tiny_overrides(**overrides) -> list[str]:
    """The tiny config as ``--set KEY=VALUE`` arguments of ``sgdd train``."""
    out = []
    for k, v in (TINY | overrides).items():
        out += ["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    return out


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_params_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=1e-5), k


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
