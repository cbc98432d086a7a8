"""The forward (masking) process of masked diffusion: schedules alpha(t), loss weights, noising.

alpha(t) is the probability that a token is still clean at time t (alpha(0) = 1, alpha(1) ~ 0).
Everything here is stateless and computes on ``t.device``, so nothing has to move with a module.

Schedules (``diffusion.schedule``)::

    linear       alpha = 1 - t
    cosine       alpha = cos(pi t / 2)
    polynomial   alpha = 1 - t^kappa            (``diffusion.kappa``, default 2; kappa = 1 is linear)
    loglinear    alpha = 1 - (1 - 1e-3) t       (MDLM's log-linear noise sigma = -log(1 - (1 - eps) t):
                                                 never fully masked at t = 1)

``Schedule.time_of_share(s)`` inverts the masking probability: the t at which 1 - alpha(t) = s.
Decoding feeds it as the time input, so that a sequence with a share s of its maskable positions
still masked is seen at the time training masked that share.

Loss weights (``diffusion.loss_weight``), applied per masked token to its cross-entropy l::

    elbo   -alpha'(t) / (1 - alpha(t)) * l     the continuous-time ELBO (1/t for linear)
    ones   l
    path   l + exp(-l).detach() * l            Open-dLLM's "path" term added to the plain loss: a
                                               token the model already finds likely (small l)
                                               gets up to twice the gradient
    cart   w_CART(j) * l                       Dream's context-adaptive token-level reweighting:
                                               see :func:`cart_weights`
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from sgdd.cache.format import IGNORE_INDEX
from sgdd.config import doc
from sgdd.errors import SgddError

Fn = Callable[[torch.Tensor], torch.Tensor]
LOGLINEAR_EPS = 1e-3  # MDLM: alpha(1) = eps, so a fully masked sequence is never the only input
DEFAULT_KAPPA = 2.0
DEFAULT_CART_P = 0.3


def _linear(_: float) -> tuple[Fn, Fn]:
    return (lambda t: 1 - t), (lambda t: -torch.ones_like(t))


def _cosine(_: float) -> tuple[Fn, Fn]:
    return (lambda t: torch.cos(0.5 * math.pi * t)), (lambda t: -0.5 * math.pi * torch.sin(0.5 * math.pi * t))


def _polynomial(kappa: float) -> tuple[Fn, Fn]:
    return (lambda t: 1 - t ** kappa), (lambda t: -kappa * t.clamp_min(1e-12) ** (kappa - 1))


def _loglinear(_: float) -> tuple[Fn, Fn]:
    return (lambda t: 1 - (1 - LOGLINEAR_EPS) * t), (lambda t: torch.full_like(t, -(1 - LOGLINEAR_EPS)))


def _share_linear(_: float) -> Fn:
    return lambda s: s


def _share_cosine(_: float) -> Fn:
    return lambda s: torch.acos((1 - s).clamp(-1, 1)) * (2 / math.pi)


def _share_polynomial(kappa: float) -> Fn:
    return lambda s: s.clamp_min(0) ** (1 / kappa)


def _share_loglinear(_: float) -> Fn:
    return lambda s: (s / (1 - LOGLINEAR_EPS)).clamp(max=1)  # share 1 is never reached: t = 1


# name -> f(kappa) -> t(s), the inverse of s = 1 - alpha(t) (clamped to [0, 1])
TIME_OF_SHARE: dict[str, Callable[[float], Fn]] = {
    "linear": _share_linear,
    "cosine": _share_cosine,
    "polynomial": _share_polynomial,
    "loglinear": _share_loglinear,
}

# name -> f(kappa) -> (alpha(t), d alpha / dt)
SCHEDULES: dict[str, Callable[[float], tuple[Fn, Fn]]] = {
    "linear": _linear,
    "cosine": _cosine,
    "polynomial": _polynomial,
    "loglinear": _loglinear,
}


@dataclass(frozen=True)
class Schedule:
    """alpha(t) and its derivative for one named schedule."""

    name: str
    kappa: float = DEFAULT_KAPPA

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise SgddError(f"unknown schedule {self.name!r} (valid: {', '.join(SCHEDULES)})")
        if self.kappa <= 0:
            raise SgddError(f"kappa must be positive, got {self.kappa}")

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return SCHEDULES[self.name](self.kappa)[0](t)

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        return SCHEDULES[self.name](self.kappa)[1](t)

    def time_of_share(self, share: torch.Tensor) -> torch.Tensor:
        """The time t in [0, 1] whose masking probability 1 - alpha(t) equals ``share`` (alpha^-1(1 - s))."""
        return TIME_OF_SHARE[self.name](self.kappa)(share.float().clamp(0, 1)).clamp(0, 1)


def get_schedule(name: str, kappa: float | None = None) -> Schedule:
    """The schedule called ``name``; ``kappa`` (polynomial only) defaults to 2."""
    return Schedule(name, DEFAULT_KAPPA if kappa is None else kappa)


def elbo_weight(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """-alpha'(t) / (1 - alpha(t)): the continuous-time ELBO weight (1/t for the linear schedule)."""
    return -schedule.dalpha(t) / (1 - schedule.alpha(t)).clamp_min(1e-6)


