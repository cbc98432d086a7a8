"""The Python API: a trained run as one object that decodes, inverts, saves and shares itself.

    import sgdd
    run = sgdd.load_run("runs/quickstart")        # a run directory, a saved run, or a Hub id
    run.invert(["the cat sat on the mat."])       # -> ["the cat sat on the mat ."]
    run.decode(vectors, steps=8)                  # vectors [N, D] -> N texts
    run.save_pretrained("export/quickstart")      # a folder that decodes without the cache
    run.push_to_hub("user/sgdd-quickstart")

A saved run (``save_pretrained``) holds::

    model.safetensors   the weights decoding uses (the EMA ones when the run kept them)
    model.json          the decoder's config, sizes, special ids, view, step
    encoder/            tokenizer files, encoder.json (encoder id and fingerprints, for invert),
                        cache.json (the data it was trained on, the vectors' stored dtype)
    config.yaml         the training config (when the run has one)
    report.json         the latest evaluation report of the run (when it has one)
    README.md           a model card generated from the above
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from sgdd.cache.format import EMBEDDINGS_FILE, LM_HEAD_FILE
from sgdd.models.checkpoint import (CHECKPOINT_NAMES, CHECKPOINTS, EMA_FILE, MODEL_FILE, MODEL_META, checkpoint_dir,
                                    save_model, special_ids)
from sgdd.models.portable import ASSETS_DIR, CACHE_INFO, RunAssets, find_assets
from sgdd.errors import SgddError
from sgdd.io import write_json_atomic, write_text_atomic

CARD = "README.md"
CONFIG = "config.yaml"
REPORT = "report.json"


def _resolve(path_or_id: str | Path, checkpoint: str | None, revision: str | None) -> tuple[Path, Path]:
    """(checkpoint directory, run root) of a run directory, a saved run, a checkpoint directory
    or a Hugging Face Hub id (downloaded into the local Hub cache)."""
    p = Path(path_or_id).expanduser()
    if not p.exists():
        p = _download(str(path_or_id), revision)
    if (p / MODEL_META).is_file():
        if checkpoint is not None and p.parent.name == CHECKPOINTS:
            p = p.parent / checkpoint
        root = p.parent.parent if p.parent.name == CHECKPOINTS else p
        return p, root
    names = [checkpoint] if checkpoint else list(CHECKPOINT_NAMES)
    for name in names:
        ckpt = checkpoint_dir(p, name)
        if (ckpt / MODEL_FILE).is_file():
            return ckpt, p
    raise SgddError(f"{p} holds no checkpoint (expected {MODEL_META} or {CHECKPOINTS}/{'|'.join(names)}/)")


def _download(repo_id: str, revision: str | None) -> Path:
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise SgddError(f"{repo_id} is neither a local run directory nor a Hub id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except Exception as e:  # offline, unknown repo, no access: one line
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise SgddError(f"{repo_id} is not a local directory and cannot be downloaded from the Hub: {first}") from None


def _latest_report(root: Path) -> dict | None:
    """The newest eval-*/report.json of a run (or the report.json of a saved run)."""
    candidates = [root / REPORT, *root.glob(f"eval-*/{REPORT}")]
    found = [p for p in candidates if p.is_file()]
    if not found:
        return None
    return json.loads(max(found, key=lambda p: p.stat().st_mtime).read_text())


class Run:
    """A trained decoder (sentence decoder or MTP head) with its tokenizer, special ids and the
    identity of the encoder whose vectors it decodes. Build it with :func:`load_run`."""

    def __init__(self, model, meta: dict, assets: RunAssets, root: Path, checkpoint_dir: Path,
                 device: torch.device, precision):
        self.model, self.meta, self.assets = model, meta, assets
        self.root, self.checkpoint_dir = root, checkpoint_dir
        self.device, self.precision = device, precision
        self._tokenizer = None
        self._encoder = None

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, checkpoint: str | None = None, device: str = "auto",
                        precision: str = "auto", shards: str | None = None, revision: str | None = None) -> "Run":
        """Load a run directory (its ``best`` checkpoint, else ``last``; or ``checkpoint``), a
        saved run, a checkpoint directory or a Hub id. ``shards`` names the cache for a run
        trained before runs carried their encoder files."""
        from sgdd.models.checkpoint import load_model
        from sgdd.runtime import pick_device, pick_precision

        ckpt, root = _resolve(path_or_id, checkpoint, revision)
        dev = pick_device(device)
        model, meta = load_model(ckpt, map_location="cpu")
        assets = find_assets([ckpt, root], meta, shards)
        return cls(model.to(dev).eval(), meta, assets, root, ckpt, dev, pick_precision(precision, dev))

    # -- what it is -------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """"sentence" (a sentence decoder) or "next_block" (an MTP head)."""
        return self.meta.get("view", "sentence")

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.assets.tokenizer()
        return self._tokenizer

    @property
    def encoder_info(self) -> dict:
        return self.assets.encoder_info

    @property
    def special_ids(self) -> dict:
        return special_ids(self.encoder_info, self.meta)

    @property
    def length(self) -> int:
        """Tokens decoded per vector (the sentence length, or an MTP head's block length)."""
        return int(self.meta.get("block_length") or self.model.cfg.max_len)

    def __repr__(self) -> str:
        return (f"Run({str(self.root)!r}, {self.kind} decoder, {self.model.num_params() / 1e6:.2f}M parameters, "
                f"encoder {self.encoder_info.get('model')!r}, step {self.meta.get('step')})")

    # -- decoding ---------------------------------------------------------------------------------
    def _sampling_cfg(self, sampling: dict):
        from sgdd.stages.evaluate.config import EvalConfig

        known = {f.name for f in dataclasses.fields(EvalConfig)}
        unknown = sorted(set(sampling) - known)
        if unknown:
            raise SgddError(f"unknown decoding setting(s) {', '.join(unknown)} (valid: the fields of EvalConfig, "
                            "e.g. sampler, steps, schedule, temperature, cfg_scale, seed, candidates)")
        return dataclasses.replace(EvalConfig(device=str(self.device)), **sampling)

    def decode_ids(self, vectors: Any, batch_size: int = 64, **sampling) -> torch.Tensor:
        """Token ids [N, L] decoded from ``vectors`` [N, D] (or one vector [D]) with the settings
        of ``sgdd eval`` (sampler, steps, schedule, temperature, cfg_scale, seed, ...)."""
        from sgdd.decoding.maskgit import special_token_ids
        from sgdd.decoding.samplers import Sampling
        from sgdd.stages.evaluate.data import EvalData
        from sgdd.stages.evaluate.batches import decode_rows

        cfg = self._sampling_cfg(sampling)
        z = torch.as_tensor(vectors, dtype=torch.float32)
        if z.dim() == 1:
            z = z[None]
        if z.dim() != 2 or z.shape[1] != self.model.cond_dim:
            raise SgddError(f"vectors of shape {tuple(z.shape)} given; this decoder takes [N, {self.model.cond_dim}]")
        data = EvalData("sentences", z, torch.zeros(z.shape[0], self.length, dtype=torch.long),
                        [str(i) for i in range(z.shape[0])], [""] * z.shape[0], None, 0, self.length)
        out = decode_rows(self.model, data, Sampling.of(cfg).check(), cfg.seed, batch_size, self.device,
                          self.precision, keep=0, exempt=special_token_ids(self.special_ids))
        return out.ids

    def decode(self, vectors: Any, batch_size: int = 64, **sampling) -> list[str]:
        """Texts decoded from ``vectors`` [N, D] (sentences are cut at their end token)."""
        from sgdd.stages.evaluate.data import to_texts

        ids = self.decode_ids(vectors, batch_size, **sampling)
        kind = "windows" if self.kind == "next_block" else "sentences"
        return to_texts(ids, kind, self.tokenizer, self.special_ids)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Sentence vectors [N, D] of ``texts`` from the run's frozen encoder (loaded on first use),
        rounded through the dtype the training cache stored them in."""
        from sgdd.stages.evaluate.invert import as_stored

        return as_stored(self._reencoder().encode(list(texts)), self.assets.vectors_dtype)

    def _reencoder(self):
        from sgdd.decoding.rerank import ReEncoder

        if self._encoder is None:
            self._encoder = ReEncoder(self.encoder_info, self.device, self.precision)
        return self._encoder

    def invert(self, texts: str | Sequence[str], details: bool = False, **sampling) -> list:
        """Encode ``texts`` with the run's encoder and decode them back: the reconstructions (with
        ``details``: per text a dict with output, cosine, forward passes and trajectory)."""
        from sgdd.stages.evaluate.invert import checked_assets, invert_texts

        texts = [texts] if isinstance(texts, str) else list(texts)
        cfg = self._sampling_cfg(sampling)
        checked_assets(self.model, self.meta, self.assets, self.root)
        results = invert_texts(self.model, self.meta, self.assets, texts, cfg, self.device, self.precision,
                               self._reencoder())
        for r in results:
            r.pop("_traj")
        return results if details else [r["output"] for r in results]

    # -- saving and sharing -----------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write a self-contained copy (weights, config, tokenizer, encoder identity, model card)
        to ``directory``; :func:`load_run` reads it back without the cache."""
        from sgdd.reporting.model_card import model_card

        out = Path(directory)
        if out.exists() and any(out.iterdir()) and not (out / MODEL_META).is_file():
            raise SgddError(f"{out} exists and is not a saved run; choose an empty or new directory")
        out.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "saved_from": str(self.checkpoint_dir)}
        save_model(out / ".weights", self.model, meta)  # the loaded weights (EMA when there are any)
        for name in (MODEL_FILE, MODEL_META):
            (out / ".weights" / name).replace(out / name)
        shutil.rmtree(out / ".weights")
        (out / EMA_FILE).unlink(missing_ok=True)
        assets = out / ASSETS_DIR
        if assets.resolve() != self.assets.dir.resolve():
            if assets.exists():
                shutil.rmtree(assets)
            shutil.copytree(self.assets.dir, assets,
                            ignore=shutil.ignore_patterns(EMBEDDINGS_FILE, LM_HEAD_FILE))
            if not (assets / CACHE_INFO).is_file() and self.assets.cache_info:
                write_json_atomic(assets / CACHE_INFO, self.assets.cache_info)
        for name in (CONFIG,):
            if (self.root / name).is_file() and (self.root / name).resolve() != (out / name).resolve():
                shutil.copy2(self.root / name, out / name)
        report = _latest_report(self.root)
        if report is not None:
            write_json_atomic(out / REPORT, report)
        write_text_atomic(out / CARD, model_card(meta, self.encoder_info, self.assets.cache_info, report,
                                                 (out / CONFIG).read_text() if (out / CONFIG).is_file() else None))
        return out

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload sgdd run") -> str:
        """Save the run into a temporary folder and upload it to the Hub repository ``repo_id``
        (created when missing); returns the commit URL. Offline it fails at once with one line."""
        import os

        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
            raise SgddError(f"cannot push to {repo_id}: the Hugging Face Hub is offline (HF_HUB_OFFLINE is set)")
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "run")
            try:
                api.create_repo(repo_id, private=private, exist_ok=True)
                info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
            except Exception as e:  # network, authentication, permissions: one line
                first = (str(e).splitlines() or [type(e).__name__])[0]
                raise SgddError(f"cannot push to {repo_id}: {first}") from None
        return str(getattr(info, "commit_url", info))


