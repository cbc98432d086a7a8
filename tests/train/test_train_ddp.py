"""Data-parallel training under torchrun (gloo, CPU, DistributedDataParallel): 2 processes x batch B
train like 1 process x batch 2B, with and without gradient accumulation, even when a rank gets no
sample; only rank 0 writes the run directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sgdd.stages.train import fit
from tests.train.helpers import metrics, tiny_cfg, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
# 9 rows in global batches of 4: the third step has 1 sample, so rank 1 has none
RUN = {"optim.max_steps": 3, "max_train_samples": 9, "model.cond_drop": 0.3, "eval_every": 3, "eval_batches": 1,
       "ema_decay": 0.5}


@pytest.mark.slow  # three Python processes importing torch: ~6 s on 2 idle cores
@pytest.mark.parametrize("two, one", [
    ({"optim.batch_size": 2}, {"optim.batch_size": 4}),
    # accumulation: the first micro-batch of each step runs under no_sync()
    ({"optim.batch_size": 1, "optim.grad_accum": 2}, {"optim.batch_size": 2, "optim.grad_accum": 2}),
])
def test_two_processes_of_batch_b_match_one_of_batch_2b(tiny_cache, tmp_path, two, one):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sgdd.cli", "train", "--shards", str(tiny_cache), "--out", str(tmp_path / "two"),
           *tiny_overrides(**RUN, **two)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DistributedDataParallel over 2 processes (gloo)" in done.stdout + done.stderr
    fit(tiny_cfg(tiny_cache, tmp_path / "one", **RUN, **one))

    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "one/checkpoints/last" / name))
        b = load_file(str(tmp_path / "two/checkpoints/last" / name))
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (name, k)
    rows_one, rows_two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one]  # one line per step: rank 0 only
    for a, b in zip(rows_one, rows_two):
        for key in ("loss", "masked_ce", "masked_acc", "val_loss", "val_acc", "lr"):
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), key
    assert sorted(p.name for p in (tmp_path / "two/checkpoints").iterdir()) == ["best", "last"]
