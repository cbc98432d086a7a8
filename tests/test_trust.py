"""Trust boundaries: a cache, a run and a checkpoint are what they claim to be, and every failure
is one line with exit status 1. One test per way of getting a silently wrong result or a
traceback that was found by probing."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import SafetensorError

from sgdd.cache import format as fmt
from sgdd.cli import cli
from sgdd.errors import SgddError
from sgdd.stages.train import fit
from tests.helpers import SENTENCES, build_cache, make_pickle_only
from tests.train.helpers import metrics, one_thread, tiny_cfg  # noqa: F401 (fixture)

EVAL = ["--split", "test", "--steps", "2", "--device", "cpu", "--precision", "fp32", "--max-samples", "2"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(r, *needles: str) -> str:
    """Exit status 1, no traceback, exactly one `Error:` line holding every needle."""
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # not an uncaught exception
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def cache(tmp_path, tiny_cache) -> Path:
    """A copy of the tiny cache that a test may damage."""
    return Path(shutil.copytree(tiny_cache, tmp_path / "cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_cache) -> Path:
    """A finished tiny run (validation at the end) on the tiny cache."""
    out = tmp_path_factory.mktemp("run") / "run"
    torch.set_num_threads(1)
    fit(tiny_cfg(tiny_cache, out, **{"optim.max_steps": 2}))
    return out


def run_copy(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def rewrite_manifest(split_dir: Path, change) -> None:
    path = split_dir / fmt.MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


# --------------------------------------------------------------------------------------------
# 1. a run knows its encoder
# --------------------------------------------------------------------------------------------
def test_a_run_records_its_encoder_identity(trained):
    meta = json.loads((trained / "checkpoints/best/model.json").read_text())
    assert meta["encoder"]["weights_sha256"] == "0" * 64 and meta["encoder"]["tokenizer_sha256"] == "1" * 64
    assert meta["encoder"]["dtype"] == "fp32"
    assert set(meta["encoder"]) == {"model", "weights_sha256", "tokenizer_sha256", "kind", "pooling", "layer",
                                    "dtype", "precision"}


def test_eval_refuses_another_encoders_cache_unless_allowed(trained, tmp_path):
    foreign = build_cache(tmp_path / "foreign", encoder={"weights_sha256": "f" * 64})
    r = invoke("eval", "--run", trained, "--shards", foreign, *EVAL)
    one_line_error(r, "weights_sha256: 000000000000... -> ffffffffffff...", "--allow-foreign-cache")
    r = invoke("eval", "--run", trained, "--shards", foreign, "--allow-foreign-cache", "--out", tmp_path / "rep", *EVAL)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep/report.json").is_file()


def test_eval_refuses_a_cache_with_another_pooling(trained, tmp_path):
    other = build_cache(tmp_path / "cls", settings={"pooling": "cls"})
    one_line_error(invoke("eval", "--run", trained, "--shards", other, *EVAL), "pooling: None -> 'cls'")


def test_invert_refuses_another_encoders_cache(trained, tmp_path):
    foreign = build_cache(tmp_path / "foreign", encoder={"weights_sha256": "f" * 64})
    r = invoke("invert", "--run", trained, "--shards", foreign, "--device", "cpu", SENTENCES[0])
    one_line_error(r, "weights_sha256")


def test_resume_refuses_a_cache_recollected_in_place_by_another_encoder(tmp_path):
    cache = build_cache(tmp_path / "cache")
    fit(tiny_cfg(cache, tmp_path / "r", **{"optim.max_steps": 4}), stop_at=2)
    shutil.rmtree(cache)
    build_cache(cache, settings={"dtype": "fp32", "precision": "bf16"}, encoder={"weights_sha256": "e" * 64})
    with pytest.raises(SgddError, match=r"weights_sha256: .*precision: None -> 'bf16'\); pass --allow-foreign-cache"):
        fit(tiny_cfg(cache, tmp_path / "r", resume=True, **{"optim.max_steps": 4}))
    result = fit(tiny_cfg(cache, tmp_path / "r", resume=True, allow_foreign_cache=True, **{"optim.max_steps": 4}))
    assert result.step == 4


def test_init_from_refuses_another_encoders_cache_unless_allowed(trained, tmp_path):
    foreign = build_cache(tmp_path / "foreign", encoder={"weights_sha256": "f" * 64})
    with pytest.raises(SgddError, match="weights_sha256"):
        fit(tiny_cfg(foreign, tmp_path / "p2", init_from=str(trained)))
    assert fit(tiny_cfg(foreign, tmp_path / "p2", init_from=str(trained), allow_foreign_cache=True)).step == 4


# --------------------------------------------------------------------------------------------
# 2. verify covers encoder/
# --------------------------------------------------------------------------------------------
def test_a_flipped_byte_in_the_embeddings_is_found_by_verify_and_by_train(cache, tmp_path):
    flip_byte(cache / "encoder/embeddings.safetensors", -3)
    one_line_error(invoke("cache", "verify", cache), "encoder/embeddings.safetensors does not match its sha256")
    with pytest.raises(SgddError, match="embeddings.safetensors does not match its sha256"):
        fit(tiny_cfg(cache, tmp_path / "r"))


def test_an_edited_tokenizer_is_found_by_verify_and_by_eval(cache, trained, tmp_path):
    path = cache / "encoder/tokenizer.json"
    path.write_text(path.read_text().replace('"cat"', '"cot"'))
    one_line_error(invoke("cache", "verify", cache), "tokenizer.json does not match its sha256")
    one_line_error(invoke("eval", "--run", trained, "--shards", cache, *EVAL), "tokenizer.json")
    (cache / "encoder/added_tokens.json").write_text("{}")  # a file nobody recorded
    one_line_error(invoke("cache", "verify", cache), "added_tokens.json is not listed")
    path.unlink()
    one_line_error(invoke("cache", "verify", cache), "added_tokens.json is not listed")
    (cache / "encoder/added_tokens.json").unlink()
    one_line_error(invoke("cache", "verify", cache), "tokenizer.json is missing")


def test_a_cache_without_encoder_hashes_is_read_and_verify_says_so(cache):
    for split in ("train", "validation", "test"):
        rewrite_manifest(cache / split, lambda m: m.pop("encoder_files"))
    r = invoke("cache", "verify", cache)
    assert r.exit_code == 0 and "encoder/ NOT checked: this cache predates encoder hashes" in r.output


# --------------------------------------------------------------------------------------------
# 3. the manifest is cross-checked against the shards
# --------------------------------------------------------------------------------------------
def test_a_manifest_dtype_that_lies_is_refused(cache, tmp_path):
    rewrite_manifest(cache / "train", lambda m: m["arrays"]["vectors"].update(dtype="bf16"))
    one_line_error(invoke("cache", "verify", cache), "says array 'vectors' is bf16", "stores fp32")
    with pytest.raises(SgddError, match="says array 'vectors' is bf16"):
        fit(tiny_cfg(cache, tmp_path / "r"))


def test_an_edited_row_count_is_refused(cache, trained):
    rewrite_manifest(cache / "test", lambda m: m.update(num_rows=2))
    one_line_error(invoke("cache", "verify", cache), "num_rows=2 but its shards hold 4 rows")
    one_line_error(invoke("eval", "--run", trained, "--shards", cache, *EVAL), "num_rows=2")


def test_a_removed_shard_entry_is_refused(cache, tmp_path):
    def drop_last(m):
        m["num_rows"] -= m["shards"][-1]["rows"]
        m["shards"].pop()
    rewrite_manifest(cache / "train", drop_last)
    one_line_error(invoke("cache", "verify", cache), "does not list shard-00002")
    with pytest.raises(SgddError, match="does not list shard-00002"):
        fit(tiny_cfg(cache, tmp_path / "r"))


def test_an_edited_shard_entry_is_refused(cache):
    rewrite_manifest(cache / "train", lambda m: m["shards"][0].update(sha256="0" * 64))
    one_line_error(invoke("cache", "verify", cache), "differs from its shard.json in sha256")


# --------------------------------------------------------------------------------------------
# 4. checkpoints are verified
# --------------------------------------------------------------------------------------------
def test_a_flipped_byte_in_a_checkpoint_is_refused_by_eval_and_resume(trained, tiny_cache, tmp_path):
    run = run_copy(trained, tmp_path)
    flip_byte(run / "checkpoints/best/model.safetensors", -2)
    one_line_error(invoke("eval", "--run", run, *EVAL), "best/model.safetensors does not match the sha256")
    flip_byte(run / "checkpoints/last/model.safetensors", -2)
    with pytest.raises(SgddError, match=r"cannot resume: .*last/model.safetensors does not match.*--init-from"):
        fit(tiny_cfg(tiny_cache, run, resume=True, **{"optim.max_steps": 2}))


def test_a_corrupted_or_truncated_checkpoint_header_is_one_line(trained, tmp_path):
    run = run_copy(trained, tmp_path)
    best = run / "checkpoints/best"
    meta = json.loads((best / "model.json").read_text())
    (best / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "files"}))  # an older checkpoint
    path = best / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(b"\xff" * 8 + data[8:])  # header length garbage
    one_line_error(invoke("eval", "--run", run, *EVAL), "model.safetensors is unreadable")
    path.write_bytes(data[: len(data) // 2])  # truncated
    one_line_error(invoke("eval", "--run", run, *EVAL), "model.safetensors is unreadable")
    (best / "model.json").write_text('{"decoder": ')
    one_line_error(invoke("eval", "--run", run, *EVAL), "model.json is unreadable")


def test_a_bad_trainer_state_is_one_line(tiny_cache, tmp_path):
    fit(tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.max_steps": 4}), stop_at=2)
    state = tmp_path / "r/checkpoints/last/trainer.pt"

    class NotWeights:
        def __reduce__(self):
            return (print, ("unpickled",))

    torch.save({"version": 2, "evil": NotWeights()}, state)
    with pytest.raises(SgddError, match="holds objects other than tensors"):
        fit(tiny_cfg(tiny_cache, tmp_path / "r", resume=True, **{"optim.max_steps": 4}))
    state.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(SgddError, match="trainer.pt is unreadable"):
        fit(tiny_cfg(tiny_cache, tmp_path / "r", resume=True, **{"optim.max_steps": 4}))


# --------------------------------------------------------------------------------------------
# 5. one error path
# --------------------------------------------------------------------------------------------
def _disk_full(*args, **kwargs):
    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                          'message: "No space left on device" })')


def test_disk_full_while_collect_writes_the_encoder_files(tiny_encoder_dir, tmp_path, monkeypatch):
    from sgdd.cache import writer

    monkeypatch.setattr(writer, "save_file", _disk_full)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    r = invoke("collect", "--model", tiny_encoder_dir, "--dataset", corpus, "--out", tmp_path / "c", "--precision", "fp32")
    one_line_error(r, "No space left on device")
    assert not [p for p in (tmp_path / "c").iterdir() if ".tmp-" in p.name]


def test_disk_full_while_train_writes_a_checkpoint(tiny_cache, tmp_path, monkeypatch):
    from sgdd.models import checkpoint

    monkeypatch.setattr(checkpoint, "save_file", _disk_full)
    with pytest.raises(SgddError, match=r"writing the checkpoint .*checkpoints/(best|last) failed \(No space left on device\)"):
        fit(tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.max_steps": 2}))
    assert [p.name for p in (tmp_path / "r/checkpoints").iterdir()] == []  # no temporary directory left


def test_max_tokens_beyond_the_encoders_positions_is_one_line(tiny_encoder_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    r = invoke("collect", "--model", tiny_encoder_dir, "--dataset", corpus, "--out", tmp_path / "c",
               "--max-tokens", 603, "--max-words", 1000)
    one_line_error(r, "--max-tokens 603 exceeds the encoder's 78 positions")


def test_a_pickle_only_model_dir_is_one_line(tiny_encoder_dir, tmp_path):
    model = make_pickle_only(Path(shutil.copytree(tiny_encoder_dir, tmp_path / "m")))
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    r = invoke("collect", "--model", model, "--dataset", corpus, "--out", tmp_path / "c", "--precision", "fp32")
    one_line_error(r, "its pickled weights hold objects other than tensors")
    assert "unpickled" not in r.output


def test_a_yaml_python_tag_through_set_is_one_line(tiny_cache, tmp_path):
    r = invoke("train", "--shards", tiny_cache, "--out", tmp_path / "r", "--set", "seed=!!python/object/apply:os.getcwd []")
    one_line_error(r, "--set", "not a plain YAML scalar")


def test_a_truncated_shard_json_met_on_resume_is_one_line(tiny_encoder_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    argv = ["collect", "--model", tiny_encoder_dir, "--dataset", corpus, "--out", tmp_path / "c", "--precision",
            "fp32", "--shard-size", "10"]
    assert invoke(*argv).exit_code == 0
    shard = tmp_path / "c/train/shard-00001/shard.json"
    shard.write_text(shard.read_text()[:40])
    one_line_error(invoke(*argv), "shard-00001/shard.json is unreadable", "rerun the same command")


# --------------------------------------------------------------------------------------------
# 6. smaller ones
# --------------------------------------------------------------------------------------------
def test_verify_applies_the_readers_path_rules(cache, tmp_path):
    rewrite_manifest(cache / "test", lambda m: m["shards"][0]["files"].update({"../../outside": 3}))
    one_line_error(invoke("cache", "verify", cache), "points outside")


def test_verify_refuses_a_symlinked_rows_file(cache, tmp_path):
    rows = cache / "test/shard-00000/rows.arrow"
    outside = tmp_path / "elsewhere.arrow"
    shutil.move(rows, outside)
    os.symlink(outside, rows)
    one_line_error(invoke("cache", "verify", cache), "rows.arrow", "symbolic link")


def test_a_moved_run_directory_resumes(tiny_cache, tmp_path):
    fit(tiny_cfg(tiny_cache, tmp_path / "a", **{"optim.max_steps": 4}), stop_at=2)
    os.rename(tmp_path / "a", tmp_path / "b")
    assert fit(tiny_cfg(tiny_cache, tmp_path / "b", resume=True, **{"optim.max_steps": 4})).step == 4


def test_resuming_a_finished_run_adds_no_validation_line(trained, tiny_cache, tmp_path):
    run = run_copy(trained, tmp_path)
    before = metrics(run)
    assert sum("val_loss" in r for r in before) == 1
    fit(tiny_cfg(tiny_cache, run, resume=True, **{"optim.max_steps": 2}))
    assert metrics(run) == before


def test_verify_of_a_file_says_it_is_a_file(cache):
    one_line_error(invoke("cache", "verify", cache / "train/manifest.json"), "is a file, not a cache")
    one_line_error(invoke("cache", "verify", cache / "train"), "is one split of a cache")
