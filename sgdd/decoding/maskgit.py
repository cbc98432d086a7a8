"""MaskGIT iterative decoding for the conditional masked-diffusion decoder.

Start from a fully masked block of ``L = model.cfg.max_len`` tokens. At every step the model
predicts every still-masked position; the most confident predictions are committed and never
change again; the rest stay masked for the next step. How many stay masked after step ``s`` of
``steps`` comes from an unmasking schedule (cosine in MaskGIT). The generated length is learned:
the model predicts the end-of-sentence and padding positions like any other token.

One loop serves the whole sampler family of :mod:`sgdd.decoding.samplers` (confidence rules,
threshold commits, semi-autoregressive blocks). Speed: the condition's cross-attention
keys/values are computed once per sequence, vocabulary logits only at still-open positions, the
conditional and unconditional CFG branches run as one batch, and sequences with nothing left to
decode drop out of the batch.

The time input of every step is the training time of the current mask share: the t at which the
training schedule (``noise``, linear by default) masks that share of the positions training could
mask (all but a given prefix), see :meth:`sgdd.models.diffusion.Schedule.time_of_share`.

The model only has to provide the decoder's interface: ``cfg.max_len``, ``mask_id``,
``condition(z, drop) -> kv``, ``model(x_t, t, kv=kv) -> hidden [B, L, d]`` and
``logits(hidden_selection) -> [..., V]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from sgdd.decoding.samplers import Sampling, choose_tokens, get_confidence, rank_scores
from sgdd.decoding.schedules import share_steps, unmask_plan
from sgdd.models.diffusion import Schedule, get_schedule
from sgdd.errors import SgddError

@dataclass
class Trajectory:
    """How a batch was decoded."""

    committed_at: torch.Tensor  # [B, L] step (1-based) at which each position was committed
    forward_passes: int  # model forward calls over the batch (a CFG step is one batched call)
    passes_per_row: torch.Tensor  # [B] forward calls each sequence took part in
    blocks: list[tuple[int, int]] = field(default_factory=list)  # [lo, hi) of each block, left to right
    token_logp: torch.Tensor | None = None  # [B, L] log-probability of each token when it was committed (0: not decoded)

    @property
    def steps(self) -> int:
        return int(self.committed_at.max()) if self.committed_at.numel() else 0

    def score(self) -> torch.Tensor:
        """The model's own score of each row [B]: the mean log-probability of the tokens it
        committed (under the distribution each was chosen from); -inf for a row that decoded nothing."""
        decoded = self.committed_at > 0  # [B, L]
        total = torch.where(decoded, self.token_logp.float(), torch.zeros_like(self.token_logp, dtype=torch.float))
        n = decoded.sum(1)
        return torch.where(n > 0, total.sum(1) / n.clamp_min(1), torch.full_like(total[:, 0], float("-inf")))


def _guide(logits_c: torch.Tensor, logits_u: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance in log-probability space: l = l_c + w (l_c - l_u).

    Tokens that either branch rules out (-inf, e.g. the mask token) stay ruled out.
    """
    lc, lu = logits_c.log_softmax(-1), logits_u.log_softmax(-1)
    guided = lc + scale * (lc - lu)
    return guided.masked_fill(torch.isneginf(lc) | torch.isneginf(lu), float("-inf"))


def take_rows(obj: Any, rows: torch.Tensor) -> Any:
    """The rows ``rows`` of every tensor in a (nested list/tuple/dict of) per-sequence tensors."""
    if isinstance(obj, torch.Tensor):
        return obj[rows]
    if isinstance(obj, (list, tuple)):
        return type(obj)(take_rows(o, rows) for o in obj)
    if isinstance(obj, dict):
        return {k: take_rows(v, rows) for k, v in obj.items()}
    return obj


