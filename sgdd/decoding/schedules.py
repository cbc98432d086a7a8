"""Unmasking plans: how many positions stay masked after each decoding step.

A schedule maps the share of steps done, r in [0, 1], to the share of positions still masked
(1 at r = 0, 0 at r = 1); :func:`unmask_plan` turns it into whole counts, one forward pass each;
:func:`share_steps` shares the steps out over semi-autoregressive blocks.
"""

from __future__ import annotations

import math
from typing import Callable

from sgdd.errors import SgddError

# name -> f(ratio of steps done in [0, 1]) -> share of positions still masked after it (f(0) = 1, f(1) = 0)
UNMASK_SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda r: math.cos(0.5 * math.pi * r),  # MaskGIT's choice: few commits early, many late
    "linear": lambda r: 1.0 - r,  # the same number every step (LLaDA)
    "square": lambda r: 1.0 - r * r,
    "cubic": lambda r: 1.0 - r ** 3,
    "sqrt": lambda r: 1.0 - math.sqrt(r),  # many commits early, few late
}


def get_unmask_schedule(name: str) -> Callable[[float], float]:
    if name not in UNMASK_SCHEDULES:
        raise SgddError(f"unknown unmasking schedule {name!r} (valid: {', '.join(UNMASK_SCHEDULES)})")
    return UNMASK_SCHEDULES[name]


def unmask_plan(length: int, steps: int, schedule: str = "cosine") -> list[int]:
    """How many of ``length`` positions stay masked after each step.

    Strictly decreasing (at least one token is committed per step) and ending at 0. It leaves
    enough masked positions for the steps still to come, so the plan has exactly
    ``min(steps, length)`` entries: one forward pass each.
    """
    if steps < 1:
        raise SgddError(f"steps must be at least 1, got {steps}")
    if length < 1:
        raise SgddError(f"length must be at least 1, got {length}")
    share = get_unmask_schedule(schedule)
    plan, masked = [], length
    for s in range(1, steps + 1):
        target = min(max(math.floor(length * share(s / steps)), 0), length)
        masked = 0 if s == steps else min(masked - 1, max(target, steps - s))
        masked = max(masked, 0)
        plan.append(masked)
        if masked == 0:
            break
    assert plan[-1] == 0 and all(a > b for a, b in zip([length] + plan, plan))
    return plan


def share_steps(steps: int, blocks: int) -> list[int]:
    """Steps of each of ``blocks`` blocks: as even as possible, earlier blocks get the remainder."""
    if steps < blocks:
        raise SgddError(f"{blocks} semi-autoregressive blocks need at least {blocks} steps (one per block), "
                        f"got steps={steps}; raise --steps or --block-length")
    return [steps // blocks + (i < steps % blocks) for i in range(blocks)]
