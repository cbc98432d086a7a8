"""Dataset views over a cache split: what a decoder trains on and is evaluated against.

Every view is a list of samples; ``view.batch(idx)`` returns the clean target block ``x0`` and
the condition vector of each sample in ``idx``:

    sentence     sample = a sentence row. Condition: its sentence vector [D]. Target: its token
                 ids followed by padding up to max_len, so the decoder learns where it ends.
                 A pair cache (paraphrase) stores the target sentence's tokens beside the source
                 sentence's vector, so the same view trains paraphrase.
    next_block   sample = a position l of a window row n of an LLM cache (kind "windows").
                 Condition: the base model's hidden state h[n, l] [H], which predicted
                 output_ids[n, l]. Target: the base model's own next L tokens
                 output_ids[n, l : l + L]. The decoder's input is those L tokens, masked by the
                 forward process (all L are mask tokens at t = 1, where decoding starts).

Positions whose block runs past the window's end (l > length - L), ``block_tail``:
``skip`` leaves them out (every sample has L real labels); ``ignore`` keeps them and fills the
missing labels with ``IGNORE_INDEX``: those positions are always mask tokens in the input and
never scored, so the head learns the tokens that exist without being told anything false.

Self-consistent labels (``consistent``): in a window of document text, label k of a block,
output_ids[l + k], is the base model's greedy token *given the document's* token at l + k, which
a greedy verifier only sees when the chain before it stayed greedy: output_ids[l + j - 1] ==
input_ids[l + j] for every j = 1..k. From the first position where it does not, the block's
labels become ``IGNORE_INDEX`` (mask tokens, never scored). On by default for a cache collected
without ``--generate`` (see :func:`consistent_default`); a cache of the model's own greedy
continuations already has such chains after its prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.compute as pc
import torch

from sgdd.cache.format import IGNORE_INDEX
from sgdd.cache.reader import CacheSplit
from sgdd.errors import SgddError

VIEWS = ("sentence", "next_block")
BLOCK_TAILS = ("skip", "ignore")
WINDOWS_KIND = "windows"
# One axis, three words: a cache's kind (what collect wrote) decides the view training reads it
# through by default and the task that eval scores it as.
KIND_VIEW = {"sentences": "sentence", "pairs": "sentence", WINDOWS_KIND: "next_block"}
KIND_TASK = {"sentences": "reconstruction", "pairs": "paraphrase", WINDOWS_KIND: "mtp"}


@dataclass
class Batch:
    x0: torch.Tensor  # [b, L] int64 clean tokens; IGNORE_INDEX where there is no label
    cond: torch.Tensor  # [b, D] float32 condition vectors
    lengths: torch.Tensor | None = None  # [b] tokens of each sentence (sentence view)


def cache_kind(split: CacheSplit) -> str:
    """The split manifest's ``kind``: "windows" for an LLM cache, "sentences" otherwise."""
    return split.manifest.get("kind") or "sentences"


def view_for(split: CacheSplit, asked: str) -> str:
    """The view to train on: ``asked``, or for "auto" the one that fits the cache's kind."""
    if asked == "auto":
        return KIND_VIEW.get(cache_kind(split), "sentence")
    if asked not in VIEWS:
        raise SgddError(f"unknown view {asked!r} (valid: auto, {', '.join(VIEWS)})")
    return asked


def check_view(split: CacheSplit, view: str) -> None:
    """Refuse a split that cannot feed ``view``, saying what it lacks."""
    if view == "next_block":
        _check_windows(split)
    elif cache_kind(split) == WINDOWS_KIND or "vectors" not in split.manifest.get("arrays", {}):
        raise SgddError(f"{split.dir} is a {cache_kind(split)} cache without sentence vectors: the sentence "
                        "view needs a sentence (or pair) cache (use view next_block for an LLM windows cache)")


# --------------------------------------------------------------------------------------------
# sentence view
# --------------------------------------------------------------------------------------------
@dataclass
class SentenceView:
    """The "sentence" view: condition = the sentence vector, target = its own token ids.

    ``ids`` [N, max_len] holds each sentence's token ids (special tokens included) followed by
    padding, so that the decoder learns where the sentence ends. Rows longer than ``max_len``
    are left out and counted in ``dropped``.
    """

    ids: torch.Tensor  # [N, L] int64
    vectors: torch.Tensor  # [N, D] float32
    texts: list[str]
    row_index: torch.Tensor  # [N] position of each kept row in the split
    dropped: int
    lengths: torch.Tensor | None = None  # [N] tokens of each sentence (special tokens included)
    name = "sentence"

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    @property
    def cond_dim(self) -> int:
        return self.vectors.shape[1]

    def batch(self, idx: torch.Tensor) -> Batch:
        return Batch(self.ids[idx], self.vectors[idx], self.lengths[idx])

    def token_ids(self) -> torch.Tensor:
        """The sorted ids of every token a batch's targets may hold (padding and specials included)."""
        return self.ids.unique()

    def batch_unpadded(self, idx: torch.Tensor) -> Batch:
        """Sentences of one length, without padding: x0 [b, l]."""
        n = self.lengths[idx]
        if bool((n != n[0]).any()):
            raise ValueError("an unpadded batch needs sentences of one length")
        return Batch(self.ids[idx, : int(n[0])], self.vectors[idx], n)


