"""Stage 2: train the conditional masked-diffusion decoder (or MTP head) from a cache. The encoder
or base model is never loaded: token ids, condition vectors, the embedding matrix, the LM head
and the special ids all come from the cache.

Run directory (``cfg.out``, default ``runs/<cfg.name or cache directory name>``)::

    config.yaml                  the TrainConfig as given, written when training starts
    encoder/                     tokenizer files, encoder.json and cache.json copied from the cache
                                 (decoding and invert need nothing else; see sgdd.models.portable)
    metrics.jsonl                one JSON object per log line and one per validation
    checkpoints/last/            model.safetensors (+ ema.safetensors) + model.json + trainer.pt
    checkpoints/best/            model.safetensors (+ ema.safetensors) + model.json (lowest
                                 validation loss so far; a copy of last without validation)
    tensorboard/                 only with --report-to tensorboard

Every save writes a whole checkpoint directory under a temporary name, then renames it into
place; a run killed between the two renames is repaired when it resumes.

Determinism: the model is initialised from ``seed_everything(cfg.seed)``; the data order comes from
a generator seeded by ``cfg.seed`` and the training noise from one seeded by ``cfg.seed + 1``; both
generators, the torch RNG (of every rank), the optimizer, scheduler, scaler, EMA and step
counters are saved, so a resumed run continues bit for bit like one that was never stopped
(checked with a real SIGKILL in the tests). Validation noise comes from a fresh generator
seeded by ``cfg.seed`` at every validation, so validation losses are comparable.

Resuming refuses a changed config (listing every difference) except the fields in
``RESUME_MAY_CHANGE``, which do not touch the training computation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from sgdd.cache.identity import check_identity, encoder_identity
from sgdd.cache.reader import Cache, CacheSplit, open_cache
from sgdd.cache.views import check_view, next_block_view, sentence_view, view_for
from sgdd.models.body import BODY_PREFIX, BodyDecoder
from sgdd.models.checkpoint import (MODEL_FILE, MODEL_META, WRITE_ERRORS, load_ema_weights, load_model,
                                    load_trainer_state, model_meta, read_meta, save_model, write_failed)
from sgdd.models.decoder import Decoder
from sgdd.models.diffusion import (DEFAULT_CART_P, IGNORE_INDEX, TokenLossInputs, apply_mask, get_schedule, sample_noise,
                                   weighted_token_loss)
from sgdd.models.ema import EMA
from sgdd.models.portable import copy_encoder_files
from sgdd.pipeline import distributed_train as ddp
from sgdd.config import diff_dicts, from_dict, load_yaml, to_dict
from sgdd.models.decoder import DecoderConfig
from sgdd.models.diffusion import DiffusionConfig
from sgdd.pipeline.config import OptimConfig, TrainConfig
from sgdd.pipeline.distributed_train import DistInfo
from sgdd.errors import SgddError
from sgdd.io import fsync_tree, write_text_atomic
from sgdd.log import get_logger, progress
from sgdd.runtime import Precision, default_threads, pick_device, pick_precision, seed_everything
from sgdd.pipeline.trackers import Tracker, open_trackers

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LAST, BEST = "last", "best"
TRAINER_STATE = "trainer.pt"
TRAINER_STATE_VERSION = 2  # 2: EMA updates and per-rank RNG states (version 1 still resumes)
SPECIAL_IDS = ("pad_id", "mask_id", "bos_id", "eos_id")
LM_HEAD_FILE = "lm_head.safetensors"
NOISE_SEED_OFFSET = 1  # training noise generator: cfg.seed + 1 (data order: cfg.seed)
RANK_SEED_OFFSET = 1000  # torch RNG (dropout) of rank r > 0: cfg.seed + 1000 r
# Config fields a resumed run may change: where and how often it reports, nothing it computes.
RESUME_MAY_CHANGE = ("resume", "log_every", "save_every", "eval_every", "report_to", "device", "init_from", "out", "name",
                     "allow_foreign_cache", "compile")
# Decoder fields that may differ from the run --init-from starts from (they change no weight shape).
INIT_MAY_CHANGE = ("dropout", "cond_drop")

_MAIN = True  # False on ranks > 0: they print nothing


def say(msg: str) -> None:
    """One line for the user, without breaking the progress bar (rank 0 only)."""
    if _MAIN:
        get_logger("train").info(msg)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
@dataclass
class TrainData:
    """Everything training reads from the cache."""

    view: str  # "sentence" or "next_block"
    train: object  # SentenceView | NextBlockView
    val: object | None
    embeddings: torch.Tensor  # [V, E]
    lm_head: torch.Tensor | None  # [V', E] the base model's output layer, when the cache has one
    special_ids: dict[str, int | None]
    vocab_size: int
    cond_dim: int
    hidden_size: int  # the encoder's / base model's hidden size (d_model: null)
    info: dict  # encoder.json
    identity: dict = field(default_factory=dict)  # the encoder behind the training split (sgdd.cache.identity)
    body: tuple[dict, dict] | None = None  # the encoder's HF config and weights (model.init_body: encoder)

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.info.get("tokenizer_sha256")


def special_ids(info: dict, view: str) -> dict[str, int | None]:
    """Special ids from the cache's encoder.json. The sentence view needs pad/mask/bos/eos (the
    target is a padded sentence); the next-block view only the mask token."""
    needed = SPECIAL_IDS if view == "sentence" else ("mask_id",)
    missing = [k for k in needed if info.get(k) is None]
    if missing:
        raise SgddError(f"the cache's encoder.json lacks {', '.join(missing)} (the {view} view needs them)")
    return {k: None if info.get(k) is None else int(info[k]) for k in SPECIAL_IDS}


def build_view(cfg: TrainConfig, split: CacheSplit, view: str, ids: dict, max_rows: int | None):
    if view == "sentence":
        out = sentence_view(split, cfg.model.max_len, ids["pad_id"], max_rows)
        if out.dropped:
            say(f"left out {out.dropped} rows of {split.name} longer than model.max_len={cfg.model.max_len}")
        return out
    out = next_block_view(split, cfg.block_length, cfg.block_tail, max_rows, cfg.consistent_labels)
    if out.dropped:
        say(f"{out.dropped} windows of {split.name} are shorter than block_length={cfg.block_length} (no sample)")
    return out


def validation_view(cfg: TrainConfig, cache: Cache, view: str, ids: dict, train) -> object | None:
    if cfg.val_split is None or cfg.eval_batches == 0:
        say("no validation (val_split is null or eval_batches is 0): best checkpoint = last")
        return None
    if cfg.val_split not in cache.splits:
        say(f"cache has no split {cfg.val_split!r}: training without validation, best checkpoint = last")
        return None
    split = cache.split(cfg.val_split)
    if view_for(split, "auto") != view_for(cache.split(cfg.train_split), "auto"):
        raise SgddError(f"split {cfg.val_split!r} is not of the same kind as {cfg.train_split!r}")
    val = build_view(cfg, split, view, ids, None)
    if val.cond_dim != train.cond_dim:
        raise SgddError(f"split {cfg.val_split!r} has {val.cond_dim}-d conditions, {cfg.train_split!r} has {train.cond_dim}-d")
    return val


def load_data(cfg: TrainConfig) -> TrainData:
    """Open the cache and build the training and validation views; refuse what does not fit."""
    cache = open_cache(cfg.shards)
    info = cache.encoder_info
    train_split = cache.split(cfg.train_split)
    view = view_for(train_split, cfg.view)
    check_view(train_split, view)
    ids = special_ids(info, view)
    train = build_view(cfg, train_split, view, ids, cfg.max_train_samples)
    val = validation_view(cfg, cache, view, ids, train)
    embeddings = cache.embeddings()
    vocab_size = int(info["vocab_size"])
    if embeddings.shape[0] != vocab_size:
        raise SgddError(f"cache embeddings have {embeddings.shape[0]} rows, encoder.json says vocab_size={vocab_size}")
    if not 0 <= ids["mask_id"] < vocab_size:
        raise SgddError(f"mask_id {ids['mask_id']} is outside the vocabulary of {vocab_size} tokens")
    lm_head = None
    if (cache.encoder_dir / LM_HEAD_FILE).is_file():
        from safetensors.torch import load_file

        lm_head = load_file(str(cache.encoder_dir / LM_HEAD_FILE))["weight"]
        if lm_head.shape[0] > vocab_size or lm_head.shape[1] != embeddings.shape[1]:
            raise SgddError(f"the cache's LM head has shape {tuple(lm_head.shape)}, its embeddings {tuple(embeddings.shape)}")
    hidden_size = int(info.get("hidden_size") or train.cond_dim)
    body = cache.body() if cfg.model.init_body == "encoder" else None
    if cfg.batching == "by_length" and view != "sentence":
        raise SgddError(f"batching by_length is for the sentence view (this cache trains the {view} view)")
    return TrainData(view, train, val, embeddings, lm_head, ids, vocab_size, train.cond_dim, hidden_size, info,
                     encoder_identity(cache, cfg.train_split), body)


def check_cache_fits(meta: dict, data: TrainData, cache_dir: str, what: str, allow_foreign: bool = False) -> None:
    """Refuse a cache whose condition size, vocabulary, tokenizer or view differ from those of the
    checkpoint ``meta`` (to resume or to start from), before any step; then one whose encoder
    identity differs (unless ``allow_foreign``)."""
    problems = []
    for key, now in (("cond_dim", data.cond_dim), ("vocab_size", data.vocab_size),
                     ("embed_dim", data.embeddings.shape[1]), ("mask_id", data.special_ids["mask_id"])):
        if meta.get(key) != now:
            problems.append(f"{key} {meta.get(key)} in the checkpoint, {now} in the cache")
    if meta.get("tokenizer_sha256") and data.tokenizer_sha256 and meta["tokenizer_sha256"] != data.tokenizer_sha256:
        problems.append(f"tokenizer sha256 {meta['tokenizer_sha256'][:12]}... in the checkpoint, "
                        f"{data.tokenizer_sha256[:12]}... in the cache")
    if meta.get("view", data.view) != data.view:
        problems.append(f"view {meta['view']} in the checkpoint, {data.view} for this cache")
    if problems:
        raise SgddError(f"cache {cache_dir} does not fit {what}: " + "; ".join(problems))
    check_identity(meta, data.identity, cache_dir, what, allow_foreign)


# --------------------------------------------------------------------------------------------
# sampling order
# --------------------------------------------------------------------------------------------
class EpochSampler:
    """Global micro-batches of sample indices in a shuffled order per epoch, epoch after epoch
    (infinite). Every rank draws the same order; each takes its share with ``ddp.shard``.

    The last micro-batch of an epoch may be smaller; nothing is dropped. The state is the epoch,
    the position in its order and the generator state the order was drawn from.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        assert n > 0 and batch_size > 0
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.pos = 0, 0
        self._draw_order()

    def _draw_order(self) -> None:
        self._epoch_rng = self.generator.get_state()
        self.order = torch.randperm(self.n, generator=self.generator)  # [N]

    def next_batch(self) -> torch.Tensor:
        """Indices [b] with b <= batch_size."""
        if self.pos >= self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._draw_order()
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += idx.numel()
        return idx

    def state_dict(self) -> dict:
        return {"n": self.n, "epoch": self.epoch, "pos": self.pos, "epoch_rng": self._epoch_rng}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise SgddError(f"the training split now has {self.n} usable samples, the checkpoint was written with "
                            f"{state['n']}; resume with the same --shards and max_train_samples")
        self.generator.set_state(state["epoch_rng"])
        self._draw_order()
        self.epoch, self.pos = state["epoch"], state["pos"]


