"""The optimizer and its schedule: AdamW with weight decay on matrices only (and a learning rate
of its own for a pretrained body), linear warmup then cosine decay over the steps or the time
budget (:class:`Clock`), stepped once per optimizer step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from sgdd.models.body import BODY_PREFIX
from sgdd.stages.train.config import OptimConfig


def param_groups(model: nn.Module, ocfg: OptimConfig) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, (output) embeddings or the null
    condition. The pretrained body (``body.*``) learns at ``body_lr``, the new weights at ``lr``."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    embedding_params |= {id(p) for n, p in model.named_parameters() if n == "out_emb"}
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = p.ndim >= 2 and id(p) not in embedding_params
        groups.setdefault((name.startswith(BODY_PREFIX), not decays), []).append(p)
    body_lr = ocfg.lr if ocfg.body_lr is None else ocfg.body_lr
    return [{"params": params, "weight_decay": 0.0 if no_decay else ocfg.weight_decay, "lr": body_lr if body else ocfg.lr}
            for (body, no_decay), params in sorted(groups.items(), key=lambda kv: kv[0])]


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float,
              time_progress: float | None = None) -> float:
    """Share of the peak LR for optimizer step ``step`` (0-based): linear warmup reaching the peak
    at step warmup_steps - 1, then cosine decay to ``min_lr_ratio`` at step ``max_steps`` or, under
    a time budget, as ``time_progress`` (share of the budget spent) reaches 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if time_progress is not None:
        progress = max(progress, min(1.0, time_progress))  # whichever limit comes first
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Clock:
    """Seconds this run has trained (a resumed run counts its earlier ones) against ``optim.max_minutes``."""

    budget_s: float | None = None
    spent_s: float = 0.0

    def progress(self) -> float | None:
        return None if self.budget_s is None else self.spent_s / self.budget_s

    @property
    def out(self) -> bool:
        return self.budget_s is not None and self.spent_s >= self.budget_s


def build_optimizer(model: nn.Module, ocfg: OptimConfig, clock: Clock | None = None
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its LR schedule, stepped once per optimizer step (never per micro-batch); under a
    time budget the decay follows ``clock``."""
    groups = param_groups(model, ocfg)
    # the fused update: one kernel per parameter instead of a pass per operation (on a 2-core CPU
    # 8 against 52 ms per step for the quickstart decoder); where torch has it
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=ocfg.lr, betas=(ocfg.beta1, ocfg.beta2), fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, ocfg.warmup_steps, ocfg.max_steps, ocfg.min_lr_ratio,
                                       None if clock is None else clock.progress()))
    return optimizer, scheduler
