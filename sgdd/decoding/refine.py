"""The frozen encoder as judge at test time (``--refine encoder``).

After a decode, each round does, for every row at once:

1. make C candidates: candidate c remasks k_c tokens of the current output (k_c grows with c, from
   about n / (2C) to n / 2 of the row's n content tokens), chosen by ``order``:

   - ``confidence``: the least confident ones; confidence is the probability the model gave each
     token when it committed it (re-decoded tokens get their new one);
   - ``usefulness``: the least useful ones to the judge, those whose deletion raises the cosine
     most (or lowers it least): every one-token deletion of every row is re-encoded in one batch;
   - ``both``: even candidates by confidence, odd ones by usefulness;
2. re-decode the remasked positions with the sampler (every candidate of every row in batches
   of equal length; sampling at ``temperature`` with one seeded generator);
3. re-encode every candidate in one batch and keep the best one of a row only if it raises the
   cosine to the row's condition vector.

So the cosine it optimises never goes down. The content tokens of a row are those after the
start token and before the first end token (padding and the end token stay as they are).

Confidence at commit time rather than a forward pass over the finished sentence: the loss
only trains predictions at masked positions, so a pass over an unmasked sentence says nothing
the model learned about its visible tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from sgdd.decoding.maskgit import decode
from sgdd.decoding.samplers import Sampling
from sgdd.metrics import cosine
from sgdd.models.diffusion import Schedule

MAX_SHARE = 0.5  # the largest candidate remasks this share of a row's content tokens
REMASK_ORDERS = ("confidence", "usefulness", "both")


@dataclass
class Round:
    """The outputs after one refinement round (round 0: the decode itself)."""

    ids: torch.Tensor  # [N, L]
    cosine: torch.Tensor  # [N] cosine of the re-encoded output with the condition
    accepted: torch.Tensor | None  # [N] bool: the row took a candidate this round (None for round 0)
    forward_passes: int  # batched forward calls of this round


def content_positions(ids: torch.Tensor, lengths: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """[N, L] bool: the positions refinement may change, after position 0 and before the first
    end token (or the decoded length)."""
    N, L = ids.shape
    pos = torch.arange(L)[None]  # [1, L]
    end = lengths.clone()  # [N]
    if eos_id is not None:
        is_eos = (ids == eos_id) & (pos > 0)
        first = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full_like(end, L))
        end = torch.minimum(end, first)
    return (pos > 0) & (pos < end[:, None])


def remask_counts(n_content: torch.Tensor, candidates: int) -> torch.Tensor:
    """k [N, C]: how many of a row's ``n_content`` [N] tokens candidate c remasks (1..n, growing with c)."""
    share = MAX_SHARE * torch.arange(1, candidates + 1, dtype=torch.float) / candidates  # [C]
    k = (n_content[:, None].float() * share[None]).round().long()  # [N, C]
    return torch.minimum(k.clamp_min(1), n_content[:, None])


def remask(ids: torch.Tensor, confidence: torch.Tensor, content: torch.Tensor, k: torch.Tensor,
           mask_id: int) -> torch.Tensor:
    """ids [N, L] with the k [N] least confident content positions set to ``mask_id``."""
    scores = torch.where(content, confidence.float(), torch.full_like(confidence, float("inf"), dtype=torch.float))
    order = scores.argsort(dim=1, stable=True)  # [N, L] least confident first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(ids.shape[1]).expand_as(order))
    return torch.where((rank < k[:, None]) & content, torch.full_like(ids, mask_id), ids)


def deletion_gains(ids: torch.Tensor, content: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor],
                   target: torch.Tensor, current: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """[N, L]: how much the cosine of each row's re-encoded output to its ``target`` [N, D] rises
    (from ``current`` [N]) when one content token is deleted; -inf where nothing is deleted.
    A deleted token's followers move one position left, and the last position keeps its token,
    except that it becomes the end token (when there is one) where it held content."""
    N, L = ids.shape
    rows, pos = content.nonzero(as_tuple=True)  # one variant per content token
    gains = torch.full((N, L), float("-inf"))
    if rows.numel() == 0:
        return gains
    j = torch.arange(L)[None]  # [1, L]
    source = torch.where(j >= pos[:, None], (j + 1).clamp(max=L - 1), j)  # [M, L]
    variants = ids[rows].gather(1, source)
    if eos_id is not None:
        variants[:, -1] = torch.where(content[rows, -1], torch.full_like(rows, eos_id), variants[:, -1])
    gains[rows, pos] = cosine(encode(variants), target[rows]) - current[rows]
    return gains