def length_batches(order: torch.Tensor, lengths: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The indices ``order`` grouped by ``lengths[index]`` (a stable sort: within a length they keep
    their order), each group cut into batches of at most batch_size."""
    grouped = order[torch.sort(lengths[order], stable=True).indices]
    sizes = torch.unique_consecutive(lengths[grouped], return_counts=True)[1].tolist()
    return [b for group in grouped.split(sizes) for b in group.split(batch_size)]


class LengthSampler(EpochSampler):
    """Like :class:`EpochSampler`, but every micro-batch holds sentences of one length, so no
    padding is computed. Each epoch shuffles the rows, groups them by length (a stable sort keeps
    the shuffle inside a group), cuts each group into batches and shuffles the batches."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int):
        self.lengths = lengths
        super().__init__(lengths.numel(), batch_size, seed)

    def _draw_order(self) -> None:
        self._epoch_rng = self.generator.get_state()
        perm = torch.randperm(self.n, generator=self.generator)  # [N]
        batches = length_batches(perm, self.lengths, self.batch_size)
        self.batches = [batches[i] for i in torch.randperm(len(batches), generator=self.generator).tolist()]
        self.order = torch.cat(self.batches)

    def next_batch(self) -> torch.Tensor:
        """Indices [b] of sentences of one length, b <= batch_size (``pos`` counts rows)."""
        if self.pos >= self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._draw_order()
        done, k = 0, 0
        while done < self.pos:  # the batch that starts at row pos
            done += self.batches[k].numel()
            k += 1
        idx = self.batches[k]
        self.pos += idx.numel()
        return idx


def make_sampler(cfg: TrainConfig, view, world: int) -> EpochSampler:
    """Global micro-batches of batch_size x processes samples: padded, or one length per batch."""
    size = cfg.optim.batch_size * world
    if cfg.batching == "by_length":
        return LengthSampler(view.lengths, size, cfg.seed)
    return EpochSampler(len(view), size, cfg.seed)


# --------------------------------------------------------------------------------------------
# noise and loss
# --------------------------------------------------------------------------------------------
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
                          dcfg: DiffusionConfig, given: int = 0, lengths: torch.Tensor | None = None) -> LossParts:
    """The weighted masked-diffusion loss of clean blocks x0 [B, L] conditioned on z [B, D].
    Only masked positions with a real label (not ``IGNORE_INDEX``) are scored; the first
    ``given`` positions are always visible. With a length head, its cross-entropy against
    ``lengths`` [B] is added (weighted by ``LENGTH_LOSS_WEIGHT``)."""
    L = x0.shape[1]
    schedule = get_schedule(dcfg.schedule, dcfg.kappa)
    # 1. forward process: x_t [B, L]; scored [B, L] = masked and labelled (noise drawn for max_len)
    x_t, scored = apply_mask(x0, noise.t, noise.u[:, :L], schedule, model.mask_id, given)
    masked = scored | (x0 == IGNORE_INDEX)  # [B, L] every mask token of the input
    # 2. hidden states of every position: [B, L, d]
    hidden = model(x_t, noise.t, z, noise.drop)
    # 3. logits only where the loss needs them: [M, V]
    logits = model.logits(hidden[scored]).float()
    target = x0[scored]  # [M]
    # 4. cross-entropy per scored token: [M]
    ce = F.cross_entropy(logits, target, reduction="none")
    # 5. the loss weight's per-token loss: [M]
    cart_p = DEFAULT_CART_P if dcfg.cart_p is None else dcfg.cart_p
    tok = weighted_token_loss(dcfg.loss_weight, TokenLossInputs(ce, noise.t, masked, scored, schedule, cart_p))
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


