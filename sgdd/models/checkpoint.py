"""Decoder checkpoints: weights in safetensors, everything else in JSON (nothing is unpickled).

A checkpoint directory holds::

    model.safetensors   the trained weights
    ema.safetensors     the exponential moving average of the weights (only with ema_decay > 0);
                        same keys as model.safetensors
    model.json          what rebuilds the decoder (``decoder`` config, sizes, special ids, cache,
                        view, tokenizer hash, step)
    trainer.pt          (checkpoints/last only) optimizer, scheduler, RNG and data-order state

``load_model(dir)`` returns the EMA weights when the checkpoint has them (``prefer_ema=False``
for the raw weights); ``meta["weights"]`` says which were loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sgdd.models.body import BodyDecoder
from sgdd.models.decoder import Decoder
from sgdd.pipeline.config import DecoderConfig, from_dict
from sgdd.pipeline.errors import SgddError

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
MODEL_META = "model.json"


def model_meta(model: Decoder, cache_dir: str | Path, special_ids: dict) -> dict:
    """What is needed to rebuild the decoder and to find its cache and tokenizer again."""
    return {
        "decoder": {k: getattr(model.cfg, k) for k in model.cfg.__dataclass_fields__},
        "vocab_size": model.vocab_size,
        "cond_dim": model.cond_dim,
        "embed_dim": model.tok_emb.embedding_dim,
        "mask_id": model.mask_id,
        "special_ids": special_ids,
        "cache": str(Path(cache_dir).resolve()),
    } | ({"body_config": model.body_config} if isinstance(model, BodyDecoder) else {})


def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_model(directory: str | Path, model: Decoder, meta: dict,
               ema_weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model.safetensors`` (+ ``ema.safetensors``) + ``model.json`` into ``directory``
    atomically (temp dir + rename)."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(_cpu_state(model.state_dict()), str(tmp / MODEL_FILE))
    if ema_weights is not None:
        save_file(_cpu_state(ema_weights), str(tmp / EMA_FILE))
    (tmp / MODEL_META).write_text(json.dumps(meta, indent=2))
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.rename(directory, old)
        os.rename(tmp, directory)
        for p in old.iterdir():
            p.unlink()
        old.rmdir()
    else:
        os.rename(tmp, directory)
    return directory


def build_model(meta: dict) -> Decoder | BodyDecoder:
    """An untrained decoder of the checkpoint's architecture (a pretrained body's from its stored config)."""
    cfg = from_dict(DecoderConfig, meta["decoder"])
    sizes = (meta["vocab_size"], meta["cond_dim"], meta["embed_dim"], meta["mask_id"])
    if cfg.init_body == "encoder":
        if "body_config" not in meta:
            raise SgddError("the checkpoint's model.json lacks body_config (model.init_body: encoder)")
        return BodyDecoder(cfg, *sizes, meta["body_config"])
    return Decoder(cfg, *sizes)


def read_meta(directory: str | Path) -> dict:
    directory = Path(directory)
    if not (directory / MODEL_FILE).is_file() or not (directory / MODEL_META).is_file():
        raise SgddError(f"no checkpoint in {directory} (expected {MODEL_FILE} and {MODEL_META})")
    return json.loads((directory / MODEL_META).read_text())


def load_model(directory: str | Path, map_location: str | torch.device = "cpu",
               prefer_ema: bool = True) -> tuple[Decoder, dict]:
    """The decoder saved in ``directory`` and its meta. With ``prefer_ema`` (the default) the EMA
    weights are loaded when the checkpoint has them; ``meta["weights"]`` is "ema" or "model"."""
    directory = Path(directory)
    meta = read_meta(directory)
    model = build_model(meta)
    use_ema = prefer_ema and (directory / EMA_FILE).is_file()
    weights = load_file(str(directory / (EMA_FILE if use_ema else MODEL_FILE)), device=str(map_location))
    model.load_state_dict(weights)
    return model, {**meta, "weights": "ema" if use_ema else "model"}


def load_ema_weights(directory: str | Path) -> dict[str, torch.Tensor] | None:
    """The EMA weights of a checkpoint, or None when it has none."""
    path = Path(directory) / EMA_FILE
    return load_file(str(path)) if path.is_file() else None
