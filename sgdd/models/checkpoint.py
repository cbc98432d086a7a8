"""Decoder checkpoints: weights in safetensors, everything else in JSON (nothing is unpickled).

A run keeps its checkpoints in ``<run>/checkpoints/best`` and ``<run>/checkpoints/last``
(:func:`checkpoint_dir`). A checkpoint directory holds::

    model.safetensors   the trained weights
    ema.safetensors     the exponential moving average of the weights (only with ema_decay > 0);
                        same keys as model.safetensors
    model.json          what rebuilds the decoder (``decoder`` config, sizes, special ids, cache,
                        view, tokenizer hash, step)
    trainer.pt          (checkpoints/last only) optimizer, scheduler, RNG and data-order state

``load_model(dir)`` returns the EMA weights when the checkpoint has them (``prefer_ema=False``
for the raw weights); ``meta["weights"]`` says which were loaded.

``model.json`` records the sha256 of each safetensors file (``files``); loading a file checks it
once, so a flipped byte is one line naming the file, never a silently different model. A damaged
header, a truncated file or an unreadable ``trainer.pt`` are one line too (SgddError).
"""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sgdd.cache.format import SPECIAL_KEYS
from sgdd.config import from_dict
from sgdd.errors import SgddError
from sgdd.io import file_sha256, publish_dir, temp_name
from sgdd.models.body import BodyDecoder
from sgdd.models.decoder import Decoder, DecoderConfig

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
MODEL_META = "model.json"
FILES_KEY = "files"  # model.json: safetensors file name -> sha256
TRAINER_STATE = "trainer.pt"
CHECKPOINTS = "checkpoints"  # the folder of a run that holds its checkpoints
BEST, LAST = "best", "last"  # lowest validation loss so far; the latest save (with trainer state)
CHECKPOINT_NAMES = (BEST, LAST)  # the order in which a run's checkpoints are preferred


def checkpoint_dir(run_dir: str | Path, which: str) -> Path:
    """``<run_dir>/checkpoints/<which>`` (which: best or last)."""
    assert which in (BEST, LAST), which
    return Path(run_dir) / CHECKPOINTS / which


def decoder_config(meta: dict) -> DecoderConfig:
    """The decoder config a checkpoint's model.json records (fields it predates take their defaults)."""
    return from_dict(DecoderConfig, meta["decoder"])


def model_meta(model: Decoder, cache_dir: str | Path, special_ids: dict) -> dict:
    """What is needed to rebuild the decoder and to find its cache and tokenizer again."""
    return {
        "decoder": {k: getattr(model.cfg, k) for k in model.cfg.__dataclass_fields__},
        "vocab_size": model.vocab_size,
        "out_vocab": None if model.out_vocab is None else len(model.out_vocab),  # model.vocab corpus
        "cond_dim": model.cond_dim,
        "embed_dim": model.tok_emb.embedding_dim,
        "mask_id": model.mask_id,
        "special_ids": special_ids,
        "cache": str(Path(cache_dir).resolve()),
    } | ({"body_config": model.body_config} if isinstance(model, BodyDecoder) else {})


def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def write_failed(what: Path, e: BaseException) -> SgddError:
    """One line for a checkpoint that could not be written (disk full, read-only, ...)."""
    reason = getattr(e, "strerror", None) or (str(e).splitlines() or [""])[0] or type(e).__name__
    if "No space left on device" in reason or "StorageFull" in reason:
        reason = "No space left on device"
    return SgddError(f"writing the checkpoint {what} failed ({reason}); the previous checkpoint is kept")


# What writing a checkpoint raises on a full or read-only disk: safetensors has its own error and
# torch.save reports a failed write as RuntimeError.
WRITE_ERRORS = (OSError, SafetensorError, RuntimeError)


def special_ids(encoder_info: dict, meta: dict) -> dict[str, int | None]:
    """The special token ids a run decodes with: the encoder's (encoder.json), overridden by those
    its checkpoint recorded."""
    return {**{k: encoder_info.get(k) for k in SPECIAL_KEYS}, **meta.get("special_ids", {})}


