"""Linear layers over a few rows on CPU, for token-by-token generation and speculative verification.

``F.linear`` computes x [M, K] @ W^T as a GEMM whose small operand is x. For M of 2-8 rows (a
verification pass over a draft of L tokens) the CPU BLAS then runs a kernel made for large M and
takes about twice as long as for one row, although both read the same weights once. Written as
W @ x^T, the weight is the large left operand and the cost stays nearer the one-row cost: on an
AMD EPYC (AVX2, fp32, one thread), a 4-token forward of SmolLM2-135M took 135 and 133 ms in this
form against 158 and 146 ms with ``F.linear``, in two runs (BENCHMARKS.md section 5; ``python -m
bench --only fewrows`` measures it on the machine at hand). Above ``FEW_ROWS`` rows, off the CPU
and in bf16 (:func:`use_low_precision_weights`), ``F.linear`` is kept; at one row (a greedy step)
it is the default: there W @ x^T of one column measured 0.89x and 1.19x its speed on one
thread, 0.83x on two (BENCHMARKS.md section 5). Users: the base model of ``sgdd speculate``
(converted with :func:`use_few_rows`), the MTP head that drafts for it, and every decoder's
vocabulary projection (``project_logits``).

One row has a form of its own. ``F.linear`` at one row is a matrix-vector product, which the CPU
BLAS may run on one thread: on a 2-core AMD EPYC of family 26 (Zen 5, AVX-512), a one-row forward of
SmolLM2-135M took 42 ms and a two-row one in the W @ x^T form 26 ms (``python -m bench --only
fewrows``). ``one_row="padded"`` computes the row twice, as that two-column product, and keeps one.
Which form is faster depends on the CPU and its threads: :func:`fastest_one_row` times both.

In bf16 a row's result must not depend on how many rows the forward holds, or a verification
and the greedy steps it stands for can part (bf16 rounds every linear layer's input, so a last-
place fp32 difference can change a token). On the Zen 5 EPYC a bf16 ``F.linear`` gave every row
the same result for any count of rows from 2 to 12, not at 1, so one row is padded to two there;
SDPA's kernels for one query row and for several differ in the last place, so :func:`rowwise_attention`
computes a few rows one by one.

The forms are the same product in another summation order, so results agree to rounding, not bit
for bit; greedy and speculative loops that are compared with each other use the same layers.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

FEW_ROWS = 8  # 2 to this many rows: W @ x^T (it still won at 8 rows; at 16-64 the two forms are close)
ONE_ROW_FORMS = ("linear", "padded")  # one row: F.linear, or the row twice as W @ x^T


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           one_row: str = "linear") -> torch.Tensor:
    """``F.linear(x, weight, bias)`` [..., N] where x has few rows on CPU: in fp32 as W @ x^T; in
    bf16 as ``F.linear``, whose cost there grows little with the rows. With
    ``one_row="padded"`` one row is computed twice, as two rows. A weight stored in a lower
    precision than x (:func:`use_low_precision_weights`) computes in the weight's dtype and
    returns x's."""
    if torch.is_autocast_enabled(x.device.type):
        return F.linear(x, weight, bias)
    if x.dtype != weight.dtype:
        low = None if bias is None else bias.to(weight.dtype)
        return linear(x.to(weight.dtype), weight, low, one_row).to(x.dtype)
    rows = x.numel() // x.shape[-1]
    if x.device.type != "cpu" or rows > FEW_ROWS or (rows == 1 and one_row == "linear"):
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, -1)
    if rows == 1:
        flat = flat.expand(2, -1).contiguous()  # the row twice: the two-row product
    if x.dtype == torch.float32:
        y = torch.mm(weight, flat.t())[:, :rows].t().contiguous()  # [rows, N]
        if bias is not None:
            y = y + bias
    else:  # bf16: from 2 rows on, a row's result does not depend on the count of rows (at 1 it may)
        y = F.linear(flat, weight, bias)[:rows]
    return y.view(*x.shape[:-1], weight.shape[0])


class FewRowsLinear(nn.Linear):
    """An ``nn.Linear`` whose forward is :func:`linear` (same parameters, same state dict);
    ``one_row`` is its form at one row (:func:`set_one_row`)."""

    one_row = "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.one_row)


def use_few_rows(module: nn.Module) -> int:
    """Make every plain ``nn.Linear`` inside ``module`` a :class:`FewRowsLinear`, in place (its
    weights are untouched). Returns how many layers changed."""
    changed = 0
    for layer in module.modules():
        if type(layer) is nn.Linear:
            layer.__class__ = FewRowsLinear
            changed += 1
    return changed


