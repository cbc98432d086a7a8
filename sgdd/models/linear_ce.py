"""The output projection and a weighted cross-entropy in one pass over row chunks.

``sum_j w_j * CE(x_j W^T + b, y_j)`` over M rows, with its gradients computed in the same pass
(the per-token weights ``w`` are known before the loss, as for every loss weight but ``path``):
for each chunk of rows the logits [c, V] are formed, turned into (softmax - one-hot) * w in
place, and multiplied back into the gradients of x, W and b. No [M, V] tensor exists at once, in
the forward or for the backward, and no softmax is kept for it; the matrix products are the
three an autograd graph would run (two when the output matrix is frozen: no gradient for W). The
backward only scales the stored gradients by the incoming one.

The mask token's logit is -inf, as in ``project_logits``: it is never predicted and gets no
gradient. Under autocast the logits of a chunk come in the autocast dtype and are taken to fp32
for the softmax, one chunk at a time. The gradient products run in the autocast dtype too,
except under fp16: these gradients are formed before a loss scaler could scale them, and fp16
would flush the small ones to zero, so they are computed in fp32.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from sgdd.models.decoder import ROW_BUCKET

CHUNK_ROWS = 512  # rows of logits at once ([512, 49k] fp32: 96 MiB); each chunk reads W again (a few ms)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, target, token_weight, mask_id: int, chunk: int, real: int, grads: bool,
                grad_weight: bool):
        M = x.shape[0]
        ce = torch.empty(M, dtype=torch.float32, device=x.device)
        correct = torch.zeros((), dtype=torch.long, device=x.device)
        grad_x = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        grad_w = grad_b = None  # the first chunk's products, then sums (no zero-filled [V, E] to add to)
        rows = torch.arange(min(chunk, M), device=x.device)
        device = x.device.type
        fp16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
        if M == 0:
            grad_w, grad_b = torch.zeros(weight.shape, device=x.device), torch.zeros(bias.shape, device=x.device)
        if not grad_weight:  # a frozen output matrix (optim.freeze_embeddings): one product fewer per chunk
            grad_w = torch.zeros((), device=x.device)
        for lo in range(0, M, chunk):
            hi = min(lo + chunk, M)
            xc, yc, r = x[lo:hi], target[lo:hi], rows[: hi - lo]
            logits = F.linear(xc, weight, bias).float()  # [c, V]
            logits[:, mask_id] = float("-inf")
            lse = torch.logsumexp(logits, dim=-1)  # [c]
            ce[lo:hi] = lse - logits[r, yc]
            if lo < real:
                correct += (logits[: real - lo].max(-1).indices == yc[: real - lo]).sum()
            if not grads:  # validation: the loss alone
                continue
            g = logits.sub_(lse[:, None]).exp_()  # softmax [c, V], in place
            g[r, yc] -= 1
            g.mul_(token_weight[lo:hi, None].float())  # d loss / d logits
            with torch.autocast(device, enabled=False) if fp16 else contextlib.nullcontext():
                xg, wg = (xc.float(), weight.float()) if fp16 else (xc, weight)
                grad_x[lo:hi] = g @ wg
                if grad_b is None:
                    grad_b = g.sum(0)
                    if grad_w is None:
                        grad_w = (g.t() @ xg).float()
                else:
                    grad_b += g.sum(0)
                    if grad_weight:
                        grad_w += g.t() @ xg
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
