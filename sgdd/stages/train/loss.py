"""The training objective: the forward-process noise of an optimizer step (:func:`draw_noise`)
and the weighted masked-diffusion loss of a micro-batch (:func:`masked_diffusion_loss`), with
the length head's cross-entropy beside it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sgdd.errors import SgddError
from sgdd.models.decoder import Decoder
from sgdd.models.diffusion import (DEFAULT_CART_P, IGNORE_INDEX, DiffusionConfig, TokenLossInputs, apply_mask,
                                   get_schedule, sample_noise, token_factors, weighted_token_loss)
from sgdd.models.linear_ce import linear_cross_entropy


@dataclass
class StepNoise:
    """The forward-process randomness of a set of samples."""

    t: torch.Tensor  # [n] times
    u: torch.Tensor  # [n, L] uniforms: token j of sample i is masked iff u[i, j] < 1 - alpha(t[i])
    drop: torch.Tensor | None  # [n] bool: condition replaced by the learned null (CFG); None = keep

    def select(self, rows: slice, device: torch.device) -> StepNoise:
        drop = None if self.drop is None else self.drop[rows].to(device)
        return StepNoise(self.t[rows].to(device), self.u[rows].to(device), drop)


def draw_noise(n: int, length: int, dcfg: DiffusionConfig, cond_drop: float,
               generator: torch.Generator) -> StepNoise:
    """Noise for all n (global) samples of an optimizer step, drawn at once on the CPU, so that
    splitting the step into micro-batches (8x1 or 2x4) or over processes masks the same tokens
    and drops the same conditions."""
    t, u = sample_noise(n, length, dcfg.time_eps, generator, stratified=dcfg.stratified)  # [n], [n, L]
    drop = torch.rand(n, generator=generator) < cond_drop  # [n]
    return StepNoise(t, u, drop)


class LossVocab:
    """``diffusion.loss_vocab`` N: which columns of the output projection a training micro-batch's
    softmax covers: its target tokens, the N most frequent training tokens, the mask token (always
    -inf) and N others drawn uniformly from the rest. A drawn column's logit gets log(rest / N), so
    that its exponential stands for the N-th share of the rest it was drawn from: the normaliser is
    an importance-sampled estimate of the full one. Columns are indices among the output logits
    (``model.out_index``). The draw is seeded by the step and micro-batch, so a resumed run draws
    the same columns."""

    def __init__(self, counts: torch.Tensor, n: int, mask_index: int, seed: int):
        self.size, self.n, self.mask_index, self.seed = counts.numel(), n, mask_index, seed
        self.frequent = counts.argsort(descending=True, stable=True)[:n]  # [<= n]

    def columns(self, target: torch.Tensor, draw: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Targets [M] (output indices) -> (columns [C], their logit offsets [C], the position of every
        output index among the columns [V'], -1 outside), on the targets' device."""
        keep = torch.zeros(self.size, dtype=torch.bool)
        keep[self.frequent] = True
        keep[target.cpu()] = True
        keep[self.mask_index] = True
        rest = (~keep).nonzero().squeeze(1)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + draw)
        drawn = rest[torch.randperm(rest.numel(), generator=generator)[: self.n]]
        cols = torch.cat([keep.nonzero().squeeze(1), drawn])
        offset = torch.zeros(cols.numel())
        if drawn.numel():
            offset[-drawn.numel():] = math.log(rest.numel() / drawn.numel())
        where = torch.full((self.size,), -1, dtype=torch.long)
        where[cols] = torch.arange(cols.numel())
        device = target.device
        return cols.to(device), offset.to(device), where.to(device)


def build_loss_vocab(dcfg: DiffusionConfig, data, model: Decoder, seed: int) -> LossVocab | None:
    """The sampled training softmax of ``diffusion.loss_vocab`` (None when 0), with token
    frequencies counted over the training split's real tokens."""
    if not dcfg.loss_vocab:
        return None
    if data.view != "sentence":
        raise SgddError(f"diffusion.loss_vocab needs the sentence view (here: the {data.view} view); set it to 0")
    view = data.train
    real = torch.arange(view.ids.shape[1]) < view.lengths[:, None]  # [N, max_len]
    counts = torch.bincount(model.out_index(view.ids[real]), minlength=model.out_bias.numel())
    return LossVocab(counts, dcfg.loss_vocab, model.out_mask_id, seed)