def redecode(model, z: torch.Tensor, start: torch.Tensor, lengths: torch.Tensor, sampling: Sampling,
             noise: Schedule, generator: torch.Generator, batch_size: int, autocast) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Finish the masked positions of ``start`` [M, L] (rows decoded at their ``lengths`` [M], in
    groups of equal length) -> (ids [M, L], log-probabilities of the new tokens [M, L], calls)."""
    ids, logp, calls = start.clone(), torch.zeros(start.shape, dtype=torch.float), 0
    device = z.device
    for n in sorted(set(lengths.tolist())):
        members = (lengths == n).nonzero().squeeze(1)
        for lo in range(0, members.numel(), batch_size):
            chunk = members[lo:lo + batch_size]
            with autocast():
                out, traj = decode(model, z[chunk.to(device)], generator=generator, return_trajectory=True,
                                   start=start[chunk, :n].to(device), noise=noise, sampling=sampling)
            ids[chunk, :n] = out.cpu()
            logp[chunk, :n] = traj.token_logp.float().cpu()
            calls += traj.forward_passes
    return ids, logp, calls


def refine(model, z: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor, confidence: torch.Tensor,
           encode: Callable[[torch.Tensor], torch.Tensor], *, rounds: int, candidates: int, sampling: Sampling,
           noise: Schedule, seed: int, batch_size: int, eos_id: int | None, autocast,
           order: str = "confidence") -> list[Round]:
    """Refine decoded ``ids`` [N, L] (decoded lengths [N], commit-time log-probabilities
    ``confidence`` [N, L]) towards the conditions ``z`` [N, Dz] (on the model's device).
    ``encode(ids [M, L]) -> vectors [M, D]`` re-encodes outputs; ``order`` (one of
    :data:`REMASK_ORDERS`) picks the tokens a candidate remasks. Returns round 0 (the input)
    and one :class:`Round` per refinement round."""
    if order not in REMASK_ORDERS:
        raise ValueError(f"refinement order {order!r} unknown (valid: {', '.join(REMASK_ORDERS)})")
    generator = torch.Generator(device=z.device).manual_seed(seed)
    target = z.float().cpu()
    ids, confidence = ids.clone(), confidence.float().clone()
    best = cosine(encode(ids), target)  # [N]
    history = [Round(ids.clone(), best.clone(), None, 0)]
    N, C = ids.shape[0], candidates
    for _ in range(rounds):
        content = content_positions(ids, lengths, eos_id)  # [N, L]
        k = remask_counts(content.sum(1), C)  # [N, C]
        useless = None if order == "confidence" else -deletion_gains(ids, content, encode, target, best, eos_id)
        scores = [useless if order == "usefulness" or (order == "both" and c % 2) else confidence
                  for c in range(C)]  # per candidate [N, L]: the lowest are remasked
        starts = torch.stack([remask(ids, scores[c], content, k[:, c], model.mask_id) for c in range(C)], 1)  # [N, C, L]
        flat_rows = torch.arange(N).repeat_interleave(C)  # [N*C]
        new_ids, new_logp, calls = redecode(model, z[flat_rows.to(z.device)], starts.flatten(0, 1),
                                            lengths[flat_rows], sampling, noise, generator, batch_size, autocast)
        cos = cosine(encode(new_ids), target[flat_rows]).view(N, C)  # [N, C]
        top, pick = cos.max(1)  # [N]
        accepted = top > best
        chosen = new_ids.view(N, C, -1)[torch.arange(N), pick]  # [N, L]
        remasked = starts[torch.arange(N), pick] == model.mask_id  # [N, L]
        chosen_logp = new_logp.view(N, C, -1)[torch.arange(N), pick]
        ids = torch.where(accepted[:, None], chosen, ids)
        confidence = torch.where(accepted[:, None] & remasked, chosen_logp, confidence)
        best = torch.where(accepted, top, best)
        history.append(Round(ids.clone(), best.clone(), accepted, calls))
    return history


def refine_sampling(sampling: Sampling, temperature: float) -> Sampling:
    """The decoding settings of re-decoding: the sampler's, at the refinement temperature."""
    return dataclasses.replace(sampling, temperature=temperature).check()


def rounds_summary(history: list[Round]) -> list[dict]:
    """Per round: mean cosine, share of rows that took a candidate, forward calls."""
    return [{"round": r, "cosine": float(h.cosine.mean()),
             "accepted": None if h.accepted is None else float(h.accepted.float().mean()),
             "forward_passes": h.forward_passes} for r, h in enumerate(history)]

