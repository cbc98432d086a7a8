"""Faults in Stage 1: kill -9 at several moments then resume, write errors (disk full, read-only),
two collects on one output, other settings refused with the differences."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sgdd.cache import format as fmt
from sgdd.cache import open_cache
from sgdd.cache.writer import DirLock
from sgdd.cli import cli
from sgdd.stages.collect.config import CollectConfig
from sgdd.errors import SgddError
from sgdd.stages import collect
from sgdd.stages.collect.loop import check_committed
from tests.helpers import SENTENCES

ROOT = Path(__file__).resolve().parents[2]

# The child: `sgdd collect` with one moment at which it SIGKILLs itself (a real kill -9, placed
# exactly), and a short pause after each committed shard so that an outside kill lands mid-run.
CHILD = r"""
import os, signal, sys, time
point, argv = sys.argv[1], sys.argv[2:]
from sgdd.cache import writer

def die():
    os.kill(os.getpid(), signal.SIGKILL)

real_rename, real_replace, real_commit = os.rename, os.replace, writer.ShardBuilder.commit
def rename(src, dst, *a, **k):  # a shard's files are complete, the rename that commits it never happens
    if point == "before-commit" and os.path.basename(str(dst)).startswith("shard-"):
        die()
    return real_rename(src, dst, *a, **k)
def replace(src, dst, *a, **k):  # every shard is committed, the manifest's temporary file is written
    if point == "manifest" and os.path.basename(str(dst)) == "manifest.json":
        die()
    return real_replace(src, dst, *a, **k)
def commit(self, rows):
    meta = real_commit(self, rows)
    time.sleep(0.15)
    return meta
