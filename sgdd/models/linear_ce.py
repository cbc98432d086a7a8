"""The output projection and a weighted cross-entropy in one pass over row chunks.

``sum_j w_j * CE(x_j W^T + b, y_j)`` over M rows, with its gradients computed in the same pass
(the per-token weights ``w`` are known before the loss, as for every loss weight but ``path``):
for each chunk of rows the logits [c, V] are formed, turned into exp(logit - max) in place, and
multiplied back into the gradients of x, W and b. The softmax's row scale and the weights are
applied to the products' results and the one-hot part is subtracted after the loop, so the only
passes over [c, V] are the ones the loss itself needs, plus one cast to the products' dtype. No
[M, V] tensor exists at once, in the forward or for the backward, and no softmax is kept for it;
the matrix products are the three an autograd graph would run (two when the output matrix is
frozen: no gradient for W; W's and b's gradients come from one product). The backward only
scales the stored gradients by the incoming one.

The mask token's logit is -inf, as in ``project_logits``: it is never predicted and gets no
gradient. Under autocast the logits' product runs in the autocast dtype (W cast once per call,
not per chunk) and the logits are taken to fp32 for the softmax, one chunk at a time. The
gradient products run in the autocast dtype too, except under fp16: these gradients are formed
before a loss scaler could scale them, and fp16 would flush the small ones to zero, so they are
computed in fp32.

Chunks of 256 rows: the elementwise passes over a [256, 30k] chunk run about twice as fast as
over [512, 30k] on a CPU, whose caches hold the smaller one better, and each chunk reads W again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sgdd.models.decoder import ROW_BUCKET

CHUNK_ROWS = 256  # rows of logits at once ([256, 49k] fp32: 48 MiB); each chunk reads W again (a few ms)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, target, token_weight, mask_id: int, chunk: int, real: int, grads: bool,
                grad_weight: bool):
        M, E, device = x.shape[0], x.shape[1], x.device
        amp = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        logit_dtype = amp or weight.dtype  # the logits' product in the autocast dtype, as autocast would run it
        grad_dtype = torch.float32 if amp == torch.float16 else logit_dtype  # the gradients' products
        w_logit, b_logit, w_grad = weight.to(logit_dtype), bias.to(logit_dtype), weight.to(grad_dtype)  # cast once
        ce = torch.empty(M, dtype=torch.float32, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        grad_x = torch.empty(x.shape, dtype=torch.float32, device=device)
        grad_wb = None  # [V, E + 1]: the gradients of W and b side by side (of b alone, [V, 1], for a frozen W)
        rows = torch.arange(min(chunk, M), device=device)
        with torch.autocast(device.type, enabled=False):  # the dtypes are explicit from here
            for lo in range(0, M, chunk):
                hi = min(lo + chunk, M)
                xc, yc, r = x[lo:hi], target[lo:hi], rows[: hi - lo]
                logits = F.linear(xc.to(logit_dtype), w_logit, b_logit).float()  # [c, V], fp32 for the softmax
                logits[:, mask_id] = float("-inf")
                target_logit = logits[r, yc]  # [c]
                top, best = logits.max(-1)  # [c]
                if lo < real:
                    correct += (best[: real - lo] == yc[: real - lo]).sum()
                e = logits.sub_(top[:, None]).exp_()  # exp(logit - max) [c, V], in place
                total = e.sum(-1)  # [c]
                ce[lo:hi] = top + total.log() - target_logit
                if not grads:  # validation: the loss alone
                    continue
                # d loss / d logits = w * softmax - w * one-hot = s * e - w * one-hot, with s = w / total per
                # row: the products take e as it is, s scales their results, and the one-hot part is
                # subtracted after the loop (no pass over [c, V] to scale it or to write the one-hot)
                s = (token_weight[lo:hi].float() / total)[:, None]  # [c, 1]
                e = e.to(grad_dtype)
                grad_x[lo:hi] = s * (e @ w_grad).float()
                right = (torch.cat([xc.float() * s, s], 1) if grad_weight else s).to(grad_dtype)  # [c, E + 1] or [c, 1]
                if grad_wb is None:
                    grad_wb = e.t() @ right
                else:  # summed in place in the products' dtype: one rounding per chunk, as before
                    grad_wb.addmm_(e.t(), right)
        if grads:
            w = token_weight.float()[:, None]  # the one-hot part: row j subtracts w_j W[y_j] and w_j [x_j, 1]
            grad_x -= w * w_grad[target].float()
            right = torch.cat([x.float() * w, w], 1) if grad_weight else w
            grad_wb = torch.zeros(weight.shape[0], right.shape[1], device=device) if grad_wb is None else grad_wb.float()
            grad_wb.index_add_(0, target, -right)
        grad_w = grad_wb[:, :E] if grads and grad_weight else None
        grad_b = grad_wb[:, -1] if grads else None
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype)
        ctx.grad_weight = grad_weight
        loss = (ce * token_weight.float()).sum()
        ctx.mark_non_differentiable(ce, correct)
        return loss, ce, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_correct):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        dx, dw, db = ctx.dtypes
        dweight = (grad_w * grad_loss).to(dw) if ctx.grad_weight else None
        return ((grad_x * grad_loss).to(dx), dweight, (grad_b * grad_loss).to(db),
                None, None, None, None, None, None, None)


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, target: torch.Tensor,
                         token_weight: torch.Tensor, mask_id: int,
                         chunk: int = CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, E], output matrix [V, E], bias [V], targets [M], per-token weights [M] (no gradient)
    -> (sum_j w_j CE_j: a scalar that carries the gradient, CE [M] detached, correct argmax count).
    The rows are padded to a multiple of ``ROW_BUCKET`` with weight 0, as ``Decoder.logits`` pads
    them (a handful of matrix shapes instead of a new one at every step)."""
    M = x.shape[0]
    pad = -M % ROW_BUCKET
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
        # padded rows: weight 0, and a target that is not the mask (whose -inf logit would give 0 * inf)
        target, token_weight = F.pad(target, (0, pad), value=int(mask_id == 0)), F.pad(token_weight, (0, pad))
    grads = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad)
    loss, ce, correct = _LinearCrossEntropy.apply(x, weight, bias, target, token_weight.detach(), mask_id, chunk, M,
                                                  grads, weight.requires_grad)
    return loss, ce[:M], correct