def load_run(path_or_id: str | Path, checkpoint: str | None = None, device: str = "auto", precision: str = "auto",
             shards: str | None = None, revision: str | None = None) -> Run:
    """A trained run ready to decode: see :meth:`Run.from_pretrained`."""
    return Run.from_pretrained(path_or_id, checkpoint, device, precision, shards, revision)


# -- stage entry points ---------------------------------------------------------------------------
def _config(cls: type, cfg: Any, fields: dict) -> Any:
    """``cfg`` (a config dataclass, a dict of its fields or None) with ``fields`` (dotted keys
    allowed: ``model.d_model=256``) applied, checked like the CLI checks it."""
    from sgdd.config import apply_overrides, from_dict

    if cfg is None or isinstance(cfg, dict):
        cfg = from_dict(cls, cfg or {})
    elif not isinstance(cfg, cls):
        raise SgddError(f"expected a {cls.__name__} (or a dict of its fields), got {type(cfg).__name__}")
    return apply_overrides(cfg, fields) if fields else cfg


def collect(cfg: Any = None, **fields) -> Path:
    """Stage 1 (``sgdd collect``): encode a corpus into a cache; returns the cache directory."""
    from sgdd.stages.collect.config import CollectConfig
    from sgdd.stages import collect as stage

    return stage.run(_config(CollectConfig, cfg, fields))


def train(cfg: Any = None, **fields) -> Path:
    """Stage 2 (``sgdd train``): train a decoder from a cache; returns the run directory."""
    from sgdd.stages import train as stage
    from sgdd.stages.train.config import TrainConfig

    return stage.run(_config(TrainConfig, cfg, fields))


def evaluate(cfg: Any = None, **fields) -> Path:
    """Stage 3 (``sgdd eval``): decode and score a split; returns the report directory."""
    from sgdd.stages.evaluate.config import EvalConfig
    from sgdd.stages import evaluate as stage

    return stage.run(_config(EvalConfig, cfg, fields))