# --------------------------------------------------------------------------------------------
# model, optimizer, schedule
# --------------------------------------------------------------------------------------------
def resolve_decoder(cfg: TrainConfig, data: TrainData) -> DecoderConfig:
    """The decoder config with what the cache decides filled in: d_model (null = the cache's
    hidden size; a pretrained body's own size and heads) and the block length (the next-block
    view's block_length)."""
    if data.body is not None:
        body_config = data.body[0]
        d = int(body_config["hidden_size"])
        if cfg.model.d_model not in (None, d):
            raise SgddError(f"model.d_model={cfg.model.d_model}: a body from the encoder has its hidden size {d} "
                            "(set model.d_model null)")
        return dataclasses.replace(cfg.model, d_model=d, n_heads=int(body_config["num_attention_heads"]),
                                   max_len=data.train.length)
    d = cfg.model.d_model if cfg.model.d_model is not None else data.hidden_size
    if d % cfg.model.n_heads or (d // cfg.model.n_heads) % 2:
        source = " (null: the cache's hidden size)" if cfg.model.d_model is None else ""
        raise SgddError(f"model.d_model {d}{source} must split into model.n_heads={cfg.model.n_heads} "
                        "heads of an even size (RoPE)")
    length = data.train.length
    if cfg.given and (data.view != "next_block" or cfg.given >= length):
        raise SgddError(f"given={cfg.given} needs the next_block view with block_length > {cfg.given} "
                        f"(here: the {data.view} view, {length} tokens)")
    if data.view == "next_block" and cfg.model.max_len not in (length, DecoderConfig().max_len):
        say(f"next_block view: the decoder's block is block_length={length} tokens (model.max_len is for sentences)")
    return dataclasses.replace(cfg.model, d_model=d, max_len=length)


def build_model(cfg: TrainConfig, data: TrainData) -> Decoder:
    """A freshly initialised decoder (seeded) with the cache's embeddings (and LM head) copied in."""
    seed_everything(cfg.seed)
    if data.body is not None:  # the encoder's own layers as the body
        body_config, body_weights = data.body
        model = BodyDecoder(resolve_decoder(cfg, data), data.vocab_size, data.cond_dim, data.embeddings.shape[1],
                            data.special_ids["mask_id"], body_config)
        model.load_encoder(body_weights)
        return model
    model = Decoder(resolve_decoder(cfg, data), data.vocab_size, data.cond_dim, data.embeddings.shape[1],
                    data.special_ids["mask_id"])
    model.load_embeddings(data.embeddings)
    if data.lm_head is not None and not model.cfg.tie_output:
        model.load_output(data.lm_head)
    elif data.lm_head is not None and not data.info.get("tied_lm_head", True):
        say("model.tie_output is true: the output layer is tied to the input embeddings, the base model's "
            "separate LM head is not used (set model.tie_output false to start from it)")
    return model


def compile_model(model: nn.Module) -> None:
    """Compile the decoder's forward in place (state-dict keys unchanged); shapes vary with the
    batch's length, so they are compiled as dynamic."""
    model.compile(dynamic=True)


def param_groups(model: nn.Module, ocfg: OptimConfig) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, (output) embeddings or the null
    condition. The pretrained body (``body.*``) learns at ``body_lr``, the new weights at ``lr``."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    embedding_params |= {id(p) for n, p in model.named_parameters() if n == "out_emb"}
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = p.ndim >= 2 and id(p) not in embedding_params
        groups.setdefault((name.startswith(BODY_PREFIX), not decays), []).append(p)
    body_lr = ocfg.lr if ocfg.body_lr is None else ocfg.body_lr
    return [{"params": params, "weight_decay": 0.0 if no_decay else ocfg.weight_decay, "lr": body_lr if body else ocfg.lr}
            for (body, no_decay), params in sorted(groups.items(), key=lambda kv: kv[0])]


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float,
              time_progress: float | None = None) -> float:
    """Share of the peak LR for optimizer step ``step`` (0-based): linear warmup reaching the peak
    at step warmup_steps - 1, then cosine decay to ``min_lr_ratio`` at step ``max_steps`` or, under
    a time budget, as ``time_progress`` (share of the budget spent) reaches 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if time_progress is not None:
        progress = max(progress, min(1.0, time_progress))  # whichever limit comes first
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Clock:
    """Seconds this run has trained (a resumed run counts its earlier ones) against ``optim.max_minutes``."""

    budget_s: float | None = None
    spent_s: float = 0.0

    def progress(self) -> float | None:
        return None if self.budget_s is None else self.spent_s / self.budget_s

    @property
    def out(self) -> bool:
        return self.budget_s is not None and self.spent_s >= self.budget_s


def build_optimizer(model: nn.Module, ocfg: OptimConfig, clock: Clock | None = None
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its LR schedule, stepped once per optimizer step (never per micro-batch); under a
    time budget the decay follows ``clock``."""
    optimizer = torch.optim.AdamW(param_groups(model, ocfg), lr=ocfg.lr, betas=(ocfg.beta1, ocfg.beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, ocfg.warmup_steps, ocfg.max_steps, ocfg.min_lr_ratio,
                                       None if clock is None else clock.progress()))
    return optimizer, scheduler


