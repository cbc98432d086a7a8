"""Exact resume: a real SIGKILL of `sgdd train`, then --resume, gives bit for bit the weights (and
EMA, metrics) of a run that was never stopped; a changed config is refused; interrupted saves
and half-written metric lines are repaired."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sgdd.errors import SgddError
from sgdd.stages.train import fit
from tests.train.helpers import metrics, tiny_cfg, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
# dropout, CFG drops, EMA, accumulation, partial batches and validation: every piece of state
RUN = {"optim.max_steps": 60, "optim.batch_size": 5, "optim.grad_accum": 2, "model.dropout": 0.1,
       "model.cond_drop": 0.3, "eval_every": 7, "eval_batches": 1, "log_every": 1}


def saved_step(run_dir: Path) -> int:
    meta = run_dir / "checkpoints/last/model.json"
    try:
        return json.loads(meta.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


def start_cli_run(cache: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "sgdd.cli", "train", "--shards", str(cache), "--out", str(out),
           *tiny_overrides(**RUN, ema_decay=0.9, save_every=1)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill_9_then_resume_is_bitwise_identical(tiny_cache, tmp_path):
    # 1. killed: `sgdd train` saving every step, SIGKILLed once a checkpoint of step >= 3 exists
    proc = start_cli_run(tiny_cache, tmp_path / "split")
    deadline = time.monotonic() + 60
    while saved_step(tmp_path / "split") < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = saved_step(tmp_path / "split")
    assert 3 <= killed_at < RUN["optim.max_steps"]
    # 2. resumed from its last checkpoint (reporting less often: allowed to change)
    resumed = fit(tiny_cfg(tiny_cache, tmp_path / "split", resume=True, ema_decay=0.9, save_every=0, **RUN))
    # 3. never stopped
    whole = fit(tiny_cfg(tiny_cache, tmp_path / "whole", ema_decay=0.9, save_every=0, **RUN))
    assert resumed.step == whole.step == RUN["optim.max_steps"]
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "whole/checkpoints/last" / name))
        b = load_file(str(tmp_path / "split/checkpoints/last" / name))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name  # bitwise
    strip = [{k: v for k, v in r.items() if k not in ("elapsed", "tokens_per_s", "data_share")}
             for r in metrics(tmp_path / "whole")]
    assert [{k: v for k, v in r.items() if k not in ("elapsed", "tokens_per_s", "data_share")}
            for r in metrics(tmp_path / "split")] == strip
    assert resumed.best_val == whole.best_val


def test_resume_refuses_a_changed_config_listing_every_difference(tiny_cache, tmp_path):
    fit(tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.max_steps": 4}), stop_at=1)
    with pytest.raises(SgddError) as err:
        fit(tiny_cfg(tiny_cache, tmp_path / "r", resume=True, **{"optim.max_steps": 4, "optim.lr": 2e-3,
                                                                  "optim.batch_size": 2, "diffusion.schedule": "cosine"}))
    message = str(err.value)
    for diff in ("optim.lr: 0.001 -> 0.002", "optim.batch_size: 4 -> 2", "diffusion.schedule: 'linear' -> 'cosine'"):
        assert diff in message
    assert "only resume, log_every, save_every, eval_every" in message
    result = fit(tiny_cfg(tiny_cache, tmp_path / "r", resume=True, log_every=2, eval_every=3, **{"optim.max_steps": 4}))
    assert result.step == 4  # reporting settings may change


def test_a_kill_between_the_renames_of_a_save_is_repaired(tiny_cache, tmp_path):
    over = {"optim.max_steps": 4, "save_every": 1}
    fit(tiny_cfg(tiny_cache, tmp_path / "whole", **over))
    fit(tiny_cfg(tiny_cache, tmp_path / "r", **over), stop_at=2)
    ckpts = tmp_path / "r/checkpoints"
    # what a kill after `rename(last, .last.old-PID)` and before `rename(.last.tmp-PID, last)` leaves
    shutil.copytree(ckpts / "last", ckpts / ".last.tmp-4242")  # the new, complete checkpoint
    os.rename(ckpts / "last", ckpts / ".last.old-4242")
    meta = json.loads((ckpts / ".last.old-4242/model.json").read_text())
    (ckpts / ".last.old-4242/model.json").write_text(json.dumps(meta | {"step": 1}))  # older
    resumed = fit(tiny_cfg(tiny_cache, tmp_path / "r", resume=True, **over))
    assert sorted(p.name for p in ckpts.iterdir()) == ["best", "last"]
    a, b = load_file(str(tmp_path / "whole/checkpoints/last/model.safetensors")), load_file(str(ckpts / "last/model.safetensors"))
    assert resumed.step == 4 and all((a[k] == b[k]).all() for k in a)


def test_a_metrics_line_cut_short_by_a_kill_is_dropped(tiny_cache, tmp_path):
    fit(tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.max_steps": 3}), stop_at=2)
    with open(tmp_path / "r/metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # no closing brace, no newline
    resumed = fit(tiny_cfg(tiny_cache, tmp_path / "r", resume=True, **{"optim.max_steps": 3}))
    assert [r["step"] for r in resumed.metrics if "loss" in r] == [1, 2, 3]


def test_resume_with_another_number_of_processes_is_refused(tiny_cache, tmp_path):
    import torch

    fit(tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.max_steps": 3}), stop_at=1)
    state_path = tmp_path / "r/checkpoints/last/trainer.pt"
    state = torch.load(state_path, weights_only=True)
    torch.save(state | {"world": 2}, state_path)  # as if written by a 2-process run
    with pytest.raises(SgddError, match="written by a run of 2 processes, this one has 1"):
        fit(tiny_cfg(tiny_cache, tmp_path / "r", resume=True, **{"optim.max_steps": 3}))


def test_resume_refuses_a_trainer_state_of_another_version(tiny_cache, tmp_path):
    import torch

    fit(tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.max_steps": 3}), stop_at=1)
    state_path = tmp_path / "r/checkpoints/last/trainer.pt"
    state = torch.load(state_path, weights_only=True)
    assert state["version"] == 2
    torch.save(state | {"version": 1}, state_path)  # the old single-process format is no longer read
    with pytest.raises(SgddError, match="trainer.pt has version 1; this sgdd reads 2"):
        fit(tiny_cfg(tiny_cache, tmp_path / "r", resume=True, **{"optim.max_steps": 3}))
