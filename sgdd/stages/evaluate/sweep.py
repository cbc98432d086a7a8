"""``--sweep KEY=V1,V2,...``: one eval command over a grid of decoding settings.

Several ``--sweep`` options give every combination (``steps=4,8 --sweep sampler=a,b``: 4
settings), in the order the options and values were given. Values are YAML scalars
(``8``, ``0.9``, ``null``/``none`` for an unset block length).
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from typing import Any

from sgdd.config import coerce, from_dict, problems_of, to_dict, yaml_scalar
from sgdd.decoding.samplers import Sampling
from sgdd.errors import SgddError

# The settings a sweep may vary: everything that changes how (or how often) a row is decoded.
SWEEPABLE = (*(f.name for f in dataclasses.fields(Sampling)), "candidates", "seed", "length")


def _scalar(raw: str) -> Any:
    raw = raw.strip()
    if raw.lower() == "none":
        return None
    return yaml_scalar(raw) if raw else raw


def parse_sweep(items: list[str] | tuple[str, ...]) -> dict[str, list[Any]]:
    """``["steps=4,8", "sampler=a,b"]`` -> ``{"steps": [4, 8], "sampler": ["a", "b"]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not raw.strip():
            raise SgddError(f"--sweep expects KEY=V1,V2,..., got {item!r}")
        if key not in SWEEPABLE:
            raise SgddError(f"--sweep key {key!r} cannot be swept (valid: {', '.join(SWEEPABLE)})")
        if key in grid:
            raise SgddError(f"--sweep key {key!r} given twice; list every value in one option")
        grid[key] = [_scalar(v) for v in raw.split(",")]
    return grid


def sweep_problems(cfg: Any) -> list[str]:
    """Every bad ``cfg.sweep`` entry or value, each value checked against the rest of ``cfg``."""
    if not cfg.sweep:
        return []
    try:
        grid = parse_sweep(cfg.sweep)
    except SgddError as e:
        return [str(e)]
    base = dataclasses.replace(cfg, sweep=[])
    before = set(problems_of(base))
    hints = typing.get_type_hints(type(cfg))
    out = []
    for key, values in grid.items():
        for raw in values:
            problems: list[str] = []
            value = coerce(raw, hints[key], key, problems)
            if not problems:
                problems = [q for q in problems_of(dataclasses.replace(base, **{key: value})) if q not in before]
            out += [f"sweep {key}={raw}: {q}" for q in problems]
    return out


def expand_sweep(cfg: Any) -> list[tuple[dict[str, Any], Any]]:
    """[(the swept values, the config of that setting)]; one entry ``({}, cfg)`` without a sweep."""
    grid = parse_sweep(cfg.sweep)
    if not grid:
        return [({}, cfg)]
    base = {**to_dict(cfg), "sweep": []}
    out = []
    for combo in itertools.product(*grid.values()):
        changes = dict(zip(grid, combo))
        try:
            out.append((changes, from_dict(type(cfg), {**base, **changes})))
        except SgddError as e:
            label = ", ".join(f"{k}={v}" for k, v in changes.items())
            raise SgddError(f"sweep setting {label}: {e}") from None
    return out