# --------------------------------------------------------------------------------------------
# training state, one optimizer step, validation
# --------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """What changes while training; all of it goes into the checkpoint."""

    model: Decoder
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    sampler: EpochSampler
    noise_rng: torch.Generator
    ema: EMA | None = None
    dist: DistInfo = field(default_factory=DistInfo)
    clock: Clock = field(default_factory=Clock)
    step: int = 0
    best_val: float = math.inf
    wrapped: nn.Module | None = None  # the model in DistributedDataParallel under torchrun, else None


def new_state(model: Decoder, cfg: TrainConfig, data: TrainData, prec: Precision, device: torch.device,
              dist: DistInfo = DistInfo()) -> TrainState:
    clock = Clock(None if cfg.optim.max_minutes is None else 60.0 * cfg.optim.max_minutes)
    optimizer, scheduler = build_optimizer(model, cfg.optim, clock)
    return TrainState(
        model=model, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=prec.needs_scaler),
        sampler=make_sampler(cfg, data.train, dist.world),
        noise_rng=torch.Generator().manual_seed(cfg.seed + NOISE_SEED_OFFSET),
        ema=EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None,
        dist=dist,
        clock=clock,
    )


@dataclass
class StepStats:
    loss: torch.Tensor  # the step's loss (weighted, averaged over its samples)
    ce_sum: torch.Tensor
    correct: torch.Tensor
    n_masked: torch.Tensor
    samples: int  # global samples in the step
    lr: float
    grad_norm: torch.Tensor | None
    data_s: float = 0.0  # seconds this process spent getting its batches
    length_acc: torch.Tensor | None = None  # share of sentences whose length head was right


def train_step(state: TrainState, view, cfg: TrainConfig, prec: Precision, device: torch.device) -> StepStats:
    """One optimizer step over exactly ``grad_accum`` global micro-batches."""
    model, ocfg, dist = state.model, cfg.optim, state.dist
    net = state.wrapped if state.wrapped is not None else model  # forward/backward through DDP
    model.train()
    # 1. the step's samples: grad_accum global micro-batches of sample indices
    batches = [state.sampler.next_batch() for _ in range(ocfg.grad_accum)]
    n = sum(b.numel() for b in batches)
    # 2. the forward-process noise of all n global samples at once: t [n], u [n, L], drop [n]
    noise = draw_noise(n, view.length, cfg.diffusion, cfg.model.cond_drop, state.noise_rng)
    # 3. this rank's share of each micro-batch; each backward carries world/n per sample (DDP
    #    averages over ranks); gradients are exchanged only after the last micro-batch
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # weighted loss, ce, correct, scored tokens, lengths right
    start, data_s = 0, 0.0
    for k, idx in enumerate(batches):
        mine = ddp.shard(idx.numel(), dist.rank, dist.world)
        rows = slice(start + mine.start, start + mine.stop)
        start += idx.numel()
        last = k == len(batches) - 1
        weight = dist.world / n
        if mine.stop == mine.start:
            if not (last and state.wrapped is not None):
                continue
            # no sample here, but every rank joins the step's gradient exchange: a zero-weighted one
            mine, rows, weight = slice(0, 1), slice(start - idx.numel(), start - idx.numel() + 1), 0.0
        began = time.perf_counter()
        batch = view.batch_unpadded(idx[mine]) if cfg.batching == "by_length" else view.batch(idx[mine])
        x0 = batch.x0.to(device, non_blocking=True)  # [b, L]
        z = batch.cond.to(device, non_blocking=True)  # [b, D]
        lengths = None if batch.lengths is None else batch.lengths.to(device)  # [b]
        data_s += time.perf_counter() - began
        sync = contextlib.nullcontext() if last or state.wrapped is None else net.no_sync()
        with sync:
            with prec.autocast():
                parts = masked_diffusion_loss(net, x0, z, noise.select(rows, device), cfg.diffusion, cfg.given,
                                              lengths)
            state.scaler.scale(parts.weighted * weight).backward()
        if weight:
            sums += torch.stack([parts.weighted.detach(), parts.ce_sum, parts.correct, parts.n_masked,
                                 parts.length_correct]).double()
    # 4. the step's statistics summed over ranks, then one clip and one optimizer step
    ddp.all_reduce_sum(dist, sums)
    lr = state.optimizer.param_groups[0]["lr"]
    grad_norm = None
    if ocfg.grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), ocfg.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    state.step += 1
    if state.ema is not None:
        state.ema.update(model)
    loss, ce_sum, correct, n_masked, length_correct = sums.unbind()
    length_acc = length_correct / n if getattr(model, "length_head", None) is not None else None
    return StepStats(loss / n, ce_sum, correct, n_masked, n, lr, grad_norm, data_s, length_acc)


