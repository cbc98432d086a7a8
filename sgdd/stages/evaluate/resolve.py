"""Which run, checkpoint and split an eval reads; whether the cache fits the model; the run's
training facts (noise schedule, validation accuracy) that a report quotes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from sgdd.cache.format import SPECIAL_KEYS
from sgdd.cache.reader import Cache, CacheSplit
from sgdd.cache.views import cache_kind
from sgdd.errors import SgddError
from sgdd.models.checkpoint import CHECKPOINT_NAMES, MODEL_FILE, checkpoint_dir, load_model
from sgdd.models.diffusion import Schedule, get_schedule

RUNS_DIR = Path("runs")


def checkpoints_of(run_dir: Path) -> list[str]:
    """Names of the checkpoints (best, last) present in a run directory."""
    return [name for name in CHECKPOINT_NAMES if (checkpoint_dir(run_dir, name) / MODEL_FILE).is_file()]


def latest_run(root: Path = RUNS_DIR) -> Path:
    """The run under ``root`` whose newest checkpoint was written last."""
    runs = [d for d in root.iterdir() if d.is_dir() and checkpoints_of(d)] if root.is_dir() else []
    if not runs:
        raise SgddError(f"no trained run under {root}/ (train one with `sgdd train`, or pass --run)")

    def newest(d: Path) -> float:
        return max((checkpoint_dir(d, name) / MODEL_FILE).stat().st_mtime for name in checkpoints_of(d))

    return max(runs, key=newest)


def existing_checkpoint(run_dir: Path, name: str) -> Path:
    """The directory of checkpoint ``name`` of a trained run; one line when it is missing."""
    if not run_dir.is_dir():
        raise SgddError(f"run directory {run_dir} does not exist")
    present = checkpoints_of(run_dir)
    if not present:
        raise SgddError(f"run directory {run_dir} has no checkpoint (train it first with `sgdd train`)")
    if name not in present:
        raise SgddError(f"run directory {run_dir} has no {name!r} checkpoint (has: {', '.join(present)})")
    return checkpoint_dir(run_dir, name)


def default_split(cache: Cache) -> str:
    return "test" if "test" in cache.splits else "validation"


def check_encoder_fit(model, meta: dict, cache: Cache) -> list[str]:
    """Problems between the model and the cache's encoder files (tokenizer, vocabulary, special tokens)."""
    problems = []
    info = cache.encoder_info
    if info.get("vocab_size") != model.vocab_size:
        problems.append(f"its tokenizer has {info.get('vocab_size')} tokens, the model {model.vocab_size}")
    ours, theirs = meta.get("tokenizer_sha256"), info.get("tokenizer_sha256")
    if ours and theirs and ours != theirs:
        problems.append(f"its tokenizer (sha256 {theirs[:12]}...) is not the one the model was trained with ({ours[:12]}...)")
    special = meta.get("special_ids", {})
    for key in SPECIAL_KEYS:
        if key in special and key in info and special[key] != info[key]:
            problems.append(f"its {key} is {info[key]}, the model's {special[key]}")
    return problems


def check_fit(model, meta: dict, cache: Cache, split: CacheSplit) -> None:
    """Refuse a cache whose conditions, vocabulary, special tokens or kind differ from the model's."""
    kind, arrays = cache_kind(split), split.manifest["arrays"]
    problems = []
    if kind == "windows":
        hidden = arrays.get("hidden")
        if hidden is None:
            problems.append(f"split {split.dir} has no hidden states")
        elif hidden["row_shape"][-1] != model.cond_dim:
            problems.append(f"its hidden states have size {hidden['row_shape'][-1]}, the model takes {model.cond_dim}")
    else:
        vectors = arrays.get("vectors")
        if vectors is None:
            problems.append(f"split {split.dir} has no sentence vectors")
        elif tuple(vectors["row_shape"]) != (model.cond_dim,):
            problems.append(f"its vectors have shape {tuple(vectors['row_shape'])}, the model takes ({model.cond_dim},)")
    view = meta.get("view")
    if view == "next_block" and kind != "windows":
        problems.append(f"the run is an MTP head (next_block view), the split holds {kind}")
    if view == "sentence" and kind == "windows":
        problems.append("the run is a sentence decoder, the split holds LLM windows")
    problems += check_encoder_fit(model, meta, cache)
    if problems:
        raise SgddError(f"cache {cache.dir} does not fit the model: " + "; ".join(problems))


def load_checkpoint(ckpt: Path, device: torch.device):
    """The decoder of a checkpoint (its EMA weights when it has them) and its meta."""
    model, meta = load_model(ckpt)
    meta.setdefault("weights", "model")
    return model.to(device).eval(), meta


def run_config(run_dir: Path) -> dict:
    """The run's config.yaml as written by `sgdd train`; {} where it is missing or unreadable."""
    path = run_dir / "config.yaml"
    try:
        entry = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return entry if isinstance(entry, dict) else {}


def training_noise(meta: dict, run_dir: Path) -> tuple[Schedule, str]:
    """The noise schedule the run was trained with, and where it was read: the checkpoint's
    ``diffusion`` entry, else the run's config.yaml, else the default (linear)."""
    entry, source = meta.get("diffusion"), "checkpoint"
    if not entry:
        entry, source = run_config(run_dir).get("diffusion"), "config.yaml"
    if not isinstance(entry, dict) or not entry.get("schedule"):
        return get_schedule("linear"), "default"
    return get_schedule(entry["schedule"], entry.get("kappa")), source


def validation_accuracy(run_dir: Path, step: int | None = None) -> dict | None:
    """The run's validation masked-token accuracy (teacher forced, at the training noise) from
    its metrics.jsonl, in percent: best, last and at ``step`` (the evaluated checkpoint). None
    when the run logged no validation."""
    path = run_dir / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("val_acc"), (int, float)):
                rows.append(row)
    if not rows:
        return None
    best = max(rows, key=lambda r: r["val_acc"])
    at = [r for r in rows if step is not None and r.get("step") == step]
    return {
        "best": 100.0 * best["val_acc"], "best_step": best.get("step"),
        "last": 100.0 * rows[-1]["val_acc"], "last_step": rows[-1].get("step"),
        "checkpoint": 100.0 * at[-1]["val_acc"] if at else None, "checkpoint_step": step,
        "label": "validation masked accuracy: teacher-forced accuracy at the masked positions, the figure "
                 "comparable with Xiao 2026's 81.3% (not the accuracy of a full decode)",
    }
