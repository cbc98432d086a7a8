"""Collect under torchrun: 2 CPU processes (gloo) write the same cache as one process, also when
resuming a cache one process started; in LLM mode with --generate the ranks share the continuations."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sgdd.cache import open_cache
from sgdd.cache.writer import ShardBuilder
from sgdd.stages.collect.config import CollectConfig
from sgdd.stages import collect
from tests.helpers import SENTENCES
from tests.helpers_lm import DOCUMENTS, build_causal_lm_dir

ROOT = Path(__file__).resolve().parents[2]


def torchrun(argv: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sgdd.cli", "collect", *map(str, argv)]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_two_ranks_write_the_rows_of_one_process_and_resume_its_cache(tiny_encoder_dir, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in SENTENCES + [
        s.replace(" .", " again .") for s in SENTENCES]) + "\n")
    (data / "validation.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in SENTENCES[:8]) + "\n")
    common = dict(model=str(tiny_encoder_dir), dataset=f"hf:{data}", shard_size=5, batch_size=4, dtype="fp32",
                  precision="fp32", splits=["validation", "train"])
    one = open_cache(collect.run(CollectConfig(out=str(tmp_path / "one"), **common)))

    # one process completes validation (2 shards), commits 1 shard of train and is interrupted
    real_commit, calls = ShardBuilder.commit, {"n": 0}

    def stop_at_the_fourth(self, rows):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_commit(self, rows)

    monkeypatch.setattr(ShardBuilder, "commit", stop_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        collect.run(CollectConfig(out=str(tmp_path / "two"), **common))
    monkeypatch.undo()

    # two ranks: validation is complete (nothing to do), train resumes
    r = torchrun(["--model", tiny_encoder_dir, "--dataset", f"hf:{data}", "--out", tmp_path / "two", "--shard-size", 5,
                  "--batch-size", 4, "--dtype", "fp32", "--precision", "fp32", "--split", "validation", "--split", "train"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "validation: already complete (8 rows)" in r.stderr
    two = open_cache(tmp_path / "two")
    a, b = one.split("train"), two.split("train")
    assert b.column("id") == a.column("id") and b.num_rows == 64
    assert torch.allclose(b.array("vectors"), a.array("vectors"), atol=1e-5)
    assert b.manifest["world_size"] == 2 and len(b.manifest["shards"]) == 13
    assert [s["first_row"] for s in b.manifest["shards"]] == list(range(0, 64, 5))
    assert [s["rank"] for s in b.manifest["shards"]] == [0] + [i % 2 for i in range(1, 13)]  # round-robin
    assert two.split("validation").column("id") == one.split("validation").column("id")


@pytest.mark.slow
def test_two_ranks_collect_llm_windows_with_shared_continuations(tmp_path):
    lm = build_causal_lm_dir(tmp_path / "lm")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(f'{{"text": "{d}"}}' for d in DOCUMENTS * 3) + "\n")
    (data / "validation.jsonl").write_text("\n".join(f'{{"text": "{d} again"}}' for d in DOCUMENTS[:3]) + "\n")
    common = ["--model", lm, "--dataset", f"hf:{data}", "--sample-size", 16, "--stride", 8, "--shard-size", 4,
              "--batch-size", 2, "--dtype", "fp32", "--precision", "fp32", "--generate", "--max-new-tokens", 3]
    r = torchrun([*common, "--out", tmp_path / "two"])
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = CollectConfig(model=str(lm), dataset=f"hf:{data}", sample_size=16, stride=8, shard_size=4, batch_size=2,
                        dtype="fp32", precision="fp32", generate=True, max_new_tokens=3, out=str(tmp_path / "one"))
    one, two = open_cache(collect.run(cfg)), open_cache(tmp_path / "two")
    for split in ("train", "validation"):
        a, b = one.split(split), two.split(split)
        assert a.column("id") == b.column("id") and a.column("input_ids") == b.column("input_ids")
        assert a.column("output_ids") == b.column("output_ids")
        assert torch.allclose(a.array("hidden"), b.array("hidden"), atol=1e-5)
    assert two.split("train").manifest["filter_stats"]["duplicate"] == 16  # DOCUMENTS * 3: each kept once