@torch.no_grad()
def evaluate(model: Decoder, view, cfg: TrainConfig, prec: Precision, device: torch.device,
             dist: DistInfo = DistInfo()) -> dict:
    """The training loss on the first ``eval_batches`` micro-batches of ``view``, with the condition
    always kept and noise from a generator seeded by ``cfg.seed`` (the same at every validation).
    Under torchrun each rank scores its share of every batch and the sums are added."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(cfg.seed)
    bs = cfg.optim.batch_size * dist.world
    n = min(len(view), cfg.eval_batches * bs)
    sums = torch.zeros(5, dtype=torch.float64)
    by_length = cfg.batching == "by_length"
    for idx in validation_batches(view, n, bs, by_length):
        t, u = sample_noise(idx.numel(), view.length, cfg.diffusion.time_eps, generator)
        mine = ddp.shard(idx.numel(), dist.rank, dist.world)
        if mine.stop == mine.start:
            continue
        batch = view.batch_unpadded(idx[mine]) if by_length else view.batch(idx[mine])
        noise = StepNoise(t[mine].to(device), u[mine].to(device), None)
        lengths = None if batch.lengths is None else batch.lengths.to(device)
        with prec.autocast():
            parts = masked_diffusion_loss(model, batch.x0.to(device), batch.cond.to(device), noise, cfg.diffusion,
                                          cfg.given, lengths)
        sums += torch.tensor([parts.weighted.item(), parts.ce_sum.item(), parts.correct.item(), parts.n_masked.item(),
                              parts.length_correct.item()], dtype=torch.float64)
    ddp.all_reduce_sum(dist, sums)
    model.train(was_training)
    weighted, ce_sum, correct, n_masked, length_correct = sums.tolist()
    out = {"val_loss": weighted / n, "val_ce": ce_sum / max(1, n_masked), "val_acc": correct / max(1, n_masked)}
    if model.length_head is not None and view.name == "sentence":
        out["val_length_acc"] = length_correct / n
    return out


def validation_batches(view, n: int, batch_size: int, by_length: bool) -> list[torch.Tensor]:
    """The first n samples in batches of batch_size; ``by_length``: grouped by sentence length
    first (each batch one length, as training sees them)."""
    idx = torch.arange(n)
    return length_batches(idx, view.lengths, batch_size) if by_length else list(idx.split(batch_size))


class Meter:
    """Step statistics accumulated between two log lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps, self.samples, self.seconds, self.data_s = 0, 0, 0.0, 0.0
        self.loss = self.ce_sum = self.correct = self.n_masked = 0.0
        self.grad_norm: float | None = None
        self.lr = 0.0
        self.length_acc: float | None = None

    def add(self, s: StepStats, seconds: float) -> None:
        self.steps += 1
        self.samples += s.samples
        self.seconds += seconds
        self.data_s += s.data_s
        self.loss += s.loss.item()
        self.ce_sum += s.ce_sum.item()
        self.correct += s.correct.item()
        self.n_masked += s.n_masked.item()
        self.lr = s.lr
        self.grad_norm = None if s.grad_norm is None else s.grad_norm.item()
        if s.length_acc is not None:
            self.length_acc = (self.length_acc or 0.0) + s.length_acc.item()

    def row(self, step: int, epoch: int, length: int, elapsed: float) -> dict:
        """The log line: means over the steps since the last one (lr and grad_norm of the last step).
        ``data_share``: the share of step time rank 0 spent getting its batches."""
        masked = max(1.0, self.n_masked)
        return {"step": step, "epoch": epoch, "lr": self.lr, "loss": self.loss / max(1, self.steps),
                "masked_ce": self.ce_sum / masked, "masked_acc": self.correct / masked,
                "grad_norm": self.grad_norm, "tokens_per_s": self.samples * length / max(self.seconds, 1e-9),
                "data_share": self.data_s / max(self.seconds, 1e-9), "elapsed": elapsed} | (
                {} if self.length_acc is None else {"length_acc": self.length_acc / max(1, self.steps)})


# --------------------------------------------------------------------------------------------
# run directory, checkpoints, metrics
# --------------------------------------------------------------------------------------------
def run_dir_for(cfg: TrainConfig) -> Path:
    """``cfg.out``, else ``runs/<cfg.name>``, else ``runs/<cache directory name>``."""
    if cfg.out:
        return Path(cfg.out)
    return Path("runs") / (cfg.name or Path(cfg.shards).resolve().name)


def checkpoint_dir(run_dir: Path, which: str) -> Path:
    return run_dir / CHECKPOINTS / which


def recover_checkpoint(directory: Path) -> None:
    """Repair what a kill in the middle of ``_swap_in`` leaves: when ``directory`` is missing but
    an old copy was moved aside, the staged copy of the same process is complete (it is renamed
    only after fsync) and takes its place; otherwise the old copy goes back. Leftovers of
    earlier saves are removed."""
    parent = directory.parent
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f".{directory.name}.old-*"))
    if not directory.exists():
        for old in olds:
            staged = parent / f".{directory.name}.stage-{old.name.rsplit('-', 1)[1]}"
            os.rename(staged if staged.is_dir() else old, directory)
            say(f"repaired {directory} after an interrupted save")
            break
    if directory.exists():
        for leftover in [*parent.glob(f".{directory.name}.old-*"), *parent.glob(f".{directory.name}.stage-*")]:
            shutil.rmtree(leftover, ignore_errors=True)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Never overwrite a run silently; never pretend to resume one that has no checkpoint."""
    last = checkpoint_dir(run_dir, LAST)
    has_checkpoint = any((checkpoint_dir(run_dir, w) / MODEL_FILE).is_file() for w in (LAST, BEST))
    if has_checkpoint and not resume:
        raise SgddError(f"{run_dir} already holds a checkpoint: pass --resume to continue it, "
                        "or another --out/--name for a new run")
    if resume and not (last / MODEL_FILE).is_file():
        raise SgddError(f"cannot resume: no checkpoint in {last} (train without --resume first)")
    if resume and not (last / TRAINER_STATE).is_file():
        raise SgddError(f"cannot resume: {last} has no {TRAINER_STATE}")


def config_differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every leaf that differs, except the fields a resume may change."""
    return diff_dicts(old, new, frozenset(RESUME_MAY_CHANGE))


