"""Paraphrase pair sources (qqp in both schemas, mrpc, flickr8k, any file with two fields),
Hugging Face streaming sources (offline, on local data), and streaming de-duplication."""

import json

import numpy as np
import pytest

from sgdd.errors import SgddError
from sgdd.stages.collect.sources import get_source
from sgdd.stages.collect.sources.dedup import SeenHashes


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def pairs(source, split="train"):
    stats = {}
    return [(r.id, r.source, r.text) for r in source.records(split, stats)], stats


def test_qqp_reads_diffuseq_and_glue_schemas(tmp_path):
    write_jsonl(tmp_path / "validation.jsonl", [{"src": "How do I cook rice?", "trg": "What is the way to cook rice?"}])
    write_jsonl(tmp_path / "train.jsonl", [
        {"question1": "Is it cold?", "question2": "Is it chilly?", "label": 1, "idx": 7},
        {"question1": "Is it red?", "question2": "Is it big?", "label": 0, "idx": 8},
    ])
    source = get_source("qqp", data_dir=str(tmp_path))
    assert source.kind == "pairs" and set(source.splits) == {"train", "validation"}
    assert pairs(source, "validation")[0] == [("qqp-validation-0", "How do I cook rice?", "What is the way to cook rice?")]
    got, stats = pairs(source, "train")
    assert got == [("qqp-train-7", "Is it cold?", "Is it chilly?")] and stats == {"not_paraphrase": 1}


def test_mrpc_keeps_positive_pairs_and_flickr8k_pairs_every_caption(tmp_path):
    (tmp_path / "m").mkdir()
    write_jsonl(tmp_path / "m" / "train.jsonl", [
        {"label": 1, "id1": "1", "id2": "2", "sentence1": "A b c.", "sentence2": "C b a."},
        {"label": 0, "id1": "3", "id2": "4", "sentence1": "X.", "sentence2": "Y."},
    ])
    got, stats = pairs(get_source("mrpc", data_dir=str(tmp_path / "m")))
    assert got == [("mrpc-train-1-2", "A b c.", "C b a.")] and stats == {"not_paraphrase": 1}
    (tmp_path / "f").mkdir()
    write_jsonl(tmp_path / "f" / "test.jsonl", [{"image": "42_a.jpg", "captions": ["one", "two", "three"]},
                                                 {"image": "43.jpg", "captions": ["alone"]}])
    got, stats = pairs(get_source("flickr8k", data_dir=str(tmp_path / "f")), "test")
    assert [(s, t) for _, s, t in got] == [("one", "two"), ("two", "three"), ("three", "one")]
    assert got[0][0] == "flickr8k-test-42_a-0" and stats == {"fewer_than_2_captions": 1}


def test_any_file_with_source_and_target_fields(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"q": ["first question here", ""], "p": ["its paraphrase here", "x"]}), tmp_path / "p.parquet")
    source = get_source(str(tmp_path / "p.parquet"), source_field="q", target_field="p")
    got, stats = pairs(source)
    assert got == [("p-0", "first question here", "its paraphrase here")] and stats == {"empty": 1}
    with pytest.raises(SgddError, match="no column 'q2'"):
        pairs(get_source(str(tmp_path / "p.parquet"), source_field="q2", target_field="p"))
    (tmp_path / "t.txt").write_text("a\n")
    with pytest.raises(SgddError, match="pairs need a .jsonl"):
        pairs(get_source(str(tmp_path / "t.txt"), source_field="a", target_field="b"))


def test_pair_datasets_without_data_fail_fast_offline(tmp_path, offline_hub):
    with pytest.raises(SgddError, match="cannot reach the Hugging Face Hub.*--data-dir"):
        get_source("qqp")
    with pytest.raises(SgddError, match="flickr8k has no Hugging Face copy"):
        get_source("flickr8k")
    with pytest.raises(SgddError, match="holds no <split>.jsonl"):
        get_source("mrpc", data_dir=str(tmp_path))


def test_real_pair_datasets(shared_data):
    import itertools

    for name, split, n in (("qqp", "validation", 2048), ("mrpc", "test", 1147)):
        got, stats = pairs(get_source(name, data_dir=str(shared_data / name)), split)
        assert len(got) == n and len({i for i, _, _ in got}) == n, name
    flickr = get_source("flickr8k", data_dir=str(shared_data / "flickr8k"))
    first = list(itertools.islice(flickr.records("validation", {}), 5))
    assert len({r.id for r in first}) == 5 and first[0].text == first[1].source


