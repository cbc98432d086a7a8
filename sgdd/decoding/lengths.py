"""How many positions a sentence is decoded at (``--length``).

    max         decode ``model.cfg.max_len`` positions; the model writes the end token and the
                padding itself (the default of a model without a length head)
    predicted   the most likely length of the model's length head (the default when it has one)
    oracle      the reference's length (an upper bound on what a length predictor can give)
    beam:N      the N most likely lengths of the length head, each decoded (one batch); the best
                is kept by the model's own score, or by the encoder when it is loaded

A length counts the sentence's tokens including its start and end tokens, so a block decoded at
that length holds no padding. The length head (Mask-Predict's idea) is
``model.length_logits(z [B, Dz]) -> [B, max_len + 1]`` on models with ``cfg.length_head``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sgdd.errors import SgddError

LENGTH_MODES = ("predicted", "oracle", "max", "beam:N")
MIN_LENGTH = 2  # a sentence holds at least its start and end tokens


@dataclass(frozen=True)
class LengthRule:
    """A parsed ``--length``: the mode and, for beam, how many lengths per row."""

    mode: str  # predicted, oracle, max or beam
    beam: int = 1

    def __str__(self) -> str:
        return f"beam:{self.beam}" if self.mode == "beam" else self.mode


def parse_length(spec: str) -> LengthRule:
    """``"beam:4"`` -> LengthRule("beam", 4); refuses anything but the modes of this module."""
    text = str(spec).strip().lower()
    if text in ("predicted", "oracle", "max"):
        return LengthRule(text)
    mode, sep, n = text.partition(":")
    if mode == "beam" and sep and n.isdigit() and int(n) >= 1:
        return LengthRule("beam", int(n))
    raise SgddError(f"length {spec!r} unknown (valid: {', '.join(LENGTH_MODES)}, N >= 1)")


def length_problems(spec: str | None) -> list[str]:
    if spec is None:
        return []
    try:
        parse_length(spec)
    except SgddError as e:
        return [str(e)]
    return []


def has_length_head(model) -> bool:
    return bool(getattr(getattr(model, "cfg", None), "length_head", False))


def resolve_length(spec: str | None, model) -> LengthRule:
    """The rule of ``spec`` for ``model``; None = predicted when the model has a length head, else
    max. Refuses predicted and beam for a model without one."""
    if spec is None:
        return LengthRule("predicted") if has_length_head(model) else LengthRule("max")
    rule = parse_length(spec)
    if rule.mode in ("predicted", "beam") and not has_length_head(model):
        raise SgddError(f"length {spec} needs a model trained with a length head (model.length_head: true); "
                        "this one has none: use --length max or oracle")
    return rule


def top_lengths(model, z: torch.Tensor, k: int, low: int = MIN_LENGTH) -> torch.Tensor:
    """The ``k`` most likely lengths [B, k] of the length head (most likely first), among
    ``low``..max_len."""
    max_len = model.cfg.max_len
    if not 1 <= low <= max_len:
        raise SgddError(f"no length in {low}..{max_len} to choose from")
    with torch.no_grad():
        logits = model.length_logits(z).float()  # [B, max_len + 1]
    if logits.shape[-1] != max_len + 1:
        raise SgddError(f"the length head gives {logits.shape[-1]} logits, expected max_len + 1 = {max_len + 1}")
    logits[:, :low] = float("-inf")
    return logits.topk(min(k, max_len - low + 1), dim=-1).indices  # [B, k]


def reference_lengths(ref_ids: torch.Tensor, pad_id: int, max_len: int) -> torch.Tensor:
    """Each reference's length [N]: its last non-pad position + 1 (start and end tokens included)."""
    positions = torch.arange(1, ref_ids.shape[1] + 1)  # [L]
    return ((ref_ids != pad_id) * positions).amax(1).clamp(1, max_len)


def pad_to(ids: torch.Tensor, length: int, pad_id: int) -> torch.Tensor:
    """ids [B, n] -> [B, length], filled with ``pad_id`` after n."""
    out = torch.full((ids.shape[0], length), pad_id, dtype=ids.dtype, device=ids.device)
    out[:, :ids.shape[1]] = ids
    return out
