"""Decoding every row of an ``EvalData`` in batches with one sampling setting (length groups,
length beam, timing) and the per-row lengths a length rule asks for."""

from __future__ import annotations

import dataclasses
import resource
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from sgdd.decoding.lengths import LengthRule, reference_lengths, top_lengths
from sgdd.decoding.maskgit import decode
from sgdd.decoding.samplers import Sampling
from sgdd.log import progress
from sgdd.models.diffusion import Schedule
from sgdd.runtime import Precision
from sgdd.stages.evaluate.config import EvalConfig
from sgdd.stages.evaluate.data import EvalData

@dataclass
class Decoded:
    """One decode of every row with one sampling setting and seed."""

    ids: torch.Tensor  # [N, L] on CPU (padded with pad_id after a row's decoded length)
    calls: int  # batched forward calls
    passes_per_row: torch.Tensor  # [N] (with a length beam: over all of the row's lengths)
    seconds: float
    committed_at: torch.Tensor  # [K, L] of the first K rows (trajectories)
    lengths: torch.Tensor | None = None  # [N] positions decoded per row
    token_logp: torch.Tensor | None = None  # [N, L] log-probability of each token when committed
    tokens: int = 0  # positions decoded in all (every length of a beam counts)
    beam: dict | None = None  # with a length beam: how the lengths were chosen


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_rows(model, data: EvalData, sampling: Sampling, seed: int, batch_size: int, device: torch.device,
                precision: Precision, keep: int, desc: str = "decode", given: int = 0, noise: Schedule | None = None,
                lengths: torch.Tensor | None = None, pad_id: int = 0, exempt: Sequence[int] = (),
                judge: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Decoded:
    """Decode every row of ``data`` in batches of ``batch_size`` with one generator seeded ``seed``;
    the first ``given`` tokens of each row are taken from the reference.

    ``lengths``: positions to decode per row, [N] or [N, K] (K candidate lengths per row: the
    length beam); default ``data.length`` for all. Rows of equal length are decoded together and
    put back in order. With K > 1 each row keeps the length whose output scores best:
    ``judge(ids [M, L], rows [M]) -> [M]`` when given (the encoder's cosine), else the model's
    mean log-probability of its committed tokens. ``exempt``: token ids the repetition penalty
    leaves alone (see :func:`sgdd.decoding.maskgit.decode`)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    N, L = len(data), data.length
    lengths = torch.full((N, 1), L, dtype=torch.long) if lengths is None else lengths.long().cpu()
    lengths = lengths[:, None] if lengths.dim() == 1 else lengths
    K = lengths.shape[1]
    flat = lengths.reshape(-1)  # [N*K]: row i's k-th length at i*K + k
    src = torch.arange(N).repeat_interleave(K)  # [N*K]
    ids = torch.full((N * K, L), pad_id, dtype=torch.long)
    committed = torch.zeros(N * K, L, dtype=torch.long)
    logp = torch.zeros(N * K, L)
    passes = torch.zeros(N * K, dtype=torch.long)
    calls = 0
    bar = progress(total=N * K, desc=desc, unit="seq", leave=False, logger="eval")
    _sync(device)
    start = time.perf_counter()
    for n in sorted(set(flat.tolist())):
        members = (flat == n).nonzero().squeeze(1)  # in row order
        for lo in range(0, members.numel(), batch_size):
            chunk = members[lo:lo + batch_size]
            rows = src[chunk]
            z = data.cond[rows].to(device)  # [B, D]
            prefix = data.ref_ids[rows, :given] if given else None  # [B, given]
            with precision.autocast():
                out, traj = decode(model, z, generator=generator, return_trajectory=True, length=n,
                                   prefix=prefix, noise=noise, sampling=sampling, exempt=exempt)
            ids[chunk, :n] = out.cpu()
            committed[chunk, :n] = traj.committed_at.cpu()
            if traj.token_logp is not None:
                logp[chunk, :n] = traj.token_logp.float().cpu()
            passes[chunk] = traj.passes_per_row.cpu()
            calls += traj.forward_passes
            bar.update(chunk.numel())
    beam = None
    pick = torch.zeros(N, dtype=torch.long)
    if K > 1:  # keep the best length of each row
        if judge is not None:
            scores, by = judge(ids, src).float(), "encoder cosine"
        else:
            decoded = committed > 0
            scores = (logp * decoded).sum(1) / decoded.sum(1).clamp_min(1)
            by = "model mean log-probability"
        pick = scores.view(N, K).argmax(1)
        beam = {"n": K, "by": by, "chosen_rank_share": [float((pick == k).float().mean()) for k in range(K)]}
    _sync(device)
    seconds = time.perf_counter() - start
    bar.close()
    chosen = torch.arange(N) * K + pick  # [N]
    return Decoded(ids[chosen], calls, passes.view(N, K).sum(1), seconds, committed[chosen][:keep],
                   flat[chosen], logp[chosen], int(flat.sum()), beam)


def candidate_sampling(cfg: EvalConfig, k: int) -> Sampling:
    """The sampling setting of candidate k: the candidate samplers in turn, else cfg's sampler."""
    sampling = Sampling.of(cfg)
    if cfg.candidate_samplers:
        sampling = dataclasses.replace(sampling, sampler=cfg.candidate_samplers[k % len(cfg.candidate_samplers)])
    return sampling.check()


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(MiB, what it measures): the CUDA allocator's peak since the last reset, or the process's
    peak resident set size on CPU (which never goes down, so it covers every earlier setting too)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS (ru_maxrss)"


def decode_lengths(model, data: EvalData, rule: LengthRule, pad_id: int, batch_size: int, device: torch.device,
                   precision: Precision) -> torch.Tensor | None:
    """Positions to decode per row under ``rule``: None (max), [N] (predicted, oracle) or [N, K] (beam)."""
    if rule.mode == "max":
        return None
    if rule.mode == "oracle":
        return reference_lengths(data.ref_ids, pad_id, data.length)
    out = []
    for lo in range(0, len(data), batch_size):
        with precision.autocast():
            out.append(top_lengths(model, data.cond[lo:lo + batch_size].to(device), rule.beam).cpu())
    top = torch.cat(out) if out else torch.empty(0, rule.beam, dtype=torch.long)
    return top[:, 0] if rule.mode == "predicted" else top