def test_paraphrase_mix_splits_qqp_and_keeps_test_pairs_out_of_training(tmp_path, monkeypatch):
    from sgdd.stages.collect.sources import pairs as pair_sources

    monkeypatch.setattr(pair_sources, "QQP_TRAIN_PAIRS", 2)
    monkeypatch.setattr(pair_sources, "QQP_VALIDATION_PAIRS", 1)
    for name in ("flickr8k", "mrpc", "qqp"):
        (tmp_path / name).mkdir()
    write_jsonl(tmp_path / "flickr8k" / "train.jsonl", [{"image": "1.jpg", "captions": ["a dog", "one dog"]}])
    write_jsonl(tmp_path / "mrpc" / "train.jsonl", [{"label": 1, "sentence1": "M one.", "sentence2": "M 1."}])
    write_jsonl(tmp_path / "qqp" / "validation.jsonl", [
        {"src": "Q a?", "trg": "Q b?"}, {"src": "Q c?", "trg": "Q d?"},  # train
        {"src": "Q e?", "trg": "Q f?"},  # validation
        {"src": "Q g?", "trg": "Q h?"}, {"src": "q D?", "trg": "Q i?"},  # test; the second was seen in train
    ])
    mix = get_source("paraphrase-mix", data_dir=str(tmp_path))
    train, _ = pairs(mix, "train")
    assert [(s, t) for _, s, t in train] == [
        ("a dog", "one dog"), ("one dog", "a dog"), ("M one.", "M 1."), ("M 1.", "M one."),
        ("Q a?", "Q b?"), ("Q b?", "Q a?"), ("Q c?", "Q d?"), ("Q d?", "Q c?")]
    assert len({i for i, _, _ in train}) == len(train)
    assert [(s, t) for _, s, t in pairs(mix, "validation")[0]] == [("Q e?", "Q f?")]
    test, stats = pairs(mix, "test")
    assert [(s, t) for _, s, t in test] == [("Q g?", "Q h?")] and stats == {"qqp_seen_in_train": 1}
    with pytest.raises(SgddError, match="lacks"):
        get_source("paraphrase-mix", data_dir=str(tmp_path / "flickr8k"))


def test_real_paraphrase_mix_keeps_qqp_test_out_of_training(shared_data):
    mix = get_source("paraphrase-mix", data_dir=str(shared_data))
    train, _ = pairs(mix, "train")
    test, stats = pairs(mix, "test")
    seen = {s.lower() for _, a, b in train for s in (a, b)}
    assert len(test) > 900 and stats["qqp_seen_in_train"] > 0
    assert not any(a.lower() in seen or b.lower() in seen for _, a, b in test)


# -- Hugging Face datasets, streamed ---------------------------------------------------------------
def test_hf_streaming_dataset_from_a_local_directory(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"body": "a first sentence"}, {"body": "<b>a second</b> one"}, {"body": 5}])
    write_jsonl(tmp_path / "validation.jsonl", [{"body": "held out"}])
    source = get_source(f"hf:{tmp_path}", text_field="body")
    assert set(source.splits) == {"train", "validation"} and source.fingerprint["files"]
    stats = {}
    records = list(source.records("train", stats))
    assert [(r.id, r.text) for r in records] == [(f"{tmp_path.name}-train-0", "a first sentence"),
                                                (f"{tmp_path.name}-train-1", "a second one")]
    assert stats == {"not_text": 1}
    with pytest.raises(SgddError, match="no column 'text'.*--text-field"):
        list(get_source(f"hf:{tmp_path}").records("train", {}))
    same = get_source("hf:json", data_dir=str(tmp_path), text_field="body")  # a packaged builder + --data-dir
    assert [r.text for r in same.records("validation", {})] == ["held out"]


def test_hf_pairs_and_a_hub_id_offline(tmp_path, offline_hub):
    write_jsonl(tmp_path / "train.jsonl", [{"a": "one two", "b": "two one"}])
    got, _ = pairs(get_source(f"hf:{tmp_path}", source_field="a", target_field="b"))
    assert got == [(f"{tmp_path.name}-train-0", "one two", "two one")]
    with pytest.raises(SgddError, match="cannot reach the Hugging Face Hub to stream 'someone/corpus'"):
        get_source("hf:someone/corpus:en")
    with pytest.raises(SgddError, match="hf:NAME"):
        get_source("hf:")


# -- de-duplication --------------------------------------------------------------------------------
def test_seen_hashes_match_a_set_across_flushes_in_8_bytes_each():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, 3000).tolist() * 2 + rng.integers(0, 2**63, 500).tolist()
    seen, reference = SeenHashes(flush_at=64), set()
    for k in keys:
        assert seen.first_seen(k) == (k not in reference)
        reference.add(k)
    assert len(seen) == len(reference)
    assert len(seen.levels) <= 8 and seen.nbytes <= 8 * len(reference)  # merged levels, 8 bytes per hash
