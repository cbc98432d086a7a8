"""Logging and progress bars: one policy for every stage.

- Messages go through the ``sgdd`` logger (``logging.getLogger("sgdd.<stage>")``) to stderr, as
  ``sgdd <stage>: message``, written with ``tqdm.write`` so a live bar is not broken. The CLI's
  ``-v`` shows debug messages (and the warnings of transformers while models load), ``-q`` only
  warnings and errors. Under torchrun, ranks other than 0 log warnings and errors only, prefixed
  with their rank. Nothing here changes the logging of other libraries globally.
- Progress bars (:func:`progress`) are drawn on a terminal only; off a terminal (a log file, CI,
  a pipe) or with ``-q`` they are hidden, and one line sums the work up when the bar closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Iterator

from tqdm import tqdm

ROOT = "sgdd"
_HANDLER_FLAG = "_sgdd_handler"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


class _TqdmHandler(logging.StreamHandler):
    """Writes through tqdm, so that a bar on the terminal stays in one piece."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # a closed stream must never stop a stage
            self.handleError(record)


class _RankFilter(logging.Filter):
    """Ranks > 0 keep warnings and errors only, and say which rank they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        r = rank()
        if r == 0:
            return True
        record.msg = f"[rank {r}] {record.msg}"
        return record.levelno >= logging.WARNING


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stage = record.name.split(".", 1)[1] if "." in record.name else ""
        head = f"sgdd {stage}".strip()
        level = "" if record.levelno in (logging.INFO, logging.DEBUG) else f"{record.levelname.lower()}: "
        return f"{head}: {level}{record.getMessage()}"


def setup(verbosity: int = 0) -> None:
    """Configure the ``sgdd`` logger once per process: verbosity -1 (-q) warnings, 0 info,
    1 (-v) debug. Only sgdd's own logger is touched."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    if not any(getattr(h, _HANDLER_FLAG, False) for h in logger.handlers):
        handler = _TqdmHandler()
        setattr(handler, _HANDLER_FLAG, True)
        handler.setFormatter(_Format())
        handler.addFilter(_RankFilter())
        logger.addHandler(handler)
        logger.propagate = False


def get_logger(stage: str) -> logging.Logger:
    """The logger of a stage; set up with the default level when the CLI did not do it (library use)."""
    if not logging.getLogger(ROOT).handlers:
        setup(0)
    return logging.getLogger(f"{ROOT}.{stage}")


def verbose() -> bool:
    return logging.getLogger(ROOT).isEnabledFor(logging.DEBUG)


def quiet() -> bool:
    return not logging.getLogger(ROOT).isEnabledFor(logging.INFO)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and download bars while a model loads (unless -v), and
    restore its previous settings afterwards."""
    if verbose():
        yield
        return
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


class progress(tqdm):
    """A tqdm bar drawn only on a terminal, on rank 0 and without -q; when hidden, rank 0 logs
    one summary line at ``close()`` (``desc: n unit in s (rate/s)``)."""

    def __init__(self, *args, desc: str = "", unit: str = "it", main: bool = True, logger: str = "", **kwargs):
        hidden = not main or quiet() or not sys.stderr.isatty()
        kwargs.setdefault("dynamic_ncols", True)
        super().__init__(*args, desc=desc, unit=unit, disable=hidden, **kwargs)
        self._summary = main and hidden
        self._began, self._count, self._log = time.perf_counter(), 0, get_logger(logger or "progress")
        self._label, self._unit = desc, unit

    def update(self, n: float | None = 1) -> bool | None:
        self._count += n or 0
        return super().update(n)

    def close(self) -> None:
        if self._summary:
            self._summary = False
            seconds = time.perf_counter() - self._began
            rate = self._count / seconds if seconds > 0 else 0.0
            self._log.info(f"{self._label}: {self._count:g} {self._unit}s in {seconds:.1f}s ({rate:.1f} {self._unit}s/s)")
        super().close()
