"""The decoder training starts from: its config with what the cache decides filled in, a fresh
(seeded) model with the cache's embeddings, LM head or encoder body copied in, or the weights of
another run (``--init-from``); and compiling it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from sgdd.errors import SgddError
from sgdd.log import get_logger
from sgdd.models.body import BodyDecoder
from sgdd.models.checkpoint import BEST, LAST, MODEL_META, checkpoint_dir, decoder_config, load_model, read_meta
from sgdd.models.decoder import Decoder, DecoderConfig
from sgdd.runtime import seed_everything
from sgdd.stages.train.config import TrainConfig
from sgdd.stages.train.data import TrainData, check_cache_fits

# Decoder fields that may differ from the run --init-from starts from (they change no weight shape).
INIT_MAY_CHANGE = ("dropout", "cond_drop")

log = get_logger("train")


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
        log.info(f"next_block view: the decoder's block is block_length={length} tokens (model.max_len is for sentences)")
    return dataclasses.replace(cfg.model, d_model=d, max_len=length)


def corpus_vocabulary(data: TrainData) -> torch.Tensor:
    """``model.vocab: corpus``: the sorted ids of every target token of the training and
    validation splits (a sentence's tokens; an MTP head's labels) and every special token (the
    mask among them)."""
    specials = torch.tensor([i for i in data.special_ids.values() if i is not None])
    splits = [data.train] + ([] if data.val is None else [data.val])
    return torch.cat([s.token_ids() for s in splits] + [specials]).unique()  # sorted


def build_model(cfg: TrainConfig, data: TrainData) -> Decoder:
    """A freshly initialised decoder (seeded) with the cache's embeddings (and LM head) or encoder
    body copied in; with ``model.vocab: corpus`` its output covers the tokens of the training and
    validation splits only."""
    seed_everything(cfg.seed)
    vocab = corpus_vocabulary(data) if cfg.model.vocab == "corpus" else None
    sizes = (data.vocab_size, data.cond_dim, data.embeddings.shape[1], data.special_ids["mask_id"])
    out_vocab = None if vocab is None else len(vocab)
    if data.body is not None:  # the encoder's own layers as the body
        body_config, body_weights = data.body
        model = BodyDecoder(resolve_decoder(cfg, data), *sizes, body_config, out_vocab=out_vocab)
        model.load_encoder(body_weights)
    else:
        model = Decoder(resolve_decoder(cfg, data), *sizes, out_vocab=out_vocab)
        model.load_embeddings(data.embeddings)
        if data.lm_head is not None and not model.cfg.tie_output:
            model.load_output(data.lm_head)
        elif data.lm_head is not None and not data.info.get("tied_lm_head", True):
            log.info("model.tie_output is true: the output layer is tied to the input embeddings, the base model's "
                     "separate LM head is not used (set model.tie_output false to start from it)")
    if model.length_head is not None and model.length_head.norm is not None:  # model.length_input: standardized
        if data.view != "sentence":
            raise SgddError(f"model.length_input standardized is for the sentence view (this cache trains the "
                            f"{data.view} view)")
        model.length_head.norm.fit(data.train.vectors)
    if vocab is not None:
        model.set_vocab(vocab)
        log.info(f"model.vocab corpus: {len(vocab)} of {data.vocab_size} tokens in the output projection")
    return model


def compile_model(model: nn.Module) -> None:
    """Compile the decoder's forward in place (state-dict keys unchanged); shapes vary with the
    batch's length, so they are compiled as dynamic."""
    model.compile(dynamic=True)


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
    saved = dataclasses.asdict(decoder_config(meta))
    diff = [f"model.{k}: {saved.get(k)!r} there, {v!r} here" for k, v in dataclasses.asdict(model.cfg).items()
            if k not in INIT_MAY_CHANGE and saved.get(k) != v]
    if diff:
        raise SgddError(f"--init-from {source}: the decoder differs ({'; '.join(diff)})")
    loaded, loaded_meta = load_model(source)
    model.load_state_dict(loaded.state_dict())
    if model.out_vocab is not None:  # every token it is trained and validated on must be one it can write
        model.out_index(corpus_vocabulary(data))
    log.info(f"initialised from {source} ({loaded_meta['weights']} weights, step {meta.get('step')})")