def sentence_view(split: CacheSplit, max_len: int, pad_id: int, max_rows: int | None = None,
                  max_tokens: int | None = None) -> SentenceView:
    """``max_tokens`` (<= max_len) leaves out rows longer than it too: a length bucket that
    is still padded to ``max_len``, the length the decoder generates."""
    limit = max_len if max_tokens is None else min(max_len, max_tokens)
    n = split.num_rows if max_rows is None else min(max_rows, split.num_rows)
    if n == 0:
        raise SgddError(f"split {split.dir} is empty")
    check_view(split, "sentence")
    lengths = torch.tensor(split.table.column("length").to_pylist()[:n])
    keep = torch.nonzero(lengths <= limit).squeeze(1)
    if keep.numel() == 0:
        what = f"max_len={max_len}" if limit == max_len else f"max_tokens={limit}"
        raise SgddError(f"no row of {split.dir} fits {what} (shortest has {int(lengths.min())} tokens)")
    all_ids = split.column("input_ids")
    all_texts = split.column("text")
    ids = torch.full((keep.numel(), max_len), pad_id, dtype=torch.long)
    texts = []
    for j, i in enumerate(keep.tolist()):
        row = all_ids[i]
        ids[j, : len(row)] = torch.tensor(row, dtype=torch.long)
        texts.append(all_texts[i])
    vectors = split.array("vectors", slice(0, n))[keep].float()
    return SentenceView(ids=ids, vectors=vectors, texts=texts, row_index=keep, dropped=n - keep.numel(),
                        lengths=lengths[keep])


