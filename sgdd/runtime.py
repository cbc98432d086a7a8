"""Device, precision and seeding: one place that decides where and how tensors compute."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sgdd.errors import SgddError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Ranks:
    """This process's place among the processes ``torchrun`` started (RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE); without torchrun, rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched_ranks() -> Ranks:
    """The ranks torchrun set in the environment (rank 0 of 1 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    return Ranks(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                 local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SgddError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SgddError(f"device {name!r} asked for, but this machine has no CUDA GPU (use --device cpu)")
    return dev


@dataclass(frozen=True)
class Precision:
    """How a stage computes: ``autocast_dtype`` None means plain fp32. ``reason`` says why this
    precision was chosen (one line for the user)."""

    name: str
    autocast_dtype: torch.dtype | None
    device_type: str
    reason: str = "asked for"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    @property
    def needs_scaler(self) -> bool:
        return self.autocast_dtype == torch.float16

    def describe(self) -> str:
        return f"precision {self.name} ({self.reason})"


BF16_MIN_SPEEDUP = 1.1  # bf16 must beat fp32 matmul by this factor to be chosen on a CPU
_VERDICT_FILE = "precision.json"


def cpu_bf16_native() -> bool:
    """Whether the CPU computes bf16 matmuls in hardware (AMX tiles or AVX-512 BF16). Elsewhere
    oneDNN emulates them, several times slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


def matmul_gflops(dtype: torch.dtype, n: int = 512, repeats: int = 8) -> float:
    """Measured throughput of an n x n x n matmul in ``dtype`` on this process's CPU threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / max(time.perf_counter() - began, 1e-9) / 1e9


def _cpu_key() -> str:
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _verdict_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sgdd" / _VERDICT_FILE


@functools.cache
def cpu_bf16_verdict() -> tuple[bool, str]:
    """(use bf16?, why) on this CPU: bf16 only where it is native *and* a measured matmul is at
    least ``BF16_MIN_SPEEDUP`` times faster than fp32. The measurement (~0.2 s) is kept per CPU
    model, torch version and thread count in ``~/.cache/sgdd/precision.json``."""
    capability = torch.backends.cpu.get_cpu_capability()
    if not cpu_bf16_native():
        return False, f"the CPU ({capability}) has no AMX or AVX-512 BF16: bf16 would be emulated"
    path, key = _verdict_path(), _cpu_key()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict) or not isinstance(known.get(key), dict):
        fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
        known = (known if isinstance(known, dict) else {}) | {key: {"fp32_gflops": fp32, "bf16_gflops": bf16}}
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(known, indent=1))
    fp32, bf16 = known[key]["fp32_gflops"], known[key]["bf16_gflops"]
    ratio = bf16 / max(fp32, 1e-9)
    use = ratio >= BF16_MIN_SPEEDUP
    return use, f"native bf16 on the CPU: matmul {bf16:.0f} vs {fp32:.0f} GFLOP/s in fp32 ({ratio:.1f}x)"


def pick_precision(name: str, device: torch.device) -> Precision:
    """``auto``: on a CPU, bf16 autocast only where bf16 is native and measured faster
    (:func:`cpu_bf16_verdict`), else fp32; on a GPU, bf16 where supported, else fp32."""
    reason = "asked for"
    if name == "auto":
        if device.type == "cpu":
            use_bf16, reason = cpu_bf16_verdict()
        elif device.type == "cuda" and torch.cuda.is_bf16_supported():
            use_bf16, reason = True, "the GPU supports bf16"
        else:
            use_bf16, reason = False, f"no bf16 support on {device.type}"
        name, reason = ("bf16" if use_bf16 else "fp32"), f"auto: {reason}"
    if name not in _DTYPES:
        raise SgddError(f"unknown precision {name!r} (use auto, fp32, bf16 or fp16)")
    if name == "fp16" and device.type == "cpu":
        raise SgddError("fp16 autocast is for GPUs; use --precision bf16 or fp32 on CPU")
    return Precision(name, None if name == "fp32" else _DTYPES[name], device.type, reason)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_device(name: str, ranks: Ranks) -> torch.device:
    """The device ``name`` asks for (:func:`pick_device`); under torchrun on GPUs each process
    takes the GPU of its local rank."""
    device = pick_device(name)
    if device.type == "cuda" and ranks.distributed and device.index is None:
        device = torch.device("cuda", ranks.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    return device


def default_threads(ranks: Ranks | None = None) -> None:
    """Share the machine's cores for intra-op work between the processes torchrun started on it
    (all of them for a single process), unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        local = ranks.local_world if ranks is not None else 1
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