def cart_weights(masked: torch.Tensor, p: float) -> torch.Tensor:
    """Dream's CART weights [B, L] (Ye et al. 2025, "Dream 7B", context-adaptive noise
    rescheduling at the token level): a masked token j is weighted by how much clean context lies
    near it, ``w_j = 1/2 * sum_{i unmasked} Geo(p, |i - j| - 1)`` with ``Geo(p, k) = p (1-p)^k``.
    A token right next to clean tokens weighs up to p per neighbour; one far from every clean
    token (or in a fully masked block) weighs ~0. Unmasked positions get weight 0. The weight
    does not depend on t: it replaces the time weight."""
    L = masked.shape[1]
    pos = torch.arange(L, device=masked.device)
    gap = ((pos[:, None] - pos[None, :]).abs() - 1).clamp_min(0)  # [L, L]
    geo = p * (1 - p) ** gap.to(torch.float32)  # [L, L] Geo(p, |i - j| - 1)
    clean = (~masked).to(torch.float32)  # [B, L]
    return 0.5 * (clean @ geo) * masked.to(torch.float32)  # [B, L]


@dataclass
class TokenLossInputs:
    """What a loss weight may look at: per-token cross-entropies at the scored positions and
    the noise that produced them."""

    ce: torch.Tensor | None  # [M] cross-entropy of each scored token (row-major order of ``scored``); None for factors
    t: torch.Tensor  # [B] times
    masked: torch.Tensor  # [B, L] bool: positions that are mask tokens in x_t
    scored: torch.Tensor  # [B, L] bool: positions in the loss (masked and with a real label)
    schedule: Schedule
    cart_p: float


def _ones_factor(x: TokenLossInputs) -> torch.Tensor:
    return torch.ones(int(x.scored.sum()), device=x.scored.device)


def _elbo_factor(x: TokenLossInputs) -> torch.Tensor:
    rows = x.scored.nonzero(as_tuple=True)[0]  # [M] sample of each scored token
    return elbo_weight(x.schedule, x.t.float())[rows]


def _cart_factor(x: TokenLossInputs) -> torch.Tensor:
    return cart_weights(x.masked, x.cart_p)[x.scored]


def _path(x: TokenLossInputs) -> torch.Tensor:
    return x.ce + torch.exp(-x.ce).detach() * x.ce


# loss weights whose per-token loss is a factor of the noise alone times the cross-entropy:
# name -> factor [M] (they need no ``ce``, so a fused projection + loss can take them up front)
LOSS_FACTORS: dict[str, Callable[[TokenLossInputs], torch.Tensor]] = {
    "elbo": _elbo_factor,
    "ones": _ones_factor,
    "cart": _cart_factor,
}
# name -> per-token weighted loss [M]
LOSS_WEIGHTS: dict[str, Callable[[TokenLossInputs], torch.Tensor]] = {
    "elbo": lambda x: _elbo_factor(x) * x.ce,
    "ones": lambda x: x.ce,
    "path": _path,
    "cart": lambda x: _cart_factor(x) * x.ce,
}


def token_factors(name: str, inputs: TokenLossInputs) -> torch.Tensor | None:
    """The factor w [M] of a loss weight whose per-token loss is w * CE (``inputs.ce`` unused), or
    None for one that depends on the cross-entropy itself (path)."""
    get_loss_weight(name)
    return LOSS_FACTORS[name](inputs) if name in LOSS_FACTORS else None


def get_loss_weight(name: str) -> Callable[[TokenLossInputs], torch.Tensor]:
    if name not in LOSS_WEIGHTS:
        raise SgddError(f"unknown loss weight {name!r} (valid: {', '.join(LOSS_WEIGHTS)})")
    return LOSS_WEIGHTS[name]


def weighted_token_loss(name: str, inputs: TokenLossInputs) -> torch.Tensor:
    """The per-token loss [M] under loss weight ``name``."""
    return get_loss_weight(name)(inputs)