def use_low_precision_weights(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Store the weight (and bias) of every ``nn.Linear`` inside ``module`` in ``dtype`` as new
    parameters (a weight tied to an embedding leaves the embedding as it is), and make the layer a
    :class:`FewRowsLinear`, in place: its product then runs in ``dtype`` (fp32 accumulation in the
    BLAS) and its output comes back in the input's dtype, so everything around the linear layers
    computes as before. For inference-only models: on a CPU with native bf16 a forward's cost then
    grows little with its rows (the Zen 5: 8 rows cost 1.29 one-row forwards, 1.93 in fp32;
    BENCHMARKS.md section 5). Returns how many layers changed."""
    changed = 0
    for layer in module.modules():
        if isinstance(layer, nn.Linear) and layer.weight.dtype != dtype:
            layer.weight = nn.Parameter(layer.weight.detach().to(dtype), requires_grad=False)
            if layer.bias is not None:
                layer.bias = nn.Parameter(layer.bias.detach().to(dtype), requires_grad=False)
            layer.__class__ = FewRowsLinear
            changed += 1
    return changed


def set_one_row(module: nn.Module, form: str) -> None:
    """The one-row form (``ONE_ROW_FORMS``) of every :class:`FewRowsLinear` inside ``module``."""
    if form not in ONE_ROW_FORMS:
        raise ValueError(f"unknown one-row form {form!r} (use {', '.join(ONE_ROW_FORMS)})")
    for layer in module.modules():
        if isinstance(layer, FewRowsLinear):
            layer.one_row = form


def fastest_one_row(module: nn.Module, step: Callable[[], None], repeats: int = 5) -> tuple[str, dict[str, float]]:
    """Time ``step`` (e.g. one token through the model) with ``module``'s layers in each one-row
    form, alternating, and leave them in the faster -> (form, median milliseconds per form)."""
    times: dict[str, list[float]] = {form: [] for form in ONE_ROW_FORMS}
    for form in ONE_ROW_FORMS:  # warm-up: the first calls allocate
        set_one_row(module, form)
        step()
    for _ in range(repeats):
        for form in ONE_ROW_FORMS:
            set_one_row(module, form)
            began = time.perf_counter()
            step()
            times[form].append((time.perf_counter() - began) * 1000)
    ms = {form: statistics.median(t) for form, t in times.items()}
    best = min(ms, key=ms.get)
    set_one_row(module, best)
    return best, ms


ROWWISE_ATTENTION = "sgdd_rowwise_sdpa"


def rowwise_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except that 2 to ``FEW_ROWS`` query rows are computed one by
    one, each over the keys it may see, exactly as a one-token forward computes its row. A row's
    result then does not depend on how many rows the forward holds: a verification pass and the
    greedy steps it stands for agree bit for bit, which lower-precision weights need (an fp32
    difference in the last place, rounded to bf16 at the next linear layer, can change a greedy
    token). One row, more than ``FEW_ROWS`` and a batch of sequences go to SDPA as they are."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, keys = query.shape[2], key.shape[2]
    if rows == 1 or rows > FEW_ROWS or query.shape[0] > 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is None:  # causal over the new rows (SDPA's mask function left it out)
        see = torch.arange(keys, device=query.device)[None] <= torch.arange(keys - rows, keys, device=query.device)[:, None]
    else:  # [1, 1, rows, keys]: bool (True: attend) or additive (0: attend)
        see = attention_mask[0, 0] if attention_mask.dtype == torch.bool else attention_mask[0, 0] == 0
    kwargs.pop("is_causal", None)
    out = []
    for i in range(rows):
        visible = see[i].nonzero()[:, 0]
        n = len(visible)
        if int(visible[-1]) == n - 1:  # a prefix of the keys
            k, v = key[:, :, :n], value[:, :, :n]
        else:
            k, v = key.index_select(2, visible), value.index_select(2, visible)
        out.append(sdpa_attention_forward(module, query[:, :, i : i + 1], k, v, None, is_causal=False, **kwargs)[0])
    return torch.cat(out, dim=1), None  # [B, rows, heads, d]


def use_rowwise_attention(model: nn.Module) -> None:
    """Make a transformers model attend with :func:`rowwise_attention` (registered once, with
    SDPA's mask function), in place."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ROWWISE_ATTENTION, rowwise_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ROWWISE_ATTENTION, sdpa_mask)
    model.config._attn_implementation = ROWWISE_ATTENTION