def check_config_unchanged(run_dir: Path, cfg: TrainConfig) -> None:
    """A resumed run must compute what the run it continues computed: refuse any change but
    those in ``RESUME_MAY_CHANGE``, listing every difference."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return  # a run written before config.yaml existed: the checkpoint checks still apply
    diff = config_differences(to_dict(load_yaml(path, TrainConfig)), to_dict(cfg))
    if diff:
        raise SgddError(f"cannot resume {run_dir} with a changed config ({'; '.join(diff)}); only "
                        f"{', '.join(RESUME_MAY_CHANGE)} may change (start a new run with --init-from to change more)")


def _swap_in(staged: Path, target: Path) -> None:
    """Replace directory ``target`` by ``staged`` (two renames; the old one is removed after)."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
        os.rename(staged, target)
        shutil.rmtree(old)
    else:
        os.rename(staged, target)


def write_checkpoint(directory: Path, model: Decoder, meta: dict, trainer_state: dict | None = None,
                     ema: EMA | None = None) -> Path:
    """Model (EMA, trainer state) written complete under a temporary name, then renamed into place."""
    staged = directory.with_name(f".{directory.name}.stage-{os.getpid()}")
    if staged.exists():
        shutil.rmtree(staged)
    save_model(staged, model, meta, None if ema is None else ema.state_dict(), label=directory)
    try:
        if trainer_state is not None:
            torch.save(trainer_state, staged / TRAINER_STATE)
        fsync_tree(staged)
    except WRITE_ERRORS as e:  # a full disk: nothing half-written stays behind
        shutil.rmtree(staged, ignore_errors=True)
        raise write_failed(directory, e) from None
    _swap_in(staged, directory)
    return directory


