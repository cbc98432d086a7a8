"""precision: auto chooses bf16 only where the hardware computes it natively and faster."""

import json

import pytest
import torch

from sgdd import runtime
from sgdd.errors import SgddError

CPU = torch.device("cpu")


@pytest.fixture
def fresh_verdict(tmp_path, monkeypatch):
    """An empty verdict cache in tmp_path, and no verdict remembered in-process."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    runtime.cpu_bf16_verdict.cache_clear()
    yield tmp_path
    runtime.cpu_bf16_verdict.cache_clear()


def fake_speeds(monkeypatch, fp32: float, bf16: float) -> list:
    calls = []

    def gflops(dtype, *a, **k):
        calls.append(dtype)
        return fp32 if dtype == torch.float32 else bf16

    monkeypatch.setattr(runtime, "matmul_gflops", gflops)
    return calls


def test_cpu_without_native_bf16_gets_fp32_without_measuring(fresh_verdict, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: False)
    calls = fake_speeds(monkeypatch, 100, 500)  # even a (bogus) fast bf16 is not measured
    prec = runtime.pick_precision("auto", CPU)
    assert prec.name == "fp32" and prec.autocast_dtype is None
    assert "no AMX or AVX-512 BF16" in prec.reason and calls == []


def test_cpu_with_native_and_faster_bf16_gets_bf16(fresh_verdict, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: True)
    fake_speeds(monkeypatch, 100, 600)
    prec = runtime.pick_precision("auto", CPU)
    assert prec.name == "bf16" and prec.autocast_dtype == torch.bfloat16
    assert "6.0x" in prec.describe()


def test_native_but_measured_slower_bf16_falls_back_to_fp32(fresh_verdict, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: True)
    fake_speeds(monkeypatch, 100, 90)
    assert runtime.pick_precision("auto", CPU).name == "fp32"


def test_verdict_is_measured_once_and_kept_on_disk(fresh_verdict, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: True)
    calls = fake_speeds(monkeypatch, 100, 600)
    runtime.pick_precision("auto", CPU)
    runtime.cpu_bf16_verdict.cache_clear()  # a new process: only the file remains
    calls2 = fake_speeds(monkeypatch, 100, 50)  # would flip the verdict if measured again
    assert runtime.pick_precision("auto", CPU).name == "bf16"
    assert len(calls) == 2 and calls2 == []
    saved = json.loads((fresh_verdict / "sgdd" / "precision.json").read_text())
    assert [v["bf16_gflops"] for v in saved.values()] == [600]


def test_explicit_precision_is_kept_and_fp16_refused_on_cpu(fresh_verdict, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_native", lambda: False)
    assert runtime.pick_precision("bf16", CPU).name == "bf16"
    with pytest.raises(SgddError, match="fp16"):
        runtime.pick_precision("fp16", CPU)
    with pytest.raises(SgddError, match="unknown precision 'fp8'"):
        runtime.pick_precision("fp8", CPU)


def test_real_capability_probe_runs():
    assert isinstance(runtime.cpu_bf16_native(), bool)
    assert runtime.matmul_gflops(torch.float32, n=64, repeats=2) > 0
