"""python -m bench.probe_trust [--kills N] [--keep DIR]

Replays every way found to get a silently wrong result or a traceback from a cache, a run or a
checkpoint, on a tiny encoder, cache and run built in-process, and counts the outcomes:

    detected   exit status 1 with one `Error:` line (and no temporary file left behind)
    silent     exit status 0 although the input is wrong
    traceback  any other exception, or more than one line
    ok         a case that must work (a moved run resumes, ...) and did

Disk full is real when a small tmpfs can be mounted here (root), else simulated by making the
safetensors writer raise the error a full disk gives; the report says which. kill -9 at random
moments of collect and train must still resume to exactly what a clean run gives.
Goal: 0 silent, 0 traceback, every kill resumed exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--set", "model.n_layers=1", "--set", "model.d_model=32", "--set", "model.n_heads=2",
              "--set", "model.max_len=16", "--set", "model.cond_tokens=2", "--set", "optim.batch_size=4",
              "--set", "optim.warmup_steps=2", "--set", "eval_batches=1", "--set", "log_every=1", "--set", "val_split=train",
              "--precision", "fp32", "--device", "cpu"]
EVAL = ["--split", "train", "--steps", "2", "--device", "cpu", "--precision", "fp32", "--max-samples", "2"]
TEMP_MARKERS = (".tmp-", ".old-")


class Probe:
    def __init__(self, work: Path):
        self.work = work
        self.rows: list[tuple[str, str, str]] = []

    # -- running one command ----------------------------------------------------------------------
    def cli(self, *args) -> tuple[int, str, BaseException | None]:
        from sgdd.cli import cli

        r = CliRunner().invoke(cli, [str(a) for a in args])
        return r.exit_code, r.output, r.exception

    def expect_error(self, name: str, *args, clean: Path | None = None) -> None:
        code, out, exc = self.cli(*args)
        errors = error_lines(out)
        if code == 0:
            outcome, detail = "silent", out.strip().splitlines()[-1][:110] if out.strip() else ""
        elif code == 1 and isinstance(exc, SystemExit) and len(errors) == 1 and "Traceback" not in out:
            outcome, detail = "detected", errors[0][:150]
        else:
            outcome, detail = "traceback", f"{type(exc).__name__}: {str(exc).splitlines()[0][:110] if str(exc) else ''}"
        left = leftovers(clean) if clean is not None else []
        if outcome == "detected" and left:
            outcome, detail = "traceback", f"temporary files left: {left[:3]}"
        self.rows.append((name, outcome, detail))

    def expect_ok(self, name: str, check, *args) -> None:
        code, out, exc = self.cli(*args)
        good = code == 0 and check()
        detail = "" if good else (out.strip().splitlines() or [""])[-1][:150]
        self.rows.append((name, "ok" if good else ("silent" if code == 0 else "traceback"), detail))

    def record(self, name: str, good: bool, detail: str) -> None:
        self.rows.append((name, "ok" if good else "silent", detail))


def error_lines(output: str) -> list[str]:
    """The `Error:` lines of a command's output (a progress bar may share the line: cut it off)."""
    return [line[line.index("Error:"):] for line in output.replace("\r", "\n").splitlines() if "Error:" in line]


def leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if any(m in p.name for m in TEMP_MARKERS)] \
        if root.exists() else []