os.rename, os.replace, writer.ShardBuilder.commit = rename, replace, commit
from sgdd.cli import cli
cli(["collect", *argv])
"""


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


def args(encoder_dir, corpus, out):
    return ["--model", str(encoder_dir), "--dataset", str(corpus), "--out", str(out), "--shard-size", "3",
            "--batch-size", "2", "--dtype", "fp32", "--precision", "fp32"]


def config(encoder_dir, corpus, out, **kw):
    base = dict(model=str(encoder_dir), dataset=str(corpus), out=str(out), shard_size=3, batch_size=2,
                dtype="fp32", precision="fp32")
    return CollectConfig(**{**base, **kw})


def child(point: str, argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CHILD, point, *argv], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def committed_shards_are_intact(split_dir: Path) -> int:
    """Every committed shard matches its checksum; nothing claims the split is complete."""
    assert not (split_dir / fmt.MANIFEST).exists()
    shards = sorted(p for p in split_dir.iterdir() if fmt.shard_index(p.name) is not None)
    for d in shards:
        meta = json.loads((d / fmt.SHARD_META).read_text())
        assert fmt.tree_checksum(d, exclude=(fmt.SHARD_META,)) == meta["sha256"], d
    return len(shards)


@pytest.mark.slow
def test_kill_9_at_several_moments_then_resume_gives_exactly_the_clean_rows(tiny_encoder_dir, corpus, tmp_path):
    clean = open_cache(collect.run(config(tiny_encoder_dir, corpus, tmp_path / "clean"))).split("train")
    out = tmp_path / "killed"
    split_dir = out / "train"

    # 1. killed from outside as soon as the first shard is committed (somewhere in shard 2 or 3)
    proc = child("none", args(tiny_encoder_dir, corpus, out))
    deadline = time.time() + 60
    while not (split_dir / "shard-00000").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    first = committed_shards_are_intact(split_dir)
    assert 1 <= first < 11

    # 2. resumed, killed with a shard's files written but not yet renamed into place
    proc = child("before-commit", args(tiny_encoder_dir, corpus, out))
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert committed_shards_are_intact(split_dir) == first
    assert list(split_dir.glob(".shard-*.tmp-*"))  # the half-made shard is left behind ...

    # 3. resumed, killed while writing the manifest (every shard committed)
    proc = child("manifest", args(tiny_encoder_dir, corpus, out))
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert committed_shards_are_intact(split_dir) == 11  # 32 rows in shards of 3
    assert not list(split_dir.glob(".shard-*.tmp-*"))  # ... and removed by the next run
    with pytest.raises(SgddError, match="collect has not finished"):
        open_cache(out)

    # 4. the same command once more finishes with exactly the rows of a clean run
    resumed = open_cache(collect.run(config(tiny_encoder_dir, corpus, out))).split("train")
    assert resumed.column("id") == clean.column("id")
    assert len(set(resumed.column("id"))) == resumed.num_rows == 32
    assert torch.allclose(resumed.array("vectors"), clean.array("vectors"), atol=1e-6)
    assert not [p for p in split_dir.iterdir() if p.name.startswith(".") and p.name != fmt.LOCK_FILE]


@pytest.mark.slow
def test_a_stopped_collect_finishes_under_another_row_cap(tiny_encoder_dir, corpus, tmp_path):
    """Killed after its last shard (12 rows) but before the manifest: rerun with a cap that the
    committed rows fit, it goes on to exactly the rows of a clean collect with that cap; with a
    cap below them it is refused."""
    clean = open_cache(collect.run(config(tiny_encoder_dir, corpus, tmp_path / "clean", splits=["train:15"])))
    for cap, fits in ((15, True), (9, False)):
        out = tmp_path / f"stopped-{cap}"
        proc = child("manifest", [*args(tiny_encoder_dir, corpus, out), "--split", "train:12"])
        assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        assert committed_shards_are_intact(out / "train") == 4
        if not fits:
            with pytest.raises(SgddError, match="max_rows: 12 -> 9.*--overwrite"):
                collect.run(config(tiny_encoder_dir, corpus, out, splits=[f"train:{cap}"]))
            continue
        resumed = open_cache(collect.run(config(tiny_encoder_dir, corpus, out, splits=[f"train:{cap}"]))).split("train")
        assert resumed.column("id") == clean.split("train").column("id") and resumed.num_rows == cap
        assert torch.allclose(resumed.array("vectors"), clean.split("train").array("vectors"), atol=1e-6)


# -- write errors ---------------------------------------------------------------------------------
def invoke(*argv):
    return CliRunner().invoke(cli, ["collect", *map(str, argv)])


def test_disk_full_while_writing_arrays_keeps_earlier_shards_and_resumes(tiny_encoder_dir, corpus, tmp_path, monkeypatch):
    import zarr.storage

    real_set = zarr.storage.LocalStore.set

    async def full_disk(self, key, value):  # the disk fills up while shard 2's arrays are written
        if ".shard-00002" in str(self.root):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await real_set(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full_disk)
    out = tmp_path / "c"
    r = invoke(*args(tiny_encoder_dir, corpus, out))
    assert r.exit_code == 1
    assert "No space left on device" in r.output and "2 shards committed before it are intact" in r.output
    assert committed_shards_are_intact(out / "train") == 2
    assert not list((out / "train").glob(".shard-*"))  # the partial shard is removed, never listed
    monkeypatch.undo()
    split = open_cache(collect.run(config(tiny_encoder_dir, corpus, out))).split("train")
    assert split.num_rows == 32


def test_disk_full_while_a_shard_is_committed_in_the_background(tiny_encoder_dir, corpus, tmp_path, monkeypatch):
    import pyarrow as pa

    real_file = pa.OSFile

    def full_disk(path, mode="r"):  # the rows of shard 2 cannot be written (the commit thread)
        if ".shard-00002" in str(path) and mode == "wb":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_file(path, mode)

    monkeypatch.setattr(pa, "OSFile", full_disk)
    out = tmp_path / "c"
    r = invoke(*args(tiny_encoder_dir, corpus, out))
    assert r.exit_code == 1
    assert "No space left on device" in r.output and "2 shards committed before it are intact" in r.output
    assert committed_shards_are_intact(out / "train") == 2
    assert not list((out / "train").glob(".shard-*"))
    monkeypatch.undo()
    split = open_cache(collect.run(config(tiny_encoder_dir, corpus, out))).split("train")
    assert split.num_rows == 32


def test_disk_full_while_writing_the_manifest(tiny_encoder_dir, corpus, tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if ".manifest.json.tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "c"
    r = invoke(*args(tiny_encoder_dir, corpus, out))
    assert r.exit_code == 1 and "manifest.json failed (No space left on device)" in r.output
    assert committed_shards_are_intact(out / "train") == 11
    monkeypatch.undo()
    assert open_cache(collect.run(config(tiny_encoder_dir, corpus, out))).split("train").num_rows == 32


def test_read_only_directory(tiny_encoder_dir, corpus, tmp_path, monkeypatch):
    """Tests run as root, where chmod does not stop writes, so the file system's refusal (EROFS /
    EACCES) is simulated at the calls that meet it first: the lock file and a shard's directory."""
    real_open, real_mkdir = os.open, Path.mkdir

    def ro_open(path, flags, *a, **k):
        if str(path).endswith(fmt.LOCK_FILE) and "ro-at-start" in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *a, **k)

    def ro_mkdir(self, *a, **k):
        if self.name.startswith(".shard-00001"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(Path, "mkdir", ro_mkdir)
    r = invoke(*args(tiny_encoder_dir, corpus, tmp_path / "ro-at-start"))
    assert r.exit_code == 1 and "Read-only file system" in r.output and "writable" in r.output
    r = invoke(*args(tiny_encoder_dir, corpus, tmp_path / "c"))
    assert r.exit_code == 1 and "Permission denied" in r.output and "rerun the same command" in r.output
    assert committed_shards_are_intact(tmp_path / "c" / "train") == 1


# -- two collects, other settings ---------------------------------------------------------------------
def test_a_second_collect_is_refused_and_a_dead_holder_leaves_no_lock(tiny_encoder_dir, corpus, tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    held = DirLock(out)  # a collect running on this output
    with pytest.raises(SgddError, match=r"being written by pid \d+"):
        collect.run(config(tiny_encoder_dir, corpus, out))
    held.release()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(out / fmt.LOCK_FILE)!r}, os.O_RDWR)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"locked\n"
    with pytest.raises(SgddError, match="being written by"):
        collect.run(config(tiny_encoder_dir, corpus, out))
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert open_cache(collect.run(config(tiny_encoder_dir, corpus, out))).split("train").num_rows == 32


