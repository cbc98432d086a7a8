"""The run directory: where it is, what a new or a resumed run may find there (a checkpoint, a
config.yaml that must not have changed), checkpoints written whole under a temporary name and
renamed into place (and repaired after a kill between the renames), and metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import yaml

from sgdd.config import diff_dicts, load_yaml, to_dict
from sgdd.errors import SgddError
from sgdd.io import recover_dir, write_text_atomic
from sgdd.log import get_logger
from sgdd.models.checkpoint import BEST, LAST, MODEL_FILE, TRAINER_STATE, checkpoint_dir, save_model
from sgdd.models.decoder import Decoder
from sgdd.models.ema import EMA
from sgdd.stages.train.config import TrainConfig

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
# Config fields a resumed run may change: where and how often it reports, nothing it computes.
RESUME_MAY_CHANGE = ("resume", "log_every", "save_every", "eval_every", "report_to", "device", "init_from", "out", "name",
                     "allow_foreign_cache", "compile")

log = get_logger("train")


def run_dir_for(cfg: TrainConfig) -> Path:
    """``cfg.out``, else ``runs/<cfg.name>``, else ``runs/<cache directory name>``."""
    if cfg.out:
        return Path(cfg.out)
    return Path("runs") / (cfg.name or Path(cfg.shards).resolve().name)


def recover_checkpoint(directory: Path) -> None:
    """Repair a checkpoint directory that a kill left between the renames of a save."""
    if recover_dir(directory):
        log.info(f"repaired {directory} after an interrupted save")


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


def write_checkpoint(directory: Path, model: Decoder, meta: dict, trainer_state: dict | None = None,
                     ema: EMA | None = None) -> Path:
    """Model, EMA and trainer state, written complete under a temporary name and renamed into place."""
    def add_trainer_state(tmp: Path) -> None:
        torch.save(trainer_state, tmp / TRAINER_STATE)

    return save_model(directory, model, meta, None if ema is None else ema.model_state(model), label=directory,
                      extra=None if trainer_state is None else add_trainer_state)


def json_safe(row: dict) -> dict:
    """Non-finite floats become null, so that metrics.jsonl is strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(json_safe(row)) + "\n")


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