def sample_noise(n: int, length: int, time_eps: float, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", stratified: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample times t ~ U(eps, 1) [n] and uniforms u [n, L] that decide which tokens are masked.

    Drawn for a whole optimizer step at once, so that splitting the step into micro-batches
    (or over processes) does not change which tokens are masked. ``stratified``: low-discrepancy
    times (MDLM), ``(u0 + i / n) mod 1`` for one uniform u0, in random order: every step covers
    (eps, 1) evenly, which lowers the variance of the loss across steps.
    """
    if stratified:
        u0 = torch.rand(1, generator=generator, device=device)
        grid = (u0 + torch.arange(n, device=device) / n) % 1  # [n]
        share = grid[torch.randperm(n, generator=generator, device=device)]
    else:
        share = torch.rand(n, generator=generator, device=device)
    t = time_eps + (1 - time_eps) * share
    u = torch.rand(n, length, generator=generator, device=device)
    return t, u


def apply_mask(x0: torch.Tensor, t: torch.Tensor, u: torch.Tensor, schedule: Schedule,
               mask_id: int, given: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t: each token of x0 [B, L] is replaced by ``mask_id`` with probability 1 - alpha(t).

    Returns (x_t [B, L], scored [B, L]). A label equal to ``IGNORE_INDEX`` is always a mask
    token in x_t (its content is unknown) and never scored. The first ``given`` positions are
    never masked nor scored (tokens known at inference)."""
    real = x0 != IGNORE_INDEX  # [B, L]
    scored = (u < (1 - schedule.alpha(t))[:, None]) & real  # [B, L]
    scored[:, :given] = False
    x_t = torch.where(scored | ~real, torch.full_like(x0, mask_id), x0)
    return x_t, scored


@dataclass
class DiffusionConfig:
    schedule: str = doc("linear", "Noise schedule alpha(t): linear, cosine, polynomial (1 - t^kappa) or loglinear.")
    kappa: float | None = doc(None, "Exponent of the polynomial schedule (default 2); only with schedule polynomial.")
    loss_weight: str = doc(
        "ones",
        "Per-token loss weight: ones (plain cross-entropy; the default: lower variance than elbo with "
        "i.i.d. t, and it won the ablation of RESULTS.md), elbo (-alpha'/(1-alpha); 1/t for linear), path (ones plus "
        "Open-dLLM's exp(-l).detach()*l) or cart (Dream's context-adaptive token-level weights).",
    )
    cart_p: float | None = doc(None, "Geometric-distribution p of the cart weight (default 0.3); only with loss_weight cart.")
    time_eps: float = doc(1e-3, "t is drawn from U(time_eps, 1).")
    stratified: bool = doc(False, "Low-discrepancy times (MDLM): the n times of an optimizer step are "
                           "(u + i/n) mod 1 for one uniform u, spread evenly over (time_eps, 1) instead of i.i.d.")
    loss_vocab: int = doc(0, "Training softmax over a sample of the output vocabulary: the step's target tokens, the "
                          "N most frequent training tokens and N others drawn at random, each of those standing for "
                          "its share of the rest (an importance-sampled normaliser; Jean et al. 2015 train over the "
                          "batch's target words). The vocabulary projection then costs a fraction of the full one. "
                          "0 = the full output vocabulary. Validation always scores the full one. Sentence view only.")

    def problems(self) -> list[str]:
        """Every problem of this config, one short sentence each."""
        p: list[str] = []
        if self.schedule not in SCHEDULES:
            p.append(f"diffusion.schedule {self.schedule!r} unknown (valid: {', '.join(SCHEDULES)})")
        if self.loss_weight not in LOSS_WEIGHTS:
            p.append(f"diffusion.loss_weight {self.loss_weight!r} unknown (valid: {', '.join(LOSS_WEIGHTS)})")
        if self.kappa is not None and self.schedule != "polynomial":
            p.append(f"diffusion.kappa is for the polynomial schedule, not {self.schedule!r}")
        if self.kappa is not None and self.kappa <= 0:
            p.append(f"diffusion.kappa must be positive, got {self.kappa}")
        if self.cart_p is not None and self.loss_weight != "cart":
            p.append(f"diffusion.cart_p is for loss_weight cart, not {self.loss_weight!r}")
        if self.cart_p is not None and not 0 < self.cart_p <= 1:
            p.append(f"diffusion.cart_p must be in (0, 1], got {self.cart_p}")
        if not 0 < self.time_eps < 1:
            p.append(f"diffusion.time_eps must be in (0, 1), got {self.time_eps}")
        if self.loss_vocab < 0:
            p.append(f"diffusion.loss_vocab must be >= 0, got {self.loss_vocab}")
        elif self.loss_vocab and self.loss_weight == "path":
            p.append("diffusion.loss_vocab needs a loss weight known before the loss (not path)")
        return p
