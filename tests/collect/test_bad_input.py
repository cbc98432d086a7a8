"""Bad input to `sgdd collect`: each case gives one clear error or a counted, reported skip,
never a crash and never a silently wrong row."""

import json

import pytest

from sgdd.cache import open_cache
from sgdd.stages.collect.config import CollectConfig
from sgdd.errors import SgddError
from sgdd.stages import collect

GOOD = "the cat sat on the mat in the warm sun."  # already clean: stored as is


def run(encoder_dir, tmp_path, data: bytes, suffix=".txt", **kw):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    cfg = CollectConfig(model=str(encoder_dir), dataset=str(path), out=str(tmp_path / "cache"), dtype="fp32",
                        precision="fp32", **kw)
    return open_cache(collect.run(cfg)).split("train")


@pytest.mark.parametrize("data, stats", [
    (b"", "nothing to read"),
    (b"\n\n   \n\t\n", "'empty': 4"),
])
def test_empty_inputs_are_one_clear_error(tiny_encoder_dir, tmp_path, data, stats):
    with pytest.raises(SgddError, match=f"empty after filtering .dropped: {{?{stats}"):
        run(tiny_encoder_dir, tmp_path, data)


def test_invalid_utf8_nul_and_control_characters_are_counted_skips(tiny_encoder_dir, tmp_path):
    lines = [GOOD.encode(), b"the \xff\xfe cat sat on the mat", "the cat\x00 sat on the mat in the sun".encode(),
             "the cat sat \x1b[31m on the red mat".encode(), "a dog ran across the green field.".encode()]
    split = run(tiny_encoder_dir, tmp_path, b"\n".join(lines) + b"\n")
    assert split.column("text") == [GOOD, "a dog ran across the green field."]
    assert split.manifest["filter_stats"] == {"invalid_utf8": 1, "control_chars": 2}


def test_a_1mb_line_is_a_counted_skip(tiny_encoder_dir, tmp_path):
    huge = ("word " * 210_000).encode()  # ~1 MB
    split = run(tiny_encoder_dir, tmp_path, huge + b"\n" + GOOD.encode() + b"\n")
    assert split.column("text") == [GOOD] and split.manifest["filter_stats"] == {"word_count": 1}


def test_mixed_scripts_and_emoji_are_kept_exactly(tiny_encoder_dir, tmp_path):
    text = "Der Bär 🐻 läuft über die Brücke — Москва 東京 مرحبا 👩‍👩‍👧 café"
    split = run(tiny_encoder_dir, tmp_path, f"{text}\n".encode())
    assert split.column("text") == [text]
    ids = split.column("input_ids")[0]
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) > 3  # <s> ... </s>, unknown words as <unk>


def test_jsonl_bad_rows_are_counted(tiny_encoder_dir, tmp_path):
    rows = [json.dumps({"text": GOOD}), "{not json", json.dumps(["a", "list"]), json.dumps({"text": 42}),
            '{"text": "lone \\ud800 surrogate in the middle of a sentence"}', "", "   "]
    split = run(tiny_encoder_dir, tmp_path, "\n".join(rows).encode(), suffix=".jsonl")
    assert split.column("text") == [GOOD]
    assert split.manifest["filter_stats"] == {"invalid_json_or_utf8": 1, "not_an_object": 1, "not_text": 1,
                                              "invalid_unicode": 1, "empty": 2}


def test_bad_paths_models_and_names_are_one_clear_error(tiny_encoder_dir, tmp_path):
    def cfg(model=tiny_encoder_dir, dataset=None, **kw):
        return CollectConfig(model=str(model), dataset=str(dataset), out=str(tmp_path / "c"), **kw)

    corpus = tmp_path / "c.txt"
    corpus.write_text(GOOD + "\n")
    cases = [
        (cfg(dataset=tmp_path / "missing.txt"), "data file .*missing.txt does not exist"),
        (cfg(dataset=tmp_path), "is a directory; --dataset takes a file"),
        (cfg(dataset="wikii"), "unknown dataset 'wikii'.*did you mean 'wiki'"),
        (cfg(dataset="qpp"), "did you mean 'qqp'"),
        (cfg(model=tmp_path, dataset=corpus), "is not a model directory .no config.json."),
        (cfg(model=tmp_path / "nothing-here", dataset=corpus), "Hub cannot be reached; pass --model DIR"),
    ]
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((tiny_encoder_dir / "config.json").read_text())
    cases.append((cfg(model=bare, dataset=corpus), "has no tokenizer files"))
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    (gguf_dir / "m.gguf").write_bytes(b"GGUF")
    cases.append((cfg(model=gguf_dir, dataset=corpus), "no config.json.; pass --gguf-file m.gguf"))
    cases.append((cfg(model=gguf_dir, dataset=corpus, gguf_file="x.gguf"), "has no GGUF file 'x.gguf' .found: m.gguf"))
    for c, message in cases:
        with pytest.raises(SgddError, match=message):
            collect.run(c)


def test_bad_collect_settings_are_listed_together():
    from sgdd.config import from_dict

    with pytest.raises(SgddError) as e:
        from_dict(CollectConfig, {"stride": 600, "model_kind": "llm", "source_field": "q", "gguf_file": "m.bin",
                                  "shard_size": 0})
    for part in ("stride <= sample_size", "model_kind must be", "source_field and target_field", "gguf_file",
                 "shard_size must be positive"):
        assert part in str(e.value)
