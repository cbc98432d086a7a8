"""The sampler family: what tells one MaskGIT-style sampler from another.

Every sampler runs the same loop (``sgdd.decoding.maskgit.decode``): start fully masked,
predict every still-masked position, commit some of them, repeat. Samplers differ in

- the **confidence rule** that orders the masked positions (``CONFIDENCES``): max probability
  (MaskGIT, Dream's ``maskgit_plus``, LLaDA's low-confidence remasking), random order (Dream's
  ``origin``), negative entropy, or the margin between the two most likely tokens (``topk_margin``);
- the **commit rule**: a number per step from an unmasking schedule, or (``threshold``, Fast-dLLM)
  every position whose confidence reaches ``tau``;
- **semi-autoregressive blocks** (LLaDA): the sequence is decoded block by block, left to right,
  the steps shared out over the blocks.

:class:`Sampling` holds every decoding setting and checks it; ``SAMPLERS`` names the presets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable

import torch

from sgdd.config import doc
from sgdd.decoding.schedules import UNMASK_SCHEDULES
from sgdd.errors import SgddError

# --------------------------------------------------------------------------------------------
# confidence rules: (log-probs [N, V], chosen token [N], generator) -> score [N], higher = commit first
# --------------------------------------------------------------------------------------------
Confidence = Callable[[torch.Tensor, torch.Tensor, "torch.Generator | None"], torch.Tensor]


def max_prob(logp: torch.Tensor, token: torch.Tensor, generator=None) -> torch.Tensor:
    """Probability of the chosen token (MaskGIT; LLaDA's low-confidence remasking)."""
    return logp.gather(1, token[:, None]).squeeze(1).exp()


def neg_entropy(logp: torch.Tensor, token: torch.Tensor, generator=None) -> torch.Tensor:
    """sum_v p log p: the more peaked the distribution, the higher (Dream's ``entropy``)."""
    p = logp.exp()
    return torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def top2_margin(logp: torch.Tensor, token: torch.Tensor, generator=None) -> torch.Tensor:
    """p(1st) - p(2nd) of the distribution (Dream's ``topk_margin``)."""
    top = logp.topk(min(2, logp.shape[-1]), dim=-1).values.exp()  # [N, 2]
    return top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0)


def random_order(logp: torch.Tensor, token: torch.Tensor, generator=None) -> torch.Tensor:
    """Uniform noise: positions are committed in random order (Dream's ``origin``)."""
    return torch.rand(token.shape, generator=generator, device=token.device)


CONFIDENCES: dict[str, Confidence] = {
    "max_prob": max_prob,
    "entropy": neg_entropy,
    "margin": top2_margin,
    "random": random_order,
}


def get_confidence(name: str) -> Confidence:
    if name not in CONFIDENCES:
        raise SgddError(f"unknown confidence rule {name!r} (valid: {', '.join(CONFIDENCES)})")
    return CONFIDENCES[name]


# --------------------------------------------------------------------------------------------
# samplers: named presets of (confidence rule, commit rule, default blocks)
# --------------------------------------------------------------------------------------------
LLADA_BLOCK = 8  # LLaDA's block length when none is given (its papers use 32 for 256-token answers)