def flip(path: Path, offset: int, mask: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def copy(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    return Path(shutil.copytree(src, dst, symlinks=True))


# ------------------------------------------------------------------------------------------------
# the world the cases damage
# ------------------------------------------------------------------------------------------------
def build(work: Path, p: Probe) -> dict:
    from tests.helpers import SENTENCES, build_encoder_dir

    enc = build_encoder_dir(work / "encoder")
    other = copy(enc, work / "encoder-perturbed")  # another encoder: the same model, weights nudged
    from safetensors.torch import load_file, save_file

    w = load_file(str(other / "model.safetensors"))
    save_file({k: v + 1e-3 * torch.randn_like(v) if v.is_floating_point() else v for k, v in w.items()},
              str(other / "model.safetensors"))
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    base = ["--dataset", corpus, "--shard-size", "6", "--batch-size", "4", "--precision", "fp32", "--dtype", "fp16"]
    caches = {}
    for name, model, extra in (("cache", enc, []), ("foreign", other, []), ("cls", enc, ["--pooling", "cls"])):
        code, out, exc = p.cli("collect", "--model", model, "--out", work / name, *base, *extra)
        assert code == 0, out
        caches[name] = work / name
    run = work / "run"
    code, out, exc = p.cli("train", "--shards", caches["cache"], "--out", run, *TINY_TRAIN,
                           "--set", "optim.max_steps=4", "--set", "ema_decay=0.9", "--set", "eval_every=2")
    assert code == 0, out
    return {"enc": enc, "other": other, "base": base, "run": run, **caches}


# ------------------------------------------------------------------------------------------------
# the cases
# ------------------------------------------------------------------------------------------------
def foreign_encoder(p: Probe, w: dict, work: Path) -> None:
    p.expect_error("eval on another encoder's cache", "eval", "--run", w["run"], "--shards", w["foreign"], *EVAL)
    p.expect_error("eval on a cache with other pooling", "eval", "--run", w["run"], "--shards", w["cls"], *EVAL)
    p.expect_error("invert with another encoder's cache", "invert", "--run", w["run"], "--shards", w["foreign"],
                   "--device", "cpu", "the cat sat on the mat .")
    p.expect_error("--init-from onto another encoder's cache", "train", "--shards", w["foreign"], "--out",
                   work / "p2", "--init-from", w["run"], *TINY_TRAIN, "--set", "optim.max_steps=2")
    cache = copy(w["cache"], work / "recollected")
    run = work / "r-recollect"
    code, out, _ = p.cli("train", "--shards", cache, "--out", run, *TINY_TRAIN, "--set", "optim.max_steps=6",
                         "--set", "save_every=2", "--set", "eval_every=0")
    shutil.rmtree(run / "checkpoints/best")
    edit_json(run / "checkpoints/last/model.json", lambda m: m.update(step=2))  # pretend: stopped early
    code, out, _ = p.cli("collect", "--model", w["other"], "--out", cache, *w["base"], "--overwrite")
    p.expect_error("train --resume after re-collecting the cache with another encoder", "train", "--shards", cache,
                   "--out", run, *TINY_TRAIN, "--set", "optim.max_steps=6", "--set", "save_every=2",
                   "--set", "eval_every=0", "--resume")


def encoder_files(p: Probe, w: dict, work: Path) -> None:
    c = copy(w["cache"], work / "c-emb")
    flip(c / "encoder/embeddings.safetensors", -5)
    p.expect_error("flipped byte in encoder/embeddings.safetensors: verify", "cache", "verify", c)
    p.expect_error("flipped byte in encoder/embeddings.safetensors: train", "train", "--shards", c, "--out",
                   work / "r-emb", *TINY_TRAIN, "--set", "optim.max_steps=1")
    c = copy(w["cache"], work / "c-tok")
    t = c / "encoder/tokenizer.json"
    t.write_text(t.read_text().replace('"cat"', '"cot"'))
    p.expect_error("edited tokenizer.json: verify", "cache", "verify", c)
    p.expect_error("edited tokenizer.json: eval", "eval", "--run", w["run"], "--shards", c, *EVAL)


def manifests(p: Probe, w: dict, work: Path) -> None:
    c = copy(w["cache"], work / "c-dtype")
    edit_json(c / "train/manifest.json", lambda m: m["arrays"]["vectors"].update(dtype="bf16"))
    p.expect_error("manifest says bf16 for fp16 vectors: verify", "cache", "verify", c)
    p.expect_error("manifest says bf16 for fp16 vectors: train", "train", "--shards", c, "--out", work / "r-dt",
                   *TINY_TRAIN, "--set", "optim.max_steps=1")
    c = copy(w["cache"], work / "c-rows")
    edit_json(c / "train/manifest.json", lambda m: m.update(num_rows=m["num_rows"] - 2))
    p.expect_error("num_rows lowered: verify", "cache", "verify", c)
    p.expect_error("num_rows lowered: eval", "eval", "--run", w["run"], "--shards", c, *EVAL)
    c = copy(w["cache"], work / "c-shard")

    def drop(m):
        m["num_rows"] -= m["shards"][-1]["rows"]
        m["shards"].pop()
    edit_json(c / "train/manifest.json", drop)
    p.expect_error("shard entry removed: verify", "cache", "verify", c)
    p.expect_error("shard entry removed: train", "train", "--shards", c, "--out", work / "r-sh", *TINY_TRAIN,
                   "--set", "optim.max_steps=1")


def checkpoints(p: Probe, w: dict, work: Path) -> None:
    from safetensors import safe_open

    run = copy(w["run"], work / "r-flip")
    ema = run / "checkpoints/best/ema.safetensors"
    header = int.from_bytes(ema.read_bytes()[:8], "little")
    with safe_open(str(ema), "pt") as f:
        key = next(iter(f.keys()))
    flip(ema, 8 + header + 3, 0x7F)  # the exponent byte of the first float of the first tensor
    p.expect_error(f"flipped exponent byte in best/ema.safetensors ({key}): eval", "eval", "--run", run, *EVAL)
    flip(run / "checkpoints/last/model.safetensors", -2)
    p.expect_error("flipped byte in last/model.safetensors: resume", "train", "--shards", w["cache"], "--out", run,
                   *TINY_TRAIN, "--set", "optim.max_steps=4", "--set", "ema_decay=0.9", "--set", "eval_every=2",
                   "--resume")
    for what, damage in (("header-corrupted", lambda d: b"\xff" * 8 + d[8:]), ("truncated", lambda d: d[: len(d) // 2])):
        for hashed in (True, False):
            run = copy(w["run"], work / "r-head")
            best = run / "checkpoints/best"
            if not hashed:  # as written before checkpoints recorded their sha256s
                edit_json(best / "model.json", lambda m: m.pop("files"))
            path = best / "ema.safetensors"
            path.write_bytes(damage(path.read_bytes()))
            p.expect_error(f"{what} checkpoint ({'with' if hashed else 'without'} sha256s): eval", "eval", "--run",
                           run, *EVAL)
    run = copy(w["run"], work / "r-trainer")

    class NotWeights:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"version": 2, "x": NotWeights()}, run / "checkpoints/last/trainer.pt")
    p.expect_error("trainer.pt holding a pickled object: resume", "train", "--shards", w["cache"], "--out", run,
                   *TINY_TRAIN, "--set", "optim.max_steps=4", "--set", "ema_decay=0.9", "--set", "eval_every=2",
                   "--resume")
    (run / "checkpoints/last/trainer.pt").write_bytes(b"PK\x03\x04garbage")
    p.expect_error("trainer.pt truncated: resume", "train", "--shards", w["cache"], "--out", run, *TINY_TRAIN,
                   "--set", "optim.max_steps=4", "--set", "ema_decay=0.9", "--set", "eval_every=2", "--resume")


def one_line(p: Probe, w: dict, work: Path) -> None:
    from tests.helpers import make_pickle_only

    p.expect_error("--max-tokens 603 above the encoder's positions", "collect", "--model", w["enc"], "--out",
                   work / "c-long", *w["base"], "--max-tokens", 603)
    model = make_pickle_only(copy(w["enc"], work / "pickled-model"))
    p.expect_error("pickle-only model dir: collect", "collect", "--model", model, "--out", work / "c-pk", *w["base"])
    p.expect_error("YAML python tag through --set", "train", "--shards", w["cache"], "--out", work / "r-yaml",
                   "--set", "seed=!!python/object/apply:os.getcwd []")
    c = copy(w["cache"], work / "c-sj")
    sj = c / "train/shard-00001/shard.json"
    sj.write_text(sj.read_text()[:50])
    p.expect_error("truncated shard.json met on resume", "collect", "--model", w["enc"], "--out", c, *w["base"])


def disk_full(p: Probe, w: dict, work: Path) -> str:
    """Real ENOSPC on a small tmpfs filled to N KiB free, at several levels; else a patched writer."""
    mnt = work / "tmpfs"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                             capture_output=True).returncode == 0
    if not mounted:
        return disk_full_patched(p, w, work)
    try:
        for free_kib in (0, 8, 16, 24, 32, 48, 64, 128, 256):
            for stage in ("collect", "train"):
                for q in mnt.iterdir():
                    shutil.rmtree(q) if q.is_dir() else q.unlink()
                filler = mnt / "filler"
                with open(filler, "wb") as f:
                    f.write(b"\0" * max(0, shutil.disk_usage(mnt).free - free_kib * 1024))
                out = mnt / "out"
                args = (["collect", "--model", w["enc"], "--out", out, *w["base"]] if stage == "collect" else
                        ["train", "--shards", w["cache"], "--out", out, *TINY_TRAIN, "--set", "optim.max_steps=2",
                         "--set", "ema_decay=0.9"])
                code, text, exc = p.cli(*args)
                name = f"disk full ({free_kib} KiB free): {stage}"
                if code == 0:
                    p.rows.append((name, "ok", "fits"))
                else:
                    errors = error_lines(text)
                    left = leftovers(out)
                    good = code == 1 and isinstance(exc, SystemExit) and len(errors) == 1 and not left
                    detail = (errors[0][:150] if errors else f"{type(exc).__name__}: {str(exc)[:110]}") + \
                        (f" LEFT {left[:3]}" if left else "")
                    p.rows.append((name, "detected" if good else "traceback", detail))
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # a leaked file descriptor: detach
    return "a real 4 MiB tmpfs filled to 0..256 KiB free"


def disk_full_patched(p: Probe, w: dict, work: Path) -> str:
    from safetensors import SafetensorError

    from sgdd.cache import writer
    from sgdd.models import checkpoint

    def full(*a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    saved = writer.save_file, checkpoint.save_file
    writer.save_file = checkpoint.save_file = full
    try:
        p.expect_error("disk full (patched) in collect", "collect", "--model", w["enc"], "--out", work / "c-full",
                       *w["base"], clean=work / "c-full")
        p.expect_error("disk full (patched) in a train checkpoint", "train", "--shards", w["cache"], "--out",
                       work / "r-full", *TINY_TRAIN, "--set", "optim.max_steps=2", clean=work / "r-full")
    finally:
        writer.save_file, checkpoint.save_file = saved
    return "patched: the safetensors writer raises the error a full disk gives (mount is not allowed here)"


def smaller(p: Probe, w: dict, work: Path) -> None:
    c = copy(w["cache"], work / "c-dots")
    edit_json(c / "train/manifest.json", lambda m: m["shards"][0]["files"].update({"../../x": 1}))
    p.expect_error("verify: a files entry with ../", "cache", "verify", c)
    c = copy(w["cache"], work / "c-link")
    rows = c / "train/shard-00000/rows.arrow"
    shutil.move(rows, work / "outside.arrow")
    os.symlink(work / "outside.arrow", rows)
    p.expect_error("verify: a symlinked rows.arrow", "cache", "verify", c)
    p.expect_error("cache verify FILE", "cache", "verify", w["cache"] / "train/manifest.json")
    run = copy(w["run"], work / "r-fin")
    before = (run / "metrics.jsonl").read_text()
    args = ["train", "--shards", w["cache"], "--out", run, *TINY_TRAIN, "--set", "optim.max_steps=4",
            "--set", "ema_decay=0.9", "--set", "eval_every=2", "--resume"]
    p.expect_ok("--resume of a finished run adds no line", lambda: (run / "metrics.jsonl").read_text() == before, *args)
    src = work / "r-move-a"
    p.cli("train", "--shards", w["cache"], "--out", src, *TINY_TRAIN, "--set", "optim.max_steps=4",
          "--set", "save_every=2", "--set", "eval_every=0")
    shutil.rmtree(src / "checkpoints/best")
    edit_json(src / "checkpoints/last/model.json", lambda m: m.update(step=2))
    moved = work / "r-move-b"
    os.rename(src, moved)
    p.expect_ok("a moved run directory resumes", lambda: (moved / "checkpoints/best/model.json").is_file(),
                "train", "--shards", w["cache"], "--out", moved, *TINY_TRAIN, "--set", "optim.max_steps=4",
                "--set", "save_every=2", "--set", "eval_every=0", "--resume")


# ------------------------------------------------------------------------------------------------
# kill -9 at random moments, then resume: exactly what a clean run gives
# ------------------------------------------------------------------------------------------------
def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def kill_collect(p: Probe, w: dict, work: Path, rng: random.Random, i: int) -> None:
    from sgdd.cache import open_cache

    out = work / f"kill-c{i}"
    argv = [sys.executable, "-m", "sgdd.cli", "collect", "--model", str(w["enc"]), "--out", str(out),
            *[str(a) for a in w["base"]], "--shard-size", "2"]
    proc = subprocess.Popen(argv, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    target = rng.randint(1, 10)  # committed shards before the kill
    while proc.poll() is None and time.monotonic() < deadline:
        if len(list((out / "train").glob("shard-*"))) >= target if (out / "train").is_dir() else False:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    code, text, _ = p.cli("collect", "--model", w["enc"], "--out", out, *w["base"], "--shard-size", "2")
    clean = work / "kill-clean-c"
    if not clean.exists():
        p.cli("collect", "--model", w["enc"], "--out", clean, *w["base"], "--shard-size", "2")
    same = code == 0 and all(
        open_cache(out).split(s).table.column("id").to_pylist() == open_cache(clean).split(s).table.column("id").to_pylist()
        and torch.equal(open_cache(out).split(s).array("vectors"), open_cache(clean).split(s).array("vectors"))
        for s in ("train",))
    verify = p.cli("cache", "verify", out)[0] == 0
    p.record(f"kill -9 of collect after ~{target} shards, resumed", same and verify,
             "" if same and verify else f"resumed cache differs or fails verify: {text[-200:]}")


def kill_train(p: Probe, w: dict, work: Path, rng: random.Random, i: int) -> None:
    from safetensors.torch import load_file

    steps = 12
    args = ["--shards", str(w["cache"]), *TINY_TRAIN, "--set", f"optim.max_steps={steps}", "--set", "save_every=1",
            "--set", "ema_decay=0.9", "--set", "eval_every=3"]
    out = work / f"kill-t{i}"
    proc = subprocess.Popen([sys.executable, "-m", "sgdd.cli", "train", "--out", str(out), *args], env=env(),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = rng.randint(1, steps - 2)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads((out / "checkpoints/last/model.json").read_text())["step"] >= target:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    code, text, _ = p.cli("train", "--out", out, *args, "--resume")
    clean = work / "kill-clean-t"
    if not clean.exists():
        p.cli("train", "--out", clean, *args)
    same = code == 0
    for name in ("model.safetensors", "ema.safetensors"):
        if same:
            a, b = load_file(str(out / "checkpoints/last" / name)), load_file(str(clean / "checkpoints/last" / name))
            same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    p.record(f"kill -9 of train at step >= {target}, resumed", same,
             "" if same else f"resumed weights differ from a clean run: {text[-200:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=2, help="kill -9 rounds of collect and of train each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="build in this directory and keep it (default: a temporary one)")
    a = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="probe-trust-"))
    work.mkdir(parents=True, exist_ok=True)
    p = Probe(work)
    rng = random.Random(a.seed)
    started = time.perf_counter()
    try:
        w = build(work, p)
        for case in (foreign_encoder, encoder_files, manifests, checkpoints, one_line, smaller):
            case(p, w, work)
        how = disk_full(p, w, work)
        for i in range(a.kills):
            kill_collect(p, w, work, rng, i)
            kill_train(p, w, work, rng, i)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(n) for n, _, _ in p.rows)
    for name, outcome, detail in p.rows:
        print(f"{name:<{width}}  {outcome:<9}  {detail}")
    counts = {k: sum(o == k for _, o, _ in p.rows) for k in ("detected", "silent", "traceback", "ok")}
    print(f"\ndisk full: {how}")
    print(f"{len(p.rows)} cases in {time.perf_counter() - started:.0f}s: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    sys.exit(0 if counts["silent"] == 0 and counts["traceback"] == 0 else 1)


if __name__ == "__main__":
    main()