def save_model(directory: str | Path, model: Decoder, meta: dict,
               ema_weights: dict[str, torch.Tensor] | None = None, label: Path | None = None,
               extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``model.safetensors`` (+ ``ema.safetensors``) + ``model.json`` (with their sha256s),
    and whatever ``extra(tmp_dir)`` adds (training's trainer state), into ``directory`` at once: all
    is written under a temporary name and renamed into place (``io.publish_dir``). A failed write
    removes the temporary directory and raises SgddError naming ``label`` (default ``directory``);
    the previous checkpoint stays."""
    directory = Path(directory)
    tmp = temp_name(directory)
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        files = {MODEL_FILE: _cpu_state(model.state_dict())}
        if ema_weights is not None:
            files[EMA_FILE] = _cpu_state(ema_weights)
        for name, state in files.items():
            save_file(state, str(tmp / name))
        meta = {**meta, FILES_KEY: {name: file_sha256(tmp / name) for name in files}}
        (tmp / MODEL_META).write_text(json.dumps(meta, indent=2))
        if extra is not None:
            extra(tmp)
        publish_dir(tmp, directory, replace=True)
    except WRITE_ERRORS as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(label or directory, e) from None
    return directory


def model_from_meta(meta: dict) -> Decoder | BodyDecoder:
    """An untrained decoder of the checkpoint's architecture (a pretrained body's from its stored config)."""
    cfg = decoder_config(meta)
    sizes = (meta["vocab_size"], meta["cond_dim"], meta["embed_dim"], meta["mask_id"])
    if cfg.init_body == "encoder":
        if "body_config" not in meta:
            raise SgddError("the checkpoint's model.json lacks body_config (model.init_body: encoder)")
        return BodyDecoder(cfg, *sizes, meta["body_config"], out_vocab=meta.get("out_vocab"))
    return Decoder(cfg, *sizes, out_vocab=meta.get("out_vocab"))


def read_meta(directory: str | Path) -> dict:
    directory = Path(directory)
    if not (directory / MODEL_FILE).is_file() or not (directory / MODEL_META).is_file():
        raise SgddError(f"no checkpoint in {directory} (expected {MODEL_FILE} and {MODEL_META})")
    try:
        meta = json.loads((directory / MODEL_META).read_text())
    except (OSError, ValueError) as e:
        raise SgddError(f"{directory / MODEL_META} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("decoder"), dict):
        raise SgddError(f"{directory / MODEL_META} is not a checkpoint description (no decoder config)")
    return meta


def load_weights(directory: str | Path, name: str, meta: dict | None = None,
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of ``directory/name``, checked against the sha256 that ``model.json`` records
    (checkpoints written before it recorded them are read unchecked)."""
    directory = Path(directory)
    path = directory / name
    meta = read_meta(directory) if meta is None else meta
    expected = (meta.get(FILES_KEY) or {}).get(name)
    if expected is not None and file_sha256(path) != expected:
        raise SgddError(f"{path} does not match the sha256 in {MODEL_META} (damaged or edited); "
                        "refusing to use it")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise SgddError(f"{path} is unreadable ({(str(e).splitlines() or [type(e).__name__])[0]})") from None


def load_model(directory: str | Path, map_location: str | torch.device = "cpu",
               prefer_ema: bool = True) -> tuple[Decoder, dict]:
    """The decoder saved in ``directory`` and its meta. With ``prefer_ema`` (the default) the EMA
    weights are loaded when the checkpoint has them; ``meta["weights"]`` is "ema" or "model"."""
    directory = Path(directory)
    meta = read_meta(directory)
    try:
        model = model_from_meta(meta)
    except (KeyError, TypeError) as e:
        raise SgddError(f"{directory / MODEL_META} lacks what rebuilds the decoder ({type(e).__name__}: {e})") from None
    use_ema = prefer_ema and (directory / EMA_FILE).is_file()
    weights = load_weights(directory, EMA_FILE if use_ema else MODEL_FILE, meta, map_location)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise SgddError(f"{directory}: the weights do not fit the decoder {MODEL_META} describes "
                        f"({str(e).splitlines()[0]})") from None
    return model, {**meta, "weights": "ema" if use_ema else "model"}


def load_ema_weights(directory: str | Path) -> dict[str, torch.Tensor] | None:
    """The EMA weights of a checkpoint (checked like ``load_weights``), or None when it has none."""
    path = Path(directory) / EMA_FILE
    return load_weights(directory, EMA_FILE) if path.is_file() else None


def load_trainer_state(path: str | Path) -> dict:
    """A ``trainer.pt`` (optimizer, scheduler, RNG, data order) read with ``weights_only=True``:
    nothing but tensors and plain containers is accepted, and any failure is one line."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SgddError(f"{path} holds objects other than tensors and plain values; sgdd never unpickles "
                        "those (refused, nothing was run)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise SgddError(f"{path} is unreadable ({(str(e).splitlines() or [type(e).__name__])[0]}); "
                        "it is damaged or truncated") from None
    if not isinstance(state, dict):
        raise SgddError(f"{path} is not a trainer state (a {type(state).__name__})")
    return state