@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler. ``threshold``: commit every position whose max probability reaches tau
    (at least the schedule's count). ``block_length``: default semi-autoregressive blocks."""

    confidence: str
    help: str
    threshold: bool = False
    block_length: int | None = None


SAMPLERS: dict[str, SamplerSpec] = {
    "maskgit_plus": SamplerSpec("max_prob", "commit the most probable predictions first (MaskGIT; Dream's maskgit_plus)"),
    "random": SamplerSpec("random", "commit positions in random order (Dream's origin)"),
    "entropy": SamplerSpec("entropy", "commit the lowest-entropy positions first (Dream's entropy)"),
    "topk_margin": SamplerSpec("margin", "commit the largest top-1/top-2 probability margins first (Dream's topk_margin)"),
    "llada": SamplerSpec("max_prob", f"LLaDA low-confidence remasking in semi-autoregressive blocks "
                                      f"(--block-length, default {LLADA_BLOCK})", block_length=LLADA_BLOCK),
    "threshold": SamplerSpec("max_prob", "Fast-dLLM parallel decoding: commit every position whose probability "
                                         "reaches --tau, at least one per step", threshold=True),
}


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise SgddError(f"unknown sampler {name!r} (valid: {', '.join(SAMPLERS)})")
    return SAMPLERS[name]


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
@dataclass
class Sampling:
    """Every decoding setting, written once: ``decode`` takes it, ``EvalConfig`` inherits its
    fields (YAML keys, ``sgdd eval`` options and their help texts come from here)."""

    sampler: str = doc(
        "maskgit_plus",
        "Sampler: maskgit_plus (most probable first), random (Dream's origin), entropy, topk_margin, "
        "llada (low-confidence remasking in blocks) or threshold (Fast-dLLM: everything above tau).",
    )
    steps: int = doc(16, "Decoding steps: the most forward passes per sequence (threshold may need fewer).")
    schedule: str = doc("cosine", "Unmasking schedule, how many tokens stay masked after each step: cosine, "
                                  "linear, square, cubic or sqrt.")
    block_length: int | None = doc(None, "Semi-autoregressive blocks of N tokens, decoded left to right "
                                         "(null = the sampler's default: one block; llada 8).")
    tau: float = doc(0.9, "threshold sampler: commit every position whose probability reaches tau, in (0, 1].")
    temperature: float = doc(0.0, "Sampling temperature (0 = greedy).")
    top_k: int = doc(0, "Sample among the k most likely tokens (0 = all).")
    top_p: float = doc(1.0, "Sample within the smallest set of most likely tokens holding this probability (1 = all).")
    alg_temp: float = doc(0.0, "Randomness in the commit order: positions drawn in proportion to "
                               "softmax(confidence / alg_temp) (0 = strictly most confident first).")
    cfg_scale: float = doc(0.0, "Classifier-free guidance w: p = p_c + w (p_c - p_u).")
    repetition_penalty: float = doc(0.0, "Lower the log-probability of a token by this much for every time the "
                                         "sequence already holds it (special tokens exempt); 0 = off.")

    @classmethod
    def of(cls, obj) -> "Sampling":
        """The decoding settings of any object with these attributes (an EvalConfig)."""
        return cls(**{f.name: getattr(obj, f.name) for f in fields(cls)})

    @classmethod
    def named(cls, base: "Sampling | None" = None, **settings) -> "Sampling":
        """``base`` (default: the defaults) with the settings given by name replaced."""
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in settings if k not in valid]
        if unknown:
            raise SgddError(f"unknown decoding setting(s) {', '.join(unknown)} (valid: {', '.join(valid)})")
        return replace(cls.of(base) if base is not None else cls(), **settings)

    @property
    def spec(self) -> SamplerSpec:
        return get_sampler(self.sampler)

    def problems(self) -> list[str]:
        """Every bad setting, one message each (empty when all is well)."""
        p = []
        if self.sampler not in SAMPLERS:
            p.append(f"sampler {self.sampler!r} unknown (valid: {', '.join(SAMPLERS)})")
        if self.steps < 1:
            p.append(f"steps must be at least 1, got {self.steps}")
        if self.schedule not in UNMASK_SCHEDULES:
            p.append(f"schedule {self.schedule!r} unknown (valid: {', '.join(UNMASK_SCHEDULES)})")
        if self.block_length is not None and self.block_length < 1:
            p.append(f"block_length must be at least 1, got {self.block_length}")
        if not 0 < self.tau <= 1:
            p.append(f"tau must be in (0, 1], got {self.tau}")
        if self.temperature < 0:
            p.append(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            p.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            p.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.alg_temp < 0:
            p.append(f"alg_temp must be >= 0, got {self.alg_temp}")
        if not math.isfinite(self.cfg_scale):
            p.append(f"cfg_scale must be finite, got {self.cfg_scale}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty >= 0):
            p.append(f"repetition_penalty must be finite and >= 0 (0 = off), got {self.repetition_penalty}")
        return p

    def check(self) -> "Sampling":
        problems = Sampling.problems(self)
        if problems:
            raise SgddError("invalid decoding settings: " + "; ".join(problems))
        return self

    @property
    def deterministic(self) -> bool:
        """True when two decodes with different seeds give the same tokens."""
        return self.temperature == 0 and self.alg_temp == 0 and self.spec.confidence != "random"

    def blocks(self, length: int) -> list[tuple[int, int]]:
        """[lo, hi) of each semi-autoregressive block of a ``length``-token sequence, left to right."""
        size = self.block_length if self.block_length is not None else self.spec.block_length
        size = length if size is None else min(size, length)
        return [(lo, min(lo + size, length)) for lo in range(0, length, size)]


# --------------------------------------------------------------------------------------------
# choosing tokens
# --------------------------------------------------------------------------------------------
def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Rule out (-inf) every token outside the ``top_k`` most likely and outside the nucleus:
    the smallest set of most likely tokens whose probability reaches ``top_p``. logits [N, V]."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)  # [N, V]
        probs = ordered.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        drop = before >= top_p
        drop[:, 0] = False  # the most likely token always stays
        logits = logits.scatter(1, order, ordered.masked_fill(drop, float("-inf")))
    return logits


def choose_tokens(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick a token per row of ``logits`` [N, V] -> (token [N], log-probs [N, V] of the
    distribution it was picked from: tempered and filtered). Temperature 0 takes the argmax."""
    if temperature > 0:
        logits = logits / temperature
    logp = filter_logits(logits, top_k, top_p).log_softmax(-1)  # [N, V]
    if temperature == 0:
        return logp.max(-1).indices, logp  # (max is ~2x faster than argmax on CPU)
    return sample_categorical(logp, generator), logp


def sample_categorical(logp: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of log-probs [N, V] by inverting the cumulative distribution with one
    uniform number per row (~25x faster than torch.multinomial over a large vocabulary on CPU)."""
    cdf = logp.exp().cumsum(-1)  # [N, V]
    u = torch.rand(logp.shape[0], 1, generator=generator, device=logp.device) * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=logp.shape[1] - 1)  # [N]
    impossible = torch.isneginf(logp.gather(1, token[:, None]).squeeze(1))  # u rounded up to the total
    return torch.where(impossible, logp.argmax(-1), token)


def rank_scores(conf: torch.Tensor, alg_temp: float, generator: torch.Generator | None) -> torch.Tensor:
    """Scores whose order decides which positions are committed: the confidence itself, or with
    ``alg_temp`` > 0 a draw without replacement in proportion to softmax(conf / alg_temp)
    (Gumbel top-k; Dream's ``alg_temp``)."""
    if alg_temp == 0:
        return conf
    u = torch.rand(conf.shape, generator=generator, device=conf.device).clamp_(1e-20, 1 - 1e-7)
    return conf / alg_temp - torch.log(-torch.log(u))
