"""An exponential moving average (EMA) of a model's weights.

After every optimizer step ``shadow <- d * shadow + (1 - d) * weights`` with the effective decay
``d = min(decay, (1 + n) / (10 + n))`` for the n-th update: early on the average follows the
weights closely (the initial weights are soon forgotten), later it settles at ``decay``.
The shadow is kept in fp32 on the model's device; it covers every parameter (buffers of this
decoder are recomputed constants). Checkpoints store it as ``ema.safetensors`` beside
``model.safetensors``, with the same keys.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EMA:
    """The moving average of ``model``'s parameters."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {k: p.detach().float().clone() for k, p in model.named_parameters()}

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for k, p in model.named_parameters():
            self.shadow[k].lerp_(p.detach().float(), 1 - d)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed like the model's state dict."""
        return self.shadow

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``model``'s state dict with the averaged weights in place of its parameters: what a
        checkpoint's ema.safetensors holds, so that it loads whole (buffers such as the output
        vocabulary's ids included)."""
        return model.state_dict() | self.shadow

    def load_state_dict(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        missing = set(self.shadow) - set(weights)
        if missing:
            raise ValueError(f"EMA weights lack {', '.join(sorted(missing))}")
        for k in self.shadow:
            self.shadow[k].copy_(weights[k])
        self.updates = updates

    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (in its parameters' dtype)."""
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(self.shadow[k])

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` holding the averaged weights (the original is untouched)."""
        clone = copy.deepcopy(model)
        self.copy_to(clone)
        return clone