class Conditioner:
    """The condition of a batch of B sequences (conditional rows, then with CFG the unconditional
    ones): the model's per-sequence condition (cross-attention keys/values) computed once."""

    def __init__(self, model, z: torch.Tensor, guided: bool):
        self.B, self.guided = z.shape[0], guided
        z = torch.cat([z, z]) if guided else z  # [B or 2B, Dz]
        drop = torch.arange(2 * self.B, device=z.device) >= self.B if guided else None
        self.rows = z.shape[0]
        self.kv = model.condition(z, drop)

    def __call__(self, model, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Hidden states [R or 2R, L, d] of the batch rows ``rows`` [R] with inputs x [.., L], t [..]."""
        if self.guided:
            rows = torch.cat([rows, rows + self.B])
        everything = rows.numel() == self.rows
        return model(x, t, kv=self.kv if everything else take_rows(self.kv, rows))


def decode(model, z: torch.Tensor, steps: int | None = None, schedule: str | None = None, *,
           sampling: Sampling | None = None, generator: torch.Generator | None = None,
           return_trajectory: bool = False, length: int | None = None, prefix: torch.Tensor | None = None,
           noise: Schedule | None = None, start: torch.Tensor | None = None,
           exempt: Sequence[int] = (), **settings: Any) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Decode token ids [B, L] from conditions z [B, Dz] with at most ``steps`` forward passes.

    The decoding settings are a :class:`sgdd.decoding.samplers.Sampling` (``sampling``, default
    its defaults) with any of its fields given by name replaced (``steps``, ``schedule``,
    ``sampler``, ``cfg_scale``, ``temperature``, ...). ``cfg_scale`` w != 0 runs the conditional
    and the unconditional (learned null condition) branch in one batched forward per step.
    ``temperature`` 0 is greedy; otherwise tokens are sampled with ``generator`` (which also
    drives the random order and ``alg_temp``).
    ``length``: tokens to generate (default ``model.cfg.max_len``; an MTP head's block length).
    ``prefix`` [B, P]: tokens given at positions 0..P-1 (committed before the first step, never
    changed; e.g. the base model's own next token for an MTP head); the rest is decoded.
    ``noise``: the training noise schedule, which maps the share still masked to the time input
    (default linear: t = the share). ``start`` [B, L]: a partly decoded block to finish instead
    of an all-masked one: its mask tokens are decoded, every other token is kept (not with
    ``prefix``); each row follows the unmasking schedule over its own number of mask tokens.
    ``exempt``: token ids the ``repetition_penalty`` never lowers (padding, sentence ends).
    With ``return_trajectory`` also returns a :class:`Trajectory`. The model is put in eval
    mode for the call and restored afterwards.
    """
    if steps is not None:
        settings["steps"] = steps
    if schedule is not None:
        settings["schedule"] = schedule
    sampling = Sampling.named(sampling, **settings).check()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # (not inference_mode: under it autocast re-casts every weight at every step)
            ids, trajectory = _decode(model, z, sampling, generator, length, prefix,
                                      noise or get_schedule("linear"), start, exempt)
    finally:
        model.train(was_training)
    return (ids, trajectory) if return_trajectory else ids


def _predict(model, cond: Conditioner, x: torch.Tensor, rows: torch.Tensor, open_: torch.Tensor,
             noise: Schedule, maskable: int) -> torch.Tensor:
    """One forward pass over the batch rows ``rows`` -> logits at their open positions ``open_``
    [R, L] (the vocabulary projection only there): [M, V], with CFG [2M, V] (conditional rows
    first), in the model's compute dtype. The time input is the training time of the share of
    the ``maskable`` positions still masked."""
    t = time_input(x, model.mask_id, maskable, noise)  # [R]
    if cond.guided:
        hidden = cond(model, torch.cat([x, x]), torch.cat([t, t]), rows)  # [2R, L, d]
        return model.logits(hidden[torch.cat([open_, open_])])  # [2M, V]
    return model.logits(cond(model, x, t, rows)[open_])  # [M, V]


def time_input(x: torch.Tensor, mask_id: int, maskable: int, noise: Schedule) -> torch.Tensor:
    """The time input [R] of rows x [R, L]: the training time of the share of their ``maskable``
    positions still masked."""
    return noise.time_of_share((x == mask_id).sum(1).float() / maskable)


@torch.no_grad()
def first_pass_hidden(model, z: torch.Tensor, x: torch.Tensor, maskable: int, noise: Schedule | None = None) -> torch.Tensor:
    """The hidden states [M, d] at the masked positions of x [B, L] (row-major) that the first
    step of :func:`decode` computes, without CFG; ``maskable``: the positions a row could hold
    masked (L less a given prefix)."""
    t = time_input(x, model.mask_id, maskable, noise or get_schedule("linear"))  # [B]
    return model(x, t, kv=model.condition(z))[x == model.mask_id]


def chunk_rows(vocab: int, device: torch.device) -> int:
    """Rows of float32 logits handled at once after the projection: ~2 MiB on CPU, so that
    cast, log-softmax, choice and confidence run in cache (3x faster than over all rows at
    once); ~256 MiB on GPUs, which bounds the memory peak."""
    budget = (1 << 28) if device.type == "cuda" else (1 << 21)
    return max(1, budget // (4 * vocab))


def held_counts(x: torch.Tensor, vocab: int, free: torch.Tensor) -> torch.Tensor:
    """How often each token already stands in each row of x [R, L] -> [R, V] float, 0 for the
    ``free`` ids (the mask token and the exempt ones)."""
    counts = torch.zeros(x.shape[0], vocab, device=x.device).scatter_add_(1, x, torch.ones_like(x, dtype=torch.float))
    counts[:, free] = 0
    return counts


def _choose(logits: torch.Tensor, s: Sampling, guided: bool, confidence, generator,
            held: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A token, its confidence and its log-probability [M] per open position from the logits of
    :func:`_predict`. ``held``: (counts [R, V] of :func:`held_counts`, row [M] of each open
    position) for the repetition penalty."""
    M = logits.shape[0] // 2 if guided else logits.shape[0]
    step = chunk_rows(logits.shape[-1], logits.device)
    tokens, confs, logps = [], [], []
    for lo in range(0, M, step):
        hi = min(lo + step, M)
        chunk = logits[lo:hi].float()  # [c, V]
        if guided:
            chunk = _guide(chunk, logits[M + lo:M + hi].float(), s.cfg_scale)
        if held is not None:
            counts, row_of = held
            chunk = chunk - s.repetition_penalty * counts[row_of[lo:hi]]
        token, logp = choose_tokens(chunk, s.temperature, s.top_k, s.top_p, generator)  # [c], [c, V]
        tokens.append(token)
        confs.append(confidence(logp, token, generator))
        logps.append(logp.gather(1, token[:, None]).squeeze(1))
    return torch.cat(tokens), torch.cat(confs), torch.cat(logps)


def _commit(open_: torch.Tensor, scores: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The ``count`` [R] best-scored open positions of each row -> mask [R, L].
    ``scores`` [M] are the scores of the open positions ``open_`` [R, L] in row-major order."""
    R, L = open_.shape
    full = torch.full((R, L), float("-inf"), device=open_.device)
    full[open_] = scores.float().nan_to_num(nan=-1e30, posinf=1e30, neginf=-1e30)
    order = full.argsort(dim=1, descending=True)  # [R, L]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(L, device=open_.device).expand(R, L))
    return (rank < count[:, None]) & open_


def _row_plans(n_open: torch.Tensor, steps: int, schedule: str) -> torch.Tensor:
    """Masked positions left after each step [B, S] for rows with ``n_open`` [B] open positions:
    each row its own :func:`unmask_plan`, 0 once it is done."""
    plans = {n: unmask_plan(n, steps, schedule) for n in sorted(set(n_open.tolist())) if n > 0}
    width = max((len(p) for p in plans.values()), default=0)
    table = torch.zeros(n_open.shape[0], width, dtype=torch.long, device=n_open.device)
    for n, plan in plans.items():
        table[n_open == n, :len(plan)] = torch.tensor(plan, device=n_open.device)
    return table


def _decode(model, z: torch.Tensor, s: Sampling, generator, length: int | None,
            prefix: torch.Tensor | None, noise: Schedule, start: torch.Tensor | None, exempt: Sequence[int] = ()):
    B, device, mask = z.shape[0], z.device, model.mask_id
    L = start.shape[1] if start is not None else (length or model.cfg.max_len)
    if not 1 <= L <= model.cfg.max_len:
        raise SgddError(f"cannot decode {L} tokens with a model of max_len {model.cfg.max_len}")
    P = 0 if prefix is None else prefix.shape[1]
    if prefix is not None and (prefix.shape[0] != B or not 0 <= P < L):
        raise SgddError(f"a prefix of shape {tuple(prefix.shape)} does not fit {B} rows of {L} tokens")
    if start is not None and (prefix is not None or start.shape[0] != B or (length or L) != L):
        raise SgddError(f"a start block of shape {tuple(start.shape)} does not fit {B} rows of {length or L} "
                        "tokens (and takes no prefix)")
    spec, confidence = s.spec, get_confidence(s.spec.confidence)
    blocks = s.blocks(L)
    cond = Conditioner(model, z, guided=s.cfg_scale != 0)  # 1. condition once
    free = torch.tensor([mask, *exempt], dtype=torch.long, device=device)  # never penalised as repeats

    x = torch.full((B, L), mask, dtype=torch.long, device=device)  # [B, L]
    if P:
        x[:, :P] = prefix.to(device)
    if start is not None:
        x = start.to(device=device, dtype=torch.long).clone()
    committed_at = torch.zeros(B, L, dtype=torch.long, device=device)
    token_logp = torch.zeros(B, L, dtype=torch.float, device=device)
    passes_per_row = torch.zeros(B, dtype=torch.long, device=device)
    calls = 0
    for (lo, hi), block_steps in zip(blocks, share_steps(s.steps, len(blocks))):
        in_block = torch.zeros(L, dtype=torch.bool, device=device)
        in_block[lo:hi] = True
        plans = _row_plans(((x == mask) & in_block).sum(1), block_steps, s.schedule)  # [B, S]
        for target in plans.unbind(1):
            # 2. the rows with open (masked, in this block) positions; finished rows are left out
            open_all = (x == mask) & in_block  # [B, L]
            rows = open_all.any(1).nonzero().squeeze(1)  # [R]
            if rows.numel() == 0:
                break
            xr, open_ = x[rows], open_all[rows]  # [R, L]
            logits = _predict(model, cond, xr, rows, open_, noise, L - P)  # [M or 2M, V]
            calls += 1
            passes_per_row[rows] += 1

            # 3. a token per open position; how many to commit; the best-scored ones
            held = None
            if s.repetition_penalty:  # what each row already holds, for the open positions' rows
                held = held_counts(xr, logits.shape[-1], free), open_.nonzero()[:, 0]
            token, conf, logp = _choose(logits, s, cond.guided, confidence, generator, held)  # [M] each
            scores = rank_scores(conf, s.alg_temp, generator)
            n_open = open_.sum(1)  # [R]
            count = (n_open - target[rows]).clamp(min=1)
            if spec.threshold:
                sure = conf >= s.tau  # [M]
                scores = torch.where(sure, torch.full_like(scores, float("inf")), scores)
                n_sure = torch.zeros_like(open_).masked_scatter(open_, sure).sum(1)  # [R]
                count = torch.maximum(count, n_sure)
            commit = _commit(open_, scores, torch.minimum(count, n_open))  # [R, L]
            proposal = torch.full_like(xr, mask)
            proposal[open_] = token
            x[rows] = torch.where(commit, proposal, xr)
            committed_at[rows] = torch.where(commit, calls, committed_at[rows])
            proposal_logp = torch.zeros_like(xr, dtype=torch.float)
            proposal_logp[open_] = logp.float()
            token_logp[rows] = torch.where(commit, proposal_logp, token_logp[rows])

    assert not bool((x == mask).any())
    return x, Trajectory(committed_at=committed_at, forward_passes=calls, passes_per_row=passes_per_row,
                         blocks=blocks, token_logp=token_logp)


def special_token_ids(special_ids: dict) -> list[int]:
    """The begin, end and padding ids that ``special_ids`` defines (repeats of these are no fault)."""
    return [special_ids[k] for k in ("bos_id", "eos_id", "pad_id") if special_ids.get(k) is not None]


def tokens_to_text(ids: torch.Tensor | Sequence[Sequence[int]], tokenizer, special_ids: dict) -> list[str]:
    """Token ids [B, L] -> texts: cut each row at the first end-of-sentence token after position
    0, drop begin/pad/end/mask tokens, detokenise and strip."""
    rows = ids.tolist() if isinstance(ids, torch.Tensor) else [list(r) for r in ids]
    eos = special_ids["eos_id"]
    drop = {special_ids[k] for k in ("bos_id", "pad_id", "eos_id", "mask_id") if special_ids.get(k) is not None}
    kept = []
    for row in rows:
        end = next((i for i, tok in enumerate(row) if i > 0 and tok == eos), len(row))
        kept.append([tok for tok in row[:end] if tok not in drop])
    return [text.strip() for text in tokenizer.batch_decode(kept, skip_special_tokens=True)]
