"""Optional experiment trackers for ``sgdd train --report-to``: TensorBoard and Weights & Biases.

``metrics.jsonl`` is always written by the trainer; a tracker only mirrors its rows. Neither
package is a dependency: asking for one that is not installed is an error before training
starts, naming the package to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Protocol

from sgdd.errors import SgddError


class Tracker(Protocol):
    def log(self, row: dict, step: int) -> None: ...

    def close(self) -> None: ...


def _numeric(row: dict) -> dict[str, float]:
    """The row's numbers (step excluded; booleans and nulls dropped)."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _require(module: str, package: str, option: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SgddError(f"--report-to {option} needs the {package} package, which is not installed "
                        f"(pip install {package}); metrics.jsonl is written without it") from None


class TensorBoardTracker:
    """Scalars under ``<run>/tensorboard``, one tag per metric (train/loss, val/val_loss, ...)."""

    def __init__(self, run_dir: Path, name: str, config: dict):
        _require("tensorboard", "tensorboard", "tensorboard")
        writer_cls = _require("torch.utils.tensorboard", "tensorboard", "tensorboard").SummaryWriter
        self.writer = writer_cls(log_dir=str(run_dir / "tensorboard"))

    def log(self, row: dict, step: int) -> None:
        group = "val" if "val_loss" in row else "train"
        for key, value in _numeric(row).items():
            self.writer.add_scalar(f"{group}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run named after the training run, with the resolved config attached."""

    def __init__(self, run_dir: Path, name: str, config: dict):
        self.wandb = _require("wandb", "wandb", "wandb")
        self.run = self.wandb.init(project="sgdd", name=name, dir=str(run_dir), config=config, resume="allow")

    def log(self, row: dict, step: int) -> None:
        group = "val" if "val_loss" in row else "train"
        self.run.log({f"{group}/{k}": v for k, v in _numeric(row).items()}, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS: dict[str, Callable[[Path, str, dict], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
}


def get_tracker(name: str) -> Callable[[Path, str, dict], Tracker]:
    if name not in TRACKERS:
        raise SgddError(f"unknown tracker {name!r} (valid: {', '.join(TRACKERS)})")
    return TRACKERS[name]


def open_trackers(names: list[str], run_dir: Path, run_name: str, config: dict) -> list[Tracker]:
    """One tracker per name (each checks that its package is installed)."""
    return [get_tracker(n)(run_dir, run_name, config) for n in dict.fromkeys(names)]