@dataclass
class LossParts:
    """Sums over a micro-batch; callers divide by the number of samples they average over."""

    weighted: torch.Tensor  # scalar: sum_i sum_{scored j} w_ij * CE_ij / L (carries the graph)
    ce_sum: torch.Tensor  # scalar: unweighted CE summed over scored tokens (detached)
    correct: torch.Tensor  # scalar: scored tokens whose argmax is the target
    n_masked: torch.Tensor  # scalar: scored tokens
    length_correct: torch.Tensor  # scalar: sentences whose predicted length is right (0 without a length head)


LENGTH_LOSS_WEIGHT = 0.1  # the length head's cross-entropy, per sentence, beside the token loss


def masked_diffusion_loss(model: Decoder, x0: torch.Tensor, z: torch.Tensor, noise: StepNoise,
                          dcfg: DiffusionConfig, given: int = 0, lengths: torch.Tensor | None = None,
                          fused: bool = True, vocab: LossVocab | None = None, draw: int = 0) -> LossParts:
    """The weighted masked-diffusion loss of clean blocks x0 [B, L] conditioned on z [B, D].
    Only masked positions with a real label (not ``IGNORE_INDEX``) are scored; the first
    ``given`` positions are always visible. With a length head, its cross-entropy against
    ``lengths`` [B] is added (weighted by ``LENGTH_LOSS_WEIGHT``).

    ``fused`` (the default): for a loss weight linear in the cross-entropy (all but ``path``), the
    vocabulary projection, the cross-entropy and their gradients run in one pass over row chunks
    (:mod:`sgdd.models.linear_ce`); otherwise the logits [M, V] are formed and autograd does the rest.

    ``vocab`` (training with ``diffusion.loss_vocab``, fused only): the softmax covers the columns
    ``vocab.columns(target, draw)`` instead of the whole output vocabulary, so ``ce_sum`` is the
    sampled cross-entropy and ``correct`` counts argmaxes among those columns. Without gradients
    (validation) the full vocabulary is always scored."""
    L = x0.shape[1]
    schedule = get_schedule(dcfg.schedule, dcfg.kappa)
    # 1. forward process: x_t [B, L]; scored [B, L] = masked and labelled (noise drawn for max_len)
    x_t, scored = apply_mask(x0, noise.t, noise.u[:, :L], schedule, model.mask_id, given)
    masked = scored | (x0 == IGNORE_INDEX)  # [B, L] every mask token of the input
    # 2. hidden states of every position: [B, L, d]
    hidden = model(x_t, noise.t, z, noise.drop)
    target = model.out_index(x0[scored])  # [M] indices among the output logits (token ids, unless model.vocab corpus)
    cart_p = DEFAULT_CART_P if dcfg.cart_p is None else dcfg.cart_p
    inputs = TokenLossInputs(None, noise.t, masked, scored, schedule, cart_p)
    factors = token_factors(dcfg.loss_weight, inputs) if fused else None  # [M], or None: the loss needs CE first
    if factors is not None:
        # 3-6. the projection and the weighted CE in one pass over row chunks (no [M, V] at once)
        head, weight, bias = model.projection  # over the output vocabulary
        out_mask = model.out_mask_id
        if vocab is not None and torch.is_grad_enabled():  # a sample of the columns (diffusion.loss_vocab)
            cols, offset, where = vocab.columns(target, draw)
            weight, bias, target, out_mask = weight[cols], bias[cols] + offset, where[target], int(where[out_mask])
        tok_sum, ce, correct = linear_cross_entropy(head(hidden[scored]), weight, bias, target, factors, out_mask)
        weighted = tok_sum / L
    else:
        # 3. logits only where the loss needs them: [M, V] (V': the output vocabulary)
        logits = model.out_logits(hidden[scored]).float()
        # 4. cross-entropy per scored token: [M]
        ce = F.cross_entropy(logits, target, reduction="none")
        # 5. the loss weight's per-token loss: [M]
        tok = weighted_token_loss(dcfg.loss_weight, dataclasses.replace(inputs, ce=ce))
        # 6. sum over samples of sum_scored loss / L (additive over micro-batches and ranks)
        weighted = tok.sum() / L
        correct = (logits.detach().max(-1).indices == target).sum()  # max: ~2x faster than argmax on CPU
    # 7. the length head: which token count the condition says, per sentence
    length_correct = torch.zeros((), dtype=torch.long, device=x0.device)
    if model.length_head is not None and lengths is not None:
        length_logits = model.length_logits(z).float()  # [B, max_len + 1]
        weighted = weighted + LENGTH_LOSS_WEIGHT * F.cross_entropy(length_logits, lengths, reduction="sum")
        length_correct = (length_logits.detach().max(-1).indices == lengths).sum()
    return LossParts(weighted, ce.detach().sum(), correct, scored.sum(), length_correct)
