"""Dataset views: the sentence view and the next-block view (MTP head) of an LLM windows cache."""

import pytest
import torch

from sgdd.cache import open_cache
from sgdd.cache.views import next_block_view, sentence_view, view_for
from sgdd.cache.format import IGNORE_INDEX
from sgdd.errors import SgddError
from tests.helpers_views import build_windows_cache


@pytest.fixture(scope="module")
def windows_cache(tmp_path_factory):
    return build_windows_cache(tmp_path_factory.mktemp("views") / "llm")


@pytest.fixture
def split(windows_cache):
    return open_cache(windows_cache).split("train")


def enumerate_samples(split, L: int, tail: str) -> list[tuple[int, int]]:
    """Every (row, position) the view must hold, by brute force."""
    out = []
    for n, length in enumerate(split.column("length")):
        last = length - L if tail == "skip" else length - 1
        out += [(n, l) for l in range(last + 1)]
    return out


@pytest.mark.parametrize("tail", ["skip", "ignore"])
@pytest.mark.parametrize("L", [1, 4])
def test_next_block_sample_is_hidden_state_and_the_base_models_next_tokens(split, tail, L):
    view = next_block_view(split, L, tail)
    expected = enumerate_samples(split, L, tail)
    assert len(view) == len(expected)
    rows, pos = view.locate(torch.arange(len(view)))
    assert list(zip(rows.tolist(), pos.tolist())) == expected  # each (row, position) exactly once
    batch = view.batch(torch.arange(len(view)))
    hidden = split.array("hidden").float()
    outputs, lengths = split.column("output_ids"), split.column("length")
    for i, (n, l) in enumerate(expected):
        assert torch.equal(batch.cond[i], hidden[n, l])  # h_l, which predicted output_ids[n, l]
        block = outputs[n][l:l + L]
        assert batch.x0[i, :len(block)].tolist() == block  # t_l .. t_{l+L-1}
        assert batch.x0[i, len(block):].eq(IGNORE_INDEX).all()
        assert len(block) == min(L, lengths[n] - l)
    assert batch.x0.shape == (len(view), L) and batch.cond.shape[1] == 36


def test_skip_never_has_ignored_labels_and_ignore_keeps_every_position(split):
    skip, ignore = next_block_view(split, 4, "skip"), next_block_view(split, 4, "ignore")
    assert not (skip.batch(torch.arange(len(skip))).x0 == IGNORE_INDEX).any()
    x0 = ignore.batch(torch.arange(len(ignore))).x0
    lengths = torch.tensor(split.column("length"))
    assert len(ignore) == int(lengths.sum()) and len(skip) == int((lengths - 3).clamp_min(0).sum())
    real = (x0 != IGNORE_INDEX).sum(1)
    assert real.min() == 1 and real.max() == 4  # the last position of a window has one real label


def test_block_longer_than_every_window(split):
    with pytest.raises(SgddError, match="no window .* full block of 9"):
        next_block_view(split, 9, "skip")
    assert len(next_block_view(split, 9, "ignore")) == sum(split.column("length"))


def test_max_rows_limits_the_windows(split):
    view = next_block_view(split, 4, "skip", max_rows=3)
    rows, _ = view.locate(torch.arange(len(view)))
    assert rows.max() == 2 and len(view) == len(enumerate_samples(split, 4, "skip")[: len(view)])


def test_hidden_states_are_read_lazily(split, monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("the whole hidden array must not be read")

    monkeypatch.setattr(type(split), "array", refuse)
    view = next_block_view(split, 4, "skip")
    assert view.batch(torch.tensor([0, 7, 30])).cond.shape == (3, 36)


def test_auto_view_follows_the_cache_kind(split, tiny_cache):
    assert view_for(split, "auto") == "next_block"
    assert view_for(open_cache(tiny_cache).split("train"), "auto") == "sentence"
    assert view_for(split, "sentence") == "sentence"
    with pytest.raises(SgddError, match="valid: auto, sentence, next_block"):
        view_for(split, "rows")


def test_a_view_refuses_a_cache_of_the_other_kind(split, tiny_cache):
    with pytest.raises(SgddError, match="sentence view needs a sentence .or pair. cache"):
        sentence_view(split, 16, 1)
    with pytest.raises(SgddError, match="cannot feed the next_block view.*kind is 'sentences'.*no per-token hidden"):
        next_block_view(open_cache(tiny_cache).split("train"), 4)


def test_sentence_view_batch_is_its_rows(tiny_cache):
    view = sentence_view(open_cache(tiny_cache).split("train"), 16, 1)
    idx = torch.tensor([3, 0, 5])
    batch = view.batch(idx)
    assert torch.equal(batch.x0, view.ids[idx]) and torch.equal(batch.cond, view.vectors[idx])
    assert view.length == 16 and view.cond_dim == 16


def test_sentence_view_length_bucket_keeps_the_decoded_width(tiny_cache):
    split = open_cache(tiny_cache).split("train")
    lengths = torch.tensor(split.table.column("length").to_pylist())
    limit = int(lengths.median())
    bucket = sentence_view(split, 16, 1, max_tokens=limit)
    assert bucket.ids.shape == (int((lengths <= limit).sum()), 16)
    assert bucket.row_index.tolist() == torch.nonzero(lengths <= limit).squeeze(1).tolist()
    assert bucket.dropped == int((lengths > limit).sum()) > 0
    with pytest.raises(SgddError, match="fits max_tokens=1 "):
        sentence_view(split, 16, 1, max_tokens=1)
