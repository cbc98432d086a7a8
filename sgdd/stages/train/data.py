"""What training reads from the cache: the training and validation views, the embedding matrix
(and LM head), the special ids and the encoder's identity; and the check that a cache fits a
checkpoint to resume or start from. The encoder itself is never loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file

from sgdd.cache.format import LM_HEAD_FILE, SPECIAL_KEYS
from sgdd.cache.identity import check_identity, encoder_identity
from sgdd.cache.reader import Cache, CacheSplit, open_cache
from sgdd.cache.views import check_view, next_block_view, sentence_view, view_for
from sgdd.errors import SgddError
from sgdd.log import get_logger
from sgdd.stages.train.config import TrainConfig


log = get_logger("train")


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
    needed = SPECIAL_KEYS if view == "sentence" else ("mask_id",)
    missing = [k for k in needed if info.get(k) is None]
    if missing:
        raise SgddError(f"the cache's encoder.json lacks {', '.join(missing)} (the {view} view needs them)")
    return {k: None if info.get(k) is None else int(info[k]) for k in SPECIAL_KEYS}


def build_view(cfg: TrainConfig, split: CacheSplit, view: str, ids: dict, max_rows: int | None):
    if view == "sentence":
        out = sentence_view(split, cfg.model.max_len, ids["pad_id"], max_rows)
        if out.dropped:
            log.info(f"left out {out.dropped} rows of {split.name} longer than model.max_len={cfg.model.max_len}")
        return out
    out = next_block_view(split, cfg.block_length, cfg.block_tail, max_rows, cfg.consistent_labels)
    if out.dropped:
        log.info(f"{out.dropped} windows of {split.name} are shorter than block_length={cfg.block_length} (no sample)")
    return out


def validation_view(cfg: TrainConfig, cache: Cache, view: str, ids: dict, train) -> object | None:
    if cfg.val_split is None or cfg.eval_batches == 0:
        log.info("no validation (val_split is null or eval_batches is 0): best checkpoint = last")
        return None
    if cfg.val_split not in cache.splits:
        log.info(f"cache has no split {cfg.val_split!r}: training without validation, best checkpoint = last")
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