@pytest.mark.parametrize("change, message", [
    (dict(dtype="fp16"), "dtype: 'fp32' -> 'fp16'"),
    (dict(max_tokens=20), "filters.max_tokens: 64 -> 20"),
    (dict(min_words=6), "filters.min_words: 5 -> 6"),
    (dict(hidden_states=True, layer=1), "layer: None -> 1"),
    (dict(precision="bf16"), "precision: 'fp32' -> 'bf16'"),
    (dict(splits=["train:10"]), "max_rows: None -> 10"),
])
def test_other_settings_are_never_mixed(tiny_encoder_dir, corpus, tmp_path, change, message):
    out = tmp_path / "c"
    collect.run(config(tiny_encoder_dir, corpus, out, shard_size=100))
    with pytest.raises(SgddError, match=f"{message.replace('(', '[(]').replace(')', '[)]')}.*--overwrite"):
        collect.run(config(tiny_encoder_dir, corpus, out, shard_size=100, **change))


def test_other_weights_or_source_are_refused_and_overwrite_replaces_everything(tiny_encoder_dir, corpus, tmp_path):
    import shutil

    from transformers import AutoModel

    model = tmp_path / "model"
    shutil.copytree(tiny_encoder_dir, model)
    out = tmp_path / "c"
    collect.run(config(model, corpus, out, shard_size=100, splits=["train:10"]))
    corpus.write_text("\n".join(SENTENCES[:20]) + "\n")  # the source changed
    with pytest.raises(SgddError, match="source.sha256"):
        collect.run(config(model, corpus, out, shard_size=100, splits=["train:10"]))
    m = AutoModel.from_pretrained(str(model))
    with torch.no_grad():
        m.encoder.layer[0].output.dense.weight.add_(0.01)
    m.save_pretrained(str(model))  # the same model directory, fine-tuned in place
    with pytest.raises(SgddError, match="another encoder [(]weights_sha256"):
        collect.run(config(model, corpus, out, shard_size=100))
    split = open_cache(collect.run(config(model, corpus, out, shard_size=100, overwrite=True))).split("train")
    assert split.num_rows == 20 and split.settings["encoder"]["weights_sha256"] == open_cache(out).encoder_info["weights_sha256"]


def test_a_committed_shard_with_other_rows_is_refused(tiny_encoder_dir, corpus, tmp_path):
    """A source without a content hash (a streamed Hub dataset) that changed under a resume."""
    meta = {"path": "shard-00000", "rows": 3, "first_id": "a", "last_id": "c"}
    rows = [{"id": "a"}, {"id": "b"}, {"id": "x"}]
    with pytest.raises(SgddError, match="holds other rows than the source gives now"):
        check_committed(meta, rows, tmp_path)
    check_committed(meta, [{"id": "a"}, {"id": "b"}, {"id": "c"}], tmp_path)