# --------------------------------------------------------------------------------------------
# next-block view (the MTP head)
# --------------------------------------------------------------------------------------------
class HiddenStates:
    """Per-token hidden states [N, S, H] of a windows split, read as ``gather(rows, positions)``.

    Only the (row, position) vectors a batch needs are read, through the split's lazy array
    (chunked per position, so a random read decodes a few KiB). A reader without
    ``lazy_array`` falls back to reading the whole array once, in its stored dtype.
    """

    def __init__(self, split: CacheSplit, rows: int):
        self.split, self.rows = split, rows
        self._source = None

    def _open(self):
        if self._source is None:
            lazy = getattr(self.split, "lazy_array", None)
            self._source = lazy("hidden") if lazy else self.split.array("hidden", slice(0, self.rows))
        return self._source

    def gather(self, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """hidden[rows[i], positions[i]] for every i -> [b, H] float32."""
        source = self._open()
        if isinstance(source, torch.Tensor):
            return source[rows, positions].float()
        return source.gather(rows, positions).float()


@dataclass
class NextBlockView:
    """The "next_block" view of a windows split (see the module docstring)."""

    labels: torch.Tensor  # [N, S + L] int64: output_ids, then IGNORE_INDEX
    hidden: HiddenStates
    offsets: torch.Tensor  # [N + 1] int64: samples of rows < n start at offsets[n]
    block_length: int
    tail: str
    hidden_size: int
    dropped: int = 0  # rows with no usable position
    greedy: torch.Tensor | None = None  # [N, S + L] bool: output_ids[n, p] == input_ids[n, p + 1] (consistent labels)
    name = "next_block"

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def length(self) -> int:
        return self.block_length

    @property
    def cond_dim(self) -> int:
        return self.hidden_size

    def locate(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample indices [b] -> (window rows [b], positions l [b])."""
        rows = torch.searchsorted(self.offsets, idx, right=True) - 1
        return rows, idx - self.offsets[rows]

    def batch(self, idx: torch.Tensor) -> Batch:
        rows, pos = self.locate(idx)
        cols = pos[:, None] + torch.arange(self.block_length)  # [b, L]
        x0 = self.labels[rows[:, None], cols]  # [b, L]
        if self.greedy is not None:  # label k stands while the chain l .. l+k-1 stayed greedy
            chain = self.greedy[rows[:, None], cols[:, :-1]].long().cumprod(1)  # [b, L - 1]
            keep = torch.cat([torch.ones_like(chain[:, :1]), chain], 1).bool()  # [b, L]
            x0 = x0.masked_fill(~keep, IGNORE_INDEX)
        return Batch(x0, self.hidden.gather(rows, pos))

    def token_ids(self) -> torch.Tensor:
        """The sorted ids of every label of the windows (the base model's next tokens)."""
        return self.labels[self.labels != IGNORE_INDEX].unique()

    @property
    def consistent(self) -> bool:
        return self.greedy is not None


def _check_windows(split: CacheSplit) -> tuple[int, int]:
    """(sample_size S, hidden size H) of a windows split; anything missing is an error."""
    problems = []
    if cache_kind(split) != WINDOWS_KIND:
        problems.append(f"its manifest kind is {cache_kind(split)!r}, not {WINDOWS_KIND!r}")
    hidden = split.manifest.get("arrays", {}).get("hidden")
    if hidden is None or len(hidden["row_shape"]) != 2:
        problems.append("it has no per-token hidden states [N, S, H] (array 'hidden')")
    columns = split.manifest.get("columns") or split.table.column_names
    if "output_ids" not in columns:
        problems.append("it has no output_ids column (the base model's next tokens)")
    if problems:
        raise SgddError(f"{split.dir} cannot feed the next_block view: " + "; ".join(problems) +
                        " (collect an LLM windows cache, or use view sentence)")
    S, H = hidden["row_shape"]
    return int(S), int(H)


def consistent_default(split: CacheSplit) -> bool:
    """Self-consistent labels by default: on unless the split was collected with ``--generate``."""
    windows = split.manifest.get("settings", {}).get("windows") or {}
    return not windows.get("generate", False)


def greedy_chain(inputs: torch.Tensor, outputs: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 shape: tuple[int, int]) -> torch.Tensor:
    """``shape`` [N, S + L] bool from the flat input and output ids of the windows (``rows``,
    ``cols``: where each flat token sits): True where position p is followed by the base model's
    own greedy token (output_ids[n, p] == input_ids[n, p + 1]), and from each window's last
    position on (no label depends on what follows it)."""
    out = torch.ones(shape, dtype=torch.bool)
    follows = (rows[1:] == rows[:-1])  # [T - 1] token i + 1 is in the same window as token i
    out[rows[:-1][follows], cols[:-1][follows]] = (outputs[:-1] == inputs[1:])[follows]
    return out


def next_block_view(split: CacheSplit, block_length: int, tail: str = "skip",
                    max_rows: int | None = None, consistent: bool | None = False) -> NextBlockView:
    """The next-block view of the first ``max_rows`` windows of ``split``; ``consistent``: labels
    stop where the chain leaves greedy (None = :func:`consistent_default`)."""
    if tail not in BLOCK_TAILS:
        raise SgddError(f"unknown block_tail {tail!r} (valid: {', '.join(BLOCK_TAILS)})")
    S, H = _check_windows(split)
    n = split.num_rows if max_rows is None else min(max_rows, split.num_rows)
    if n == 0:
        raise SgddError(f"split {split.dir} is empty")
    lengths_t = torch.tensor(split.table.column("length").to_pylist()[:n], dtype=torch.long)  # [N]
    outputs = split.table.column("output_ids").slice(0, n).combine_chunks()
    counts = torch.tensor(pc.list_value_length(outputs).to_numpy(zero_copy_only=False), dtype=torch.long)  # [N]
    bad = ((counts != lengths_t) | (lengths_t > S)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise SgddError(f"{split.dir}: row {i} has length {int(lengths_t[i])}, {int(counts[i])} output_ids "
                        f"and sample_size {S}")
    flat = torch.tensor(outputs.flatten().to_numpy(zero_copy_only=False), dtype=torch.long)  # [sum of lengths]
    rows = torch.repeat_interleave(torch.arange(n), lengths_t)
    starts = torch.cumsum(lengths_t, 0) - lengths_t  # [N]
    labels = torch.full((n, S + block_length), IGNORE_INDEX, dtype=torch.long)
    cols = torch.arange(flat.numel()) - starts[rows]  # [T] position of each flat token in its window
    labels[rows, cols] = flat
    per_row = (lengths_t - block_length + 1).clamp_min(0) if tail == "skip" else lengths_t  # [N]
    if int(per_row.sum()) == 0:
        raise SgddError(f"no window of {split.dir} has a full block of {block_length} tokens "
                        "(use a shorter block_length or block_tail ignore)")
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = per_row.cumsum(0)
    if consistent is None:
        consistent = consistent_default(split)
    greedy = None
    if consistent:
        inputs = split.table.column("input_ids").slice(0, n).combine_chunks().flatten()
        inputs = torch.tensor(inputs.to_numpy(zero_copy_only=False), dtype=torch.long)  # [T]
        greedy = greedy_chain(inputs, flat, rows, cols, tuple(labels.shape))
    return NextBlockView(labels, HiddenStates(split, n), offsets, block_length, tail, H,
                         dropped=int((per_row == 0).sum()), greedy=greedy)
