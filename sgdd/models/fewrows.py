"""Linear layers over a few rows on CPU, for token-by-token generation and speculative verification.

``F.linear`` computes x [M, K] @ W^T as a GEMM whose small operand is x. For M of 2-8 rows (a
verification pass over a draft of L tokens) the CPU BLAS then runs a kernel made for large M and
takes about twice as long as for one row, although both read the same weights once. Written as
W @ x^T, the weight is the large left operand and the cost stays nearer the one-row cost: on an
AMD EPYC (AVX2, fp32, one thread), a 4-token forward of SmolLM2-135M took 135 and 133 ms in this
form against 158 and 146 ms with ``F.linear``, in two runs (BENCHMARKS.md section 5; ``python -m
bench --only fewrows`` measures it on the machine at hand). Above ``FEW_ROWS`` rows, at one row,
and off the CPU, ``F.linear`` is kept: at one row (a greedy step) the weight-major form measured
0.89x and 1.19x its speed on one thread, 0.83x on two (BENCHMARKS.md section 5). Users:
the base model of ``sgdd speculate`` (converted with :func:`use_few_rows`), the MTP head that
drafts for it, and every decoder's vocabulary projection (``project_logits``).

The two forms are the same product in another summation order, so results agree to rounding,
not bit for bit; greedy and speculative loops that are compared with each other use the same form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEW_ROWS = 8  # 2 to this many rows: W @ x^T (it still won at 8 rows; at 16-64 the two forms are close)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` [..., N], as W @ x^T where x has few rows on CPU."""
    rows = x.numel() // x.shape[-1]
    if x.device.type != "cpu" or not 2 <= rows <= FEW_ROWS:
        return F.linear(x, weight, bias)
    y = torch.mm(weight, x.reshape(rows, -1).t()).t().contiguous()  # [rows, N]
    if bias is not None:
        y = y + bias
    return y.view(*x.shape[:-1], weight.shape[0])


class FewRowsLinear(nn.Linear):
    """An ``nn.Linear`` whose forward is :func:`linear` (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def use_few_rows(module: nn.Module) -> int:
    """Make every plain ``nn.Linear`` inside ``module`` a :class:`FewRowsLinear`, in place (its
    weights are untouched). Returns how many layers changed."""
    changed = 0
    for layer in module.modules():
        if type(layer) is nn.Linear:
            layer.__class__ = FewRowsLinear
            changed += 1
    return changed