def trainer_state(state: TrainState) -> dict:
    """Everything but the weights that a resumed run needs to continue exactly. Collective under
    torchrun (every rank's RNG state is gathered): call it on every rank."""
    rng = ddp.gather_objects(state.dist, {"torch": torch.get_rng_state(),
                                          "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []})
    return {
        "version": TRAINER_STATE_VERSION,
        "step": state.step,
        "best_val": state.best_val,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "sampler": state.sampler.state_dict(),
        "noise_rng": state.noise_rng.get_state(),
        "rng_per_rank": rng,
        "world": state.dist.world,
        "ema_updates": None if state.ema is None else state.ema.updates,
        "train_seconds": state.clock.spent_s,
    }


def check_compatible(meta: dict, model: Decoder, where: Path) -> None:
    """A checkpoint resumes only into a decoder of the same shape, on a cache of the same sizes."""
    problems = []
    for key, now in (("vocab_size", model.vocab_size), ("cond_dim", model.cond_dim),
                     ("embed_dim", model.tok_emb.embedding_dim), ("mask_id", model.mask_id)):
        if meta.get(key) != now:
            problems.append(f"{key} {meta.get(key)} in the checkpoint, {now} now")
    saved = dataclasses.asdict(from_meta_decoder(meta))
    for key, now in dataclasses.asdict(model.cfg).items():
        if saved.get(key) != now:
            problems.append(f"model.{key} {saved.get(key)} in the checkpoint, {now} now")
    if problems:
        raise SgddError(f"cannot resume {where}: " + "; ".join(problems))


def from_meta_decoder(meta: dict) -> DecoderConfig:
    """The decoder config of a checkpoint (fields it predates take their defaults)."""
    return from_dict(DecoderConfig, meta["decoder"])


def restore(state: TrainState, run_dir: Path) -> None:
    """Load weights, EMA and trainer state from ``checkpoints/last`` into ``state``. A damaged
    file is refused; resume never falls back to ``best`` on its own (the step, optimizer and
    data order of ``best`` are not saved), the message says how to start from it instead."""
    last = checkpoint_dir(run_dir, LAST)
    try:
        saved, meta = load_model(last, prefer_ema=False)
        ts = load_trainer_state(last / TRAINER_STATE)
    except SgddError as e:
        raise SgddError(f"cannot resume: {e}; to continue from checkpoints/{BEST} instead, start a new run "
                        f"with --init-from {checkpoint_dir(run_dir, BEST)}") from None
    check_compatible(meta, state.model, last)
    state.model.load_state_dict(saved.state_dict())
    if ts.get("version") not in (1, TRAINER_STATE_VERSION):
        raise SgddError(f"{last / TRAINER_STATE} has version {ts.get('version')!r}; this sgdd reads 1 and {TRAINER_STATE_VERSION}")
    state.optimizer.load_state_dict(ts["optimizer"])
    state.scheduler.load_state_dict(ts["scheduler"])
    state.scaler.load_state_dict(ts["scaler"])
    state.sampler.load_state_dict(ts["sampler"])
    state.noise_rng.set_state(ts["noise_rng"])
    if ts.get("world", 1) != state.dist.world:
        raise SgddError(f"{last} was written by a run of {ts.get('world', 1)} processes, this one has "
                        f"{state.dist.world}: the global batch would change; resume with as many processes "
                        "(or start a new run with --init-from)")
    restore_rng(ts, state.dist)
    restore_ema(state, last, ts.get("ema_updates"))
    state.step, state.best_val = ts["step"], ts["best_val"]
    state.clock.spent_s = float(ts.get("train_seconds", 0.0))


def restore_rng(ts: dict, dist: DistInfo) -> None:
    """This rank's torch (and CUDA) RNG state from the checkpoint."""
    if "rng_per_rank" not in ts:  # version 1: one process
        torch.set_rng_state(ts["torch_rng"])
        return
    mine = ts["rng_per_rank"][dist.rank]
    torch.set_rng_state(mine["torch"])
    if mine["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine["cuda"])


def restore_ema(state: TrainState, last: Path, updates: int | None) -> None:
    weights = load_ema_weights(last)
    if state.ema is None:
        if weights is not None:
            raise SgddError(f"{last} holds EMA weights but ema_decay is 0 now")
        return
    if weights is None or updates is None:
        raise SgddError(f"{last} has no EMA weights but ema_decay is {state.ema.decay} now")
    state.ema.load_state_dict(weights, updates)


def resolve_init_from(path: str) -> Path:
    """A run directory (its best checkpoint, else last) or a checkpoint directory."""
    p = Path(path)
    if (p / MODEL_META).is_file():
        return p
    for which in (BEST, LAST):
        if (checkpoint_dir(p, which) / MODEL_META).is_file():
            return checkpoint_dir(p, which)
    raise SgddError(f"--init-from {path}: neither a checkpoint directory nor a run with checkpoints/{BEST} or {LAST}")


def init_from(model: Decoder, cfg: TrainConfig, data: TrainData) -> None:
    """Phase 2: copy the weights (EMA ones when saved) of another run into ``model``; the
    decoders must agree on everything but ``INIT_MAY_CHANGE``, the caches on sizes and tokenizer."""
    source = resolve_init_from(cfg.init_from)
    meta = read_meta(source)
    check_cache_fits(meta, data, cfg.shards, f"the run to start from ({source})", cfg.allow_foreign_cache)
    saved = dataclasses.asdict(from_meta_decoder(meta))
    diff = [f"model.{k}: {saved.get(k)!r} there, {v!r} here" for k, v in dataclasses.asdict(model.cfg).items()
            if k not in INIT_MAY_CHANGE and saved.get(k) != v]
    if diff:
        raise SgddError(f"--init-from {source}: the decoder differs ({'; '.join(diff)})")
    loaded, loaded_meta = load_model(source)
    model.load_state_dict(loaded.state_dict())
    say(f"initialised from {source} ({loaded_meta['weights']} weights, step {meta.get('step')})")


def _json_safe(row: dict) -> dict:
    """Non-finite floats become null, so that metrics.jsonl is strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(_json_safe(row)) + "\n")


def _parse(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:  # a line cut short by a kill
        return None


def last_validation(path: Path, step: int) -> int | None:
    """``step`` when metrics.jsonl already holds a validation line for it (the checkpoint of that
    step was saved after its validation), else None."""
    if not path.is_file():
        return None
    rows = (_parse(line) for line in path.read_text().splitlines() if line.strip())
    return step if any(r is not None and r.get("step") == step and "val_loss" in r for r in rows) else None


def reset_metrics(path: Path, keep_until: int | None) -> None:
    """A new run starts an empty file; a resumed one drops the lines written after its checkpoint
    (and a last line cut short by a kill)."""
    if keep_until is None or not path.is_file():
        path.write_text("")
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and (row := _parse(line)) is not None and row["step"] <= keep_until]
    path.write_text("".join(line + "\n" for line in kept))


def write_config(cfg: TrainConfig, path: Path) -> None:
    """config.yaml, atomically (a kill never leaves half a file for the next resume to read)."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))  # no temp file stays on failure


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    model: Decoder
    step: int
    best_val: float
    wall_s: float
    metrics: list[dict] = field(default_factory=list)
    ema_model: Decoder | None = None


def pick_train_device(cfg: TrainConfig) -> torch.device:
    """cfg.device; under torchrun on GPUs each process takes the GPU of its local rank."""
    device = pick_device(cfg.device)
    if device.type == "cuda" and ddp.launched_world() > 1 and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


class Trainer:
    """One training run: the loop and what it does every log_every / eval_every / save_every steps."""

    def __init__(self, cfg: TrainConfig):
        global _MAIN
        self.cfg = cfg
        self.device = pick_train_device(cfg)
        self.dist = ddp.init_distributed(self.device)
        _MAIN = self.dist.is_main
        self.run_dir = run_dir_for(cfg)
        if self.dist.is_main:
            for which in (LAST, BEST):
                recover_checkpoint(checkpoint_dir(self.run_dir, which))
        ddp.barrier(self.dist)
        check_run_dir(self.run_dir, cfg.resume)
        if cfg.resume:
            check_config_unchanged(self.run_dir, cfg)
        self.prec = pick_precision(cfg.precision, self.device)
        say(f"training on {self.device}, {self.prec.describe()}")
        self.data = load_data(cfg)
        model = build_model(cfg, self.data)
        if cfg.resume:
            last = checkpoint_dir(self.run_dir, LAST)
            check_cache_fits(read_meta(last), self.data, cfg.shards, f"the run to resume ({last})", cfg.allow_foreign_cache)
            if cfg.init_from:
                say("resuming: the weights come from checkpoints/last, init_from applies to a new run only")
        elif cfg.init_from:
            init_from(model, cfg, self.data)
        if self.dist.rank > 0:  # dropout differs per rank; weights and data order do not
            torch.manual_seed(cfg.seed + RANK_SEED_OFFSET * self.dist.rank)
        self.state = new_state(model.to(self.device), cfg, self.data, self.prec, self.device, self.dist)
        if cfg.compile:
            compile_model(self.state.model)
        validated_at = None
        if cfg.resume:
            restore(self.state, self.run_dir)
            say(f"resumed {self.run_dir} at step {self.state.step}")
            validated_at = last_validation(self.run_dir / METRICS_FILE, self.state.step)
        self.state.wrapped = ddp.wrap(self.dist, self.state.model, self.device)  # rank 0's weights everywhere
        if self.state.wrapped is not None:
            say(f"DistributedDataParallel over {self.dist.world} processes ({torch.distributed.get_backend()})")
        ddp.barrier(self.dist)  # every rank has read the run directory before rank 0 writes to it
        self.metrics_path = self.run_dir / METRICS_FILE
        self.trackers: list[Tracker] = []
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(cfg, self.run_dir / CONFIG_FILE)
            copy_encoder_files(open_cache(cfg.shards), self.run_dir)  # the run decodes without its cache
            reset_metrics(self.metrics_path, self.state.step if cfg.resume else None)
            self.trackers = open_trackers(cfg.report_to, self.run_dir, self.run_dir.name, to_dict(cfg))
        self.saved_at = self.state.step if cfg.resume else None
        self.evaluated_at: int | None = validated_at  # a finished run resumed is not validated twice
        self.started = time.perf_counter()

    # -- what happens between steps -------------------------------------------------------------
    def meta(self) -> dict:
        return model_meta(self.state.model, self.cfg.shards, self.data.special_ids) | {
            "step": self.state.step, "view": self.data.view, "tokenizer_sha256": self.data.tokenizer_sha256,
            "ema_decay": self.cfg.ema_decay or None, "encoder": self.data.identity, "batching": self.cfg.batching,
            "diffusion": {"schedule": self.cfg.diffusion.schedule, "kappa": self.cfg.diffusion.kappa}} | (
            {"block_length": self.data.train.length, "block_tail": self.cfg.block_tail, "given": self.cfg.given,
             "consistent_labels": self.data.train.consistent}
            if self.data.view == "next_block" else {})

    def log(self, row: dict) -> None:
        if not self.dist.is_main:
            return
        append_metrics(self.metrics_path, row)
        for tracker in self.trackers:
            tracker.log(_json_safe(row), row["step"])

    def write(self, which: str, with_state: dict | None = None) -> None:
        if self.dist.is_main:
            write_checkpoint(checkpoint_dir(self.run_dir, which), self.state.model, self.meta(), with_state,
                             self.state.ema)

    def save_last(self) -> None:
        """checkpoints/last with trainer state (and best = last when there is no validation)."""
        self.write(LAST, trainer_state(self.state))  # collective: every rank gathers RNG states
        if self.data.val is None:
            self.write(BEST)
        self.saved_at = self.state.step

    def eval_model(self) -> Decoder:
        """The weights evaluation uses: the EMA ones when kept."""
        ema = self.state.ema
        return self.state.model if ema is None else ema.averaged_model(self.state.model)

    def validate(self) -> dict:
        """Validation loss (of the EMA weights when kept); a new lowest one writes checkpoints/best."""
        assert self.data.val is not None
        scores = evaluate(self.eval_model(), self.data.val, self.cfg, self.prec, self.device, self.dist)
        row = {"step": self.state.step, **scores, "elapsed": time.perf_counter() - self.started}
        if self.state.ema is not None:
            row["weights"] = "ema"
        if row["val_loss"] < self.state.best_val:
            self.state.best_val = row["val_loss"]
            self.write(BEST)
            row["best"] = True
        self.log(row)
        self.evaluated_at = self.state.step
        return row

    # -- the loop -------------------------------------------------------------------------------
    def fit(self, stop_at: int | None = None) -> TrainResult:
        cfg, state = self.cfg, self.state
        max_steps = cfg.optim.max_steps
        limit = max_steps if stop_at is None else min(stop_at, max_steps)
        meter = Meter()
        bar = progress(total=max_steps, initial=state.step, desc="train", unit="step", main=self.dist.is_main,
                       logger="train")
        try:
            while state.step < limit and not state.clock.out:
                iteration = time.perf_counter()
                began = time.perf_counter()
                stats = train_step(state, self.data.train, cfg, self.prec, self.device)
                meter.add(stats, time.perf_counter() - began)
                bar.update(1)
                if _due(state.step, cfg.log_every) or state.step == max_steps:
                    row = meter.row(state.step, state.sampler.epoch, self.data.train.length,
                                    time.perf_counter() - self.started)
                    self.log(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['masked_acc']:.3f}")
                    meter.reset()
                if self.data.val is not None and _due(state.step, cfg.eval_every):
                    self.validate()
                if _due(state.step, cfg.save_every):
                    self.save_last()
                self.tick(time.perf_counter() - iteration)
            bar.close()
            if state.clock.out and state.step < max_steps:
                say(f"time budget of {cfg.optim.max_minutes:g} minutes spent at step {state.step}")
            if state.step < max_steps and not state.clock.out:  # stopped by stop_at: as if killed right after a save
                if self.saved_at != state.step:
                    self.save_last()
                say(f"stopped at step {state.step} of {max_steps}; continue with --resume")
            else:
                self.finish()
            ddp.barrier(self.dist)
            return self.result()
        finally:
            for tracker in self.trackers:
                tracker.close()

    def tick(self, seconds: float) -> None:
        """Count one loop iteration against the time budget; every rank takes rank 0's clock, so
        they agree on the learning rate and on when to stop."""
        if self.state.clock.budget_s is None:
            return
        spent = torch.tensor([self.state.clock.spent_s + seconds if self.dist.is_main else 0.0], dtype=torch.float64)
        ddp.all_reduce_sum(self.dist, spent)
        self.state.clock.spent_s = float(spent)

    def finish(self) -> None:
        """Final validation and checkpoint; make sure checkpoints/best exists."""
        if self.data.val is not None and self.evaluated_at != self.state.step:
            self.validate()
        if self.saved_at != self.state.step or not (checkpoint_dir(self.run_dir, LAST) / MODEL_FILE).is_file():
            self.save_last()
        if self.dist.is_main and not (checkpoint_dir(self.run_dir, BEST) / MODEL_FILE).is_file():
            say("no finite validation loss: best checkpoint = last")
            self.write(BEST)
        best = f"{self.state.best_val:.4f}" if math.isfinite(self.state.best_val) else "n/a"
        say(f"{self.state.model.num_params() / 1e6:.2f}M parameters, {self.state.step} steps in "
            f"{time.perf_counter() - self.started:.1f}s, best val loss {best} -> {self.run_dir}")

    def result(self) -> TrainResult:
        rows = []
        if self.metrics_path.is_file():
            rows = [json.loads(x) for x in self.metrics_path.read_text().splitlines() if x.strip()]
        ema_model = None if self.state.ema is None else self.eval_model()
        return TrainResult(self.run_dir, self.state.model, self.state.step, self.state.best_val,
                           time.perf_counter() - self.started, rows, ema_model)


def _due(step: int, every: int) -> bool:
    """Every N optimizer steps; 0 = never during the run (only at the end)."""
    return every > 0 and step % every == 0


def fit(cfg: TrainConfig, stop_at: int | None = None) -> TrainResult:
    """Train (or resume) and return the run directory, the trained model and the metrics.

    ``stop_at`` (tests, and anyone who wants to train in slices) stops after that optimizer step
    with ``checkpoints/last`` written, exactly as if the run had been killed right after a save;
    the LR schedule still spans ``cfg.optim.max_steps``. Continue with ``cfg.resume = True``.
    """
    trainer = Trainer(cfg)
    try:
        return trainer.fit(stop_at)
    finally:
        ddp.shutdown(trainer.dist)


def run(cfg: TrainConfig, stop_at: int | None = None) -> Path:
    """Stage 2 entry: train the decoder described by ``cfg``; returns the run directory."""
    default_threads()
    return fit(cfg, stop_at).run_dir
