"""Short names of eval settings (a sweep's combinations), shared by the report, its plots and the
printed table."""

from __future__ import annotations

from typing import Any


def label(changes: dict[str, Any]) -> str:
    """A short name of a setting: ``steps=8 sampler=llada`` (``default`` without changes)."""
    return " ".join(f"{k}={v}" for k, v in changes.items()) or "default"
