"""Sentence splitting, cleaning and the corpus readers."""

import json

import pytest

from sgdd.errors import SgddError
from sgdd.stages.collect.sources import get_source
from sgdd.stages.collect.sources.text import article_sentences, clean_text, split_sentences


def test_split_sentences_respects_abbreviations_and_initials():
    text = ("J. R. R. Tolkien wrote it in 1937. Mr. Smith moved to the U.S. Army base. "
            "It rained! Then \"Why?\" he asked. (Later) it stopped.")
    assert split_sentences(text) == [
        "J. R. R. Tolkien wrote it in 1937.",
        "Mr. Smith moved to the U.S. Army base.",
        "It rained!",
        "Then \"Why?\" he asked.",
        "(Later) it stopped.",
    ]


@pytest.mark.parametrize("raw, clean", [
    ("Daria Obratov (; born 12 December 1989) is a luger.", "Daria Obratov (born 12 December 1989) is a luger."),
    ("Dmitrović (, ) is a Serbian surname.", "Dmitrović is a Serbian surname."),
    ("The office ().", "The office."),
    ("Funds of 4.6 Trillion [9] from companies.", "Funds of 4.6 Trillion from companies."),
    ("League &lt;onlyinclude&gt;&lt;/onlyinclude&gt; standings", "League standings"),
    ("  many   spaces , here .", "many spaces, here."),
])
def test_clean_text_removes_dump_remnants(raw, clean):
    assert clean_text(raw) == clean


def test_article_sentences_drop_section_titles():
    text = "Anna is a painter who lives in the north.\nCareer.\nShe painted her first big work in 1999. It sold well."
    sentences, titles = article_sentences(text)
    assert sentences == ["Anna is a painter who lives in the north.", "She painted her first big work in 1999.", "It sold well."]
    assert titles == 1


def test_txt_source_counts_invalid_utf8_and_empty_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"first good line here\n\xff\xfe broken bytes\n\n   \nsecond good line\n")
    stats = {}
    records = list(get_source(str(path)).records("train", stats))
    assert [r.text for r in records] == ["first good line here", "second good line"]
    assert [r.id for r in records] == ["c-0", "c-4"]
    assert stats == {"invalid_utf8": 1, "empty": 2}


def test_jsonl_csv_parquet_sources_read_the_text_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in ["one two", "three four"]))
    (tmp_path / "a.csv").write_text("body,x\none two,1\nthree four,2\n")
    pq.write_table(pa.table({"body": ["one two", "three four"]}), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.csv", "a.parquet"):
        texts = [r.text for r in get_source(str(tmp_path / name), text_field="body").records("train", {})]
        assert texts == ["one two", "three four"], name
    with pytest.raises(SgddError, match="no column 'text'.*--text-field"):
        list(get_source(str(tmp_path / "a.csv")).records("train", {}))
    with pytest.raises(SgddError, match="no field 'text'"):
        list(get_source(str(tmp_path / "a.jsonl")).records("train", {}))


def test_bad_dataset_names_and_paths_give_one_clear_error(tmp_path):
    with pytest.raises(SgddError, match="did you mean 'wiki'"):
        get_source("wikki")
    with pytest.raises(SgddError, match="does not exist"):
        get_source(str(tmp_path / "missing.txt"))
    with pytest.raises(SgddError, match="holds none of"):
        get_source("wiki", data_dir=str(tmp_path))


def test_wiki_without_data_dir_fails_fast_offline(offline_hub):
    with pytest.raises(SgddError, match="--data-dir"):
        get_source("wiki")


def test_real_wiki_articles_give_clean_sentences(shared_data):
    import itertools

    source = get_source("wiki", data_dir=str(shared_data / "wiki"))
    stats = {}
    records = list(itertools.islice(source.records("validation", stats), 300))
    assert len({r.id for r in records}) == 300
    assert stats["articles"] > 5
    assert not any("(;" in r.text or "()" in r.text or "&lt;" in r.text for r in records)
