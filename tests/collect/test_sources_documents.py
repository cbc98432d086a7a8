"""Documents (the unit of a causal LM's windows): whole texts, cleaned line by line, line breaks kept."""

import json

import pytest

from sgdd.errors import SgddError
from sgdd.stages.collect.sources import get_source


def test_local_and_hf_documents_keep_line_breaks(tmp_path):
    rows = [{"text": "First line of it.\nSecond  line [3] here.\n\n"}, {"text": "  "}, {"text": "One more."}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for source in (get_source(str(tmp_path / "train.jsonl")), get_source(f"hf:{tmp_path}")):
        stats = {}
        docs = list(source.documents("train", stats))
        assert [d.text for d in docs] == ["First line of it.\nSecond line here.", "One more."]
        assert stats == {"empty": 1}
        assert docs[0].id.endswith("-0") and docs[1].id.endswith("-2")


def test_pairs_have_no_documents(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"a": "x y", "b": "y x"}) + "\n")
    with pytest.raises(SgddError, match="holds paraphrase pairs"):
        get_source(str(tmp_path / "p.jsonl"), source_field="a", target_field="b").documents("train", {})


def test_real_wiki_documents_are_whole_articles(shared_data):
    import itertools

    stats = {}
    docs = list(itertools.islice(get_source("wiki", data_dir=str(shared_data / "wiki")).documents("validation", stats), 5))
    assert stats["articles"] == 5 and any("\n" in d.text for d in docs)  # section titles kept as lines
    assert len({d.id for d in docs}) == 5 and not any("(;" in d.text for d in docs)
