"""Evaluation metrics as pure functions.

``METRICS`` maps a name to a :class:`Metric`: ``metric(hyps, refs, **kw)`` over parallel lists of
texts (one reference per hypothesis) returns a score, or a dict of named scores. What else a
metric reads comes as keywords, and ``needs`` says which, so a caller can refuse a metric that
its task cannot feed before decoding anything:

    ids       pred_ids, ref_ids [N, L], pad_id (and      token_accuracy, position_accuracy, acceptance_length
              bos_id, eos_id)
    sources   sources: the source sentence of each row   bleu_source, ibleu (pair caches)
    vectors   out_vectors, cond_vectors [N, D]: the       encoder_cosine
              frozen encoder's vector of each output and
              the condition it was decoded from
    samples   samples: several outputs per row            self_bleu

Scores are percentages in [0, 100] except ``encoder_cosine`` (cosine x 100, in [-100, 100]),
``ibleu`` (can be negative) and ``acceptance_length`` (tokens). Every metric ignores the
keywords it does not use, so one call site can compute any selection.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from sgdd.cache.format import IGNORE_INDEX
from sgdd.errors import SgddError

# iBLEU = alpha * BLEU(out, ref) - (1 - alpha) * BLEU(out, src) (Sun & Zhou, ACL 2012). alpha = 0.8
# is the value most paraphrase papers report with (e.g. Hosking & Lapata 2021 on QQP / MSCOCO).
IBLEU_ALPHA = 0.8


def _check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise SgddError(f"got {len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise SgddError("no hypotheses to score")


def _needs(name: str, **given) -> None:
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise SgddError(f"metric {name} needs {', '.join(missing)}")


# --------------------------------------------------------------------------------------------
# BLEU family
# --------------------------------------------------------------------------------------------
def bleu(hyps: Sequence[str], refs: Sequence[str], *, extra_refs: Sequence[Sequence[str]] = (), **_) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, up to 4-grams, brevity penalty).

    ``extra_refs``: further reference streams, each parallel to ``refs`` (multi-reference BLEU).
    """
    import sacrebleu

    _check_pairs(hyps, refs)
    for stream in extra_refs:
        _check_pairs(hyps, stream)
    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs), *map(list, extra_refs)]).score)


def sentence_bleu(hyps: Sequence[str], refs: Sequence[str], **_) -> float:
    """Mean of sacrebleu's smoothed sentence-level BLEU."""
    import sacrebleu

    _check_pairs(hyps, refs)
    return sum(sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(hyps, refs)) / len(hyps)


def bleu_source(hyps: Sequence[str], refs: Sequence[str], *, sources: Sequence[str] | None = None, **_) -> float:
    """Corpus BLEU of the outputs against the SOURCE sentences (lower = less copying)."""
    _needs("bleu_source", sources=sources)
    return bleu(hyps, sources)


def ibleu(hyps: Sequence[str], refs: Sequence[str], *, sources: Sequence[str] | None = None,
          alpha: float = IBLEU_ALPHA, **_) -> float:
    """iBLEU = alpha BLEU(out, ref) - (1 - alpha) BLEU(out, src) (Sun & Zhou 2012), corpus BLEUs."""
    _needs("ibleu", sources=sources)
    return alpha * bleu(hyps, refs) - (1 - alpha) * bleu(hyps, sources)


def _nltk_bleu(hyp: str, refs: Sequence[str]) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu as nltk_sentence_bleu

    return nltk_sentence_bleu([r.split() for r in refs], hyp.split(),
                              smoothing_function=SmoothingFunction().method4)


def _require_nltk(name: str) -> None:
    if not METRICS[name].available():
        raise SgddError(f"metric {name} needs nltk: pip install 'sgdd[paraphrase]'")


def diffuseq_bleu(hyps: Sequence[str], refs: Sequence[str], **_) -> float:
    """Mean sentence BLEU as DiffuSeq computes it (nltk ``sentence_bleu``, smoothing method 4,
    whitespace tokens), x 100 (DiffuSeq's tables print the fraction)."""
    _require_nltk("diffuseq_bleu")
    _check_pairs(hyps, refs)
    return 100.0 * sum(_nltk_bleu(h, [r]) for h, r in zip(hyps, refs)) / len(hyps)


# --------------------------------------------------------------------------------------------
# diversity
# --------------------------------------------------------------------------------------------
def self_bleu(hyps: Sequence[str], refs: Sequence[str], *, samples: Sequence[Sequence[str]] | None = None,
              **_) -> float:
    """Mean BLEU of each sample against the other samples of its row (nltk, method 4, whitespace
    tokens, as DiffuSeq's diversity); lower = more diverse. Needs at least 2 samples per row."""
    _needs("self_bleu", samples=samples)
    _require_nltk("self_bleu")
    if not samples or min(len(s) for s in samples) < 2:
        raise SgddError("metric self_bleu needs at least 2 samples per row (--candidates 2 or more)")
    scores = [_nltk_bleu(s, [o for j, o in enumerate(row) if j != i]) for row in samples for i, s in enumerate(row)]
    return 100.0 * sum(scores) / len(scores)


def distinct_n(hyps: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over every output (whitespace tokens; Li et al. 2016)."""
    grams: Counter = Counter()
    for h in hyps:
        words = h.split()
        grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return 100.0 * len(grams) / total if total else 0.0


# --------------------------------------------------------------------------------------------
# exact match, token accuracy
# --------------------------------------------------------------------------------------------
def _normalise(text: str) -> str:
    return " ".join(text.split())


def exact_match(hyps: Sequence[str], refs: Sequence[str], **_) -> float:
    """Share of hypotheses equal to their reference, whitespace runs and ends ignored."""
    _check_pairs(hyps, refs)
    return 100.0 * sum(_normalise(h) == _normalise(r) for h, r in zip(hyps, refs)) / len(hyps)


def _check_ids(pred_ids: torch.Tensor, ref_ids: torch.Tensor, name: str) -> None:
    if pred_ids.shape != ref_ids.shape or pred_ids.dim() != 2:
        raise SgddError(f"{name} needs two [N, L] id tensors of one shape, "
                        f"got {tuple(pred_ids.shape)} and {tuple(ref_ids.shape)}")


def _spans(ref_ids: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions 1..L [L], each row's last non-pad position + 1 [N])."""
    positions = torch.arange(1, ref_ids.shape[1] + 1, device=ref_ids.device)  # [L]
    return positions, ((ref_ids != pad_id) * positions).amax(1)


def _accuracy(pred_ids: torch.Tensor, ref_ids: torch.Tensor, counted: torch.Tensor, name: str) -> float:
    total = int(counted.sum())
    if total == 0:
        raise SgddError(f"{name}: no reference row has a position to score")
    correct = int(((pred_ids.to(ref_ids.device) == ref_ids) & counted).sum())
    return 100.0 * correct / total


def token_accuracy(pred_ids: torch.Tensor, ref_ids: torch.Tensor, pad_id: int, bos_id: int | None = None,
                   eos_id: int | None = None) -> float:
    """Share of the reference's real tokens predicted exactly at their position, over all rows.

    Real tokens are those between the start and the end token: not the start token at position 0
    (when it is ``bos_id``), not the end token closing the row (when it is ``eos_id``), not the
    padding after it. A hypothesis of another length is compared at the same positions (its
    padding never matches a real token). pred_ids, ref_ids: [N, L].
    """
    _check_ids(pred_ids, ref_ids, "token_accuracy")
    positions, length = _spans(ref_ids, pad_id)
    counted = positions[None] <= length[:, None]  # [N, L] up to the last non-pad token
    if bos_id is not None:
        counted[:, 0] &= ref_ids[:, 0] != bos_id
    if eos_id is not None:
        last = (length - 1).clamp_min(0)[:, None]  # [N, 1]
        closes = ref_ids.gather(1, last) == eos_id  # [N, 1]
        counted &= ~((positions[None] == length[:, None]) & closes)
    return _accuracy(pred_ids, ref_ids, counted, "token_accuracy")


def token_accuracy_with_specials(pred_ids: torch.Tensor, ref_ids: torch.Tensor, pad_id: int) -> float:
    """The earlier token accuracy: every reference position up to and including the last non-pad
    token, so the start and end tokens count (the start token is nearly always right, which
    lifts this figure by ~1 / length). pred_ids, ref_ids: [N, L]."""
    _check_ids(pred_ids, ref_ids, "token_accuracy_with_specials")
    positions, length = _spans(ref_ids, pad_id)
    return _accuracy(pred_ids, ref_ids, positions[None] <= length[:, None], "token_accuracy_with_specials")


def _ids_of(name: str, hyps, pred_ids, ref_ids) -> tuple[torch.Tensor, torch.Tensor]:
    _needs(name, pred_ids=pred_ids, ref_ids=ref_ids)
    if len(hyps) != pred_ids.shape[0]:
        raise SgddError(f"got {len(hyps)} hypotheses but {pred_ids.shape[0]} rows of predicted ids")
    _check_ids(pred_ids, ref_ids, name)
    return pred_ids, ref_ids


def token_accuracy_metric(hyps: Sequence[str], refs: Sequence[str], *, pred_ids: torch.Tensor | None = None,
                          ref_ids: torch.Tensor | None = None, pad_id: int | None = None, bos_id: int | None = None,
                          eos_id: int | None = None, **_) -> float:
    """Registry entry of :func:`token_accuracy`: the texts are not used, the ids come as keywords."""
    _needs("token_accuracy", pred_ids=pred_ids, ref_ids=ref_ids, pad_id=pad_id)
    return token_accuracy(*_ids_of("token_accuracy", hyps, pred_ids, ref_ids), pad_id, bos_id, eos_id)


def token_accuracy_with_specials_metric(hyps: Sequence[str], refs: Sequence[str], *,
                                        pred_ids: torch.Tensor | None = None, ref_ids: torch.Tensor | None = None,
                                        pad_id: int | None = None, **_) -> float:
    """Registry entry of :func:`token_accuracy_with_specials`."""
    _needs("token_accuracy_with_specials", pred_ids=pred_ids, ref_ids=ref_ids, pad_id=pad_id)
    return token_accuracy_with_specials(*_ids_of("token_accuracy_with_specials", hyps, pred_ids, ref_ids), pad_id)


# --------------------------------------------------------------------------------------------
# a length-robust score
# --------------------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    """Lower-cased word tokens (runs of letters, digits and underscores; punctuation dropped)."""
    return re.findall(r"\w+", text.lower())


def bow_f1(hyps: Sequence[str], refs: Sequence[str], **_) -> float:
    """Mean bag-of-words F1 x 100 of each hypothesis against its reference: lower-cased words
    counted with multiplicity, precision = shared / hypothesis words, recall = shared / reference
    words. Word order and the output's length beyond its words do not matter, so a right sentence
    at a shifted position still scores (unlike token accuracy). Two empty texts score 100."""
    _check_pairs(hyps, refs)
    total = 0.0
    for h, r in zip(hyps, refs):
        hw, rw = Counter(words(h)), Counter(words(r))
        shared = sum((hw & rw).values())
        n_h, n_r = sum(hw.values()), sum(rw.values())
        total += 1.0 if n_h == n_r == 0 else 2.0 * shared / max(1, n_h + n_r)
    return 100.0 * total / len(hyps)


# --------------------------------------------------------------------------------------------
# the MTP head: per-position accuracy and acceptance length
# --------------------------------------------------------------------------------------------
def position_accuracy(hyps: Sequence[str], refs: Sequence[str], *, pred_ids: torch.Tensor | None = None,
                      ref_ids: torch.Tensor | None = None, given: int = 0, **_) -> dict[str, float]:
    """Top-1 accuracy of each drafted block position k = given+1..L against the base model's
    tokens (``position_accuracy@k``; the first ``given`` positions were not drafted), over the
    rows that have a label there (not ``IGNORE_INDEX``). Medusa
    reports 56 / 32 / 20 / 15 / 12 for its heads 1-5 on Vicuna-7B, which draft positions 2-6."""
    pred, ref = _ids_of("position_accuracy", hyps, pred_ids, ref_ids)
    labelled = ref != IGNORE_INDEX  # [N, L] (self-consistent labels leave some out)
    acc = ((pred.to(ref.device) == ref) & labelled).sum(0) / labelled.sum(0).clamp_min(1) * 100  # [L]
    return {f"position_accuracy@{k}": float(a) for k, a in enumerate(acc.tolist(), start=1) if k > given}


def accepted_tokens(pred_ids: torch.Tensor, ref_ids: torch.Tensor) -> torch.Tensor:
    """Greedy verification: per row, how many leading predicted tokens equal the base model's
    (accepted left to right until the first mismatch). [N, L] -> [N] in 0..L."""
    _check_ids(pred_ids, ref_ids, "acceptance_length")
    return (pred_ids.to(ref_ids.device) == ref_ids).long().cumprod(1).sum(1)


def acceptance_length(hyps: Sequence[str], refs: Sequence[str], *, pred_ids: torch.Tensor | None = None,
                      ref_ids: torch.Tensor | None = None, given: int = 0, **_) -> dict[str, float]:
    """Mean acceptance length under greedy verification, in tokens.

    ``acceptance_length`` = accepted draft tokens + 1: the tokens one verification pass of the
    base model yields, since it always adds its own next token after the accepted prefix (the
    convention of Medusa's acceleration rate and EAGLE's average acceptance length tau).
    ``accepted_tokens`` is the mean accepted prefix alone (0..L - given): with ``given`` > 0 the
    first positions were not drafted and only the drafts after them are verified."""
    pred, ref = _ids_of("acceptance_length", hyps, pred_ids, ref_ids)
    accepted = accepted_tokens(pred[:, given:], ref[:, given:]).float().mean().item()
    return {"acceptance_length": accepted + 1.0, "accepted_tokens": accepted}


# --------------------------------------------------------------------------------------------
# agreement with the encoder
# --------------------------------------------------------------------------------------------
def encoder_cosine(hyps: Sequence[str], refs: Sequence[str], *, out_vectors: torch.Tensor | None = None,
                   cond_vectors: torch.Tensor | None = None, **_) -> float:
    """Mean cosine x 100 between the frozen encoder's vector of each output and the condition
    vector it was decoded from (out_vectors, cond_vectors [N, D])."""
    _needs("encoder_cosine", out_vectors=out_vectors, cond_vectors=cond_vectors)
    if out_vectors.shape != cond_vectors.shape or out_vectors.shape[0] != len(hyps):
        raise SgddError(f"encoder_cosine needs one vector per output and condition, got {len(hyps)} outputs, "
                        f"{tuple(out_vectors.shape)} and {tuple(cond_vectors.shape)}")
    return 100.0 * cosine(out_vectors, cond_vectors).mean().item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of [N, D] and [N, D] -> [N] (float32)."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """A registered metric: ``fn(hyps, refs, **kw) -> float | dict[str, float]`` and the keyword
    groups it needs (see the module docstring)."""

    fn: Callable[..., float | dict[str, float]]
    help: str
    needs: frozenset[str] = field(default_factory=frozenset)
    package: str | None = None  # an optional package it imports (and the extra that installs it)

    def available(self) -> bool:
        import importlib.util

        return self.package is None or importlib.util.find_spec(self.package) is not None

    def __call__(self, hyps: Sequence[str], refs: Sequence[str], **kw) -> float | dict[str, float]:
        return self.fn(hyps, refs, **kw)


def _distinct(n: int) -> Callable[..., float]:
    def fn(hyps: Sequence[str], refs: Sequence[str], **_) -> float:
        _check_pairs(hyps, refs)
        return distinct_n(hyps, n)

    return fn


METRICS: dict[str, Metric] = {
    "bleu": Metric(bleu, "sacreBLEU corpus BLEU against the reference"),
    "sentence_bleu": Metric(sentence_bleu, "mean sacreBLEU sentence BLEU"),
    "exact_match": Metric(exact_match, "share of outputs equal to the reference"),
    "token_accuracy": Metric(token_accuracy_metric, "share of the reference's real tokens (not start, end or "
                             "padding) predicted at their position", frozenset({"ids"})),
    "encoder_cosine": Metric(encoder_cosine, "cosine x 100 of the re-encoded output with the condition vector",
                             frozenset({"vectors"})),
    "bleu_source": Metric(bleu_source, "corpus BLEU against the source sentence", frozenset({"sources"})),
    "ibleu": Metric(ibleu, f"iBLEU, alpha {IBLEU_ALPHA}", frozenset({"sources"})),
    "diffuseq_bleu": Metric(diffuseq_bleu, "DiffuSeq's BLEU: mean nltk sentence BLEU, smoothing 4", package="nltk"),
    "self_bleu": Metric(self_bleu, "BLEU among the samples of a row (lower = more diverse)", frozenset({"samples"}),
                        package="nltk"),
    "distinct_1": Metric(_distinct(1), "distinct unigrams / unigrams over the outputs"),
    "distinct_2": Metric(_distinct(2), "distinct bigrams / bigrams over the outputs"),
    "position_accuracy": Metric(position_accuracy, "top-1 accuracy per block position 1..L", frozenset({"ids"})),
    "acceptance_length": Metric(acceptance_length, "mean tokens per greedy verification (accepted + 1)",
                                frozenset({"ids"})),
    "token_accuracy_with_specials": Metric(token_accuracy_with_specials_metric, "the earlier token accuracy: start "
                                           "and end tokens count too", frozenset({"ids"})),
    "bow_f1": Metric(bow_f1, "bag-of-words F1 over lower-cased words (length- and order-robust)"),
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise SgddError(f"unknown metric {name!r} (valid: {', '.join(METRICS)})")
    return METRICS[name]


def compute_metrics(names: Sequence[str], hyps: Sequence[str], refs: Sequence[str], **kw) -> dict[str, float]:
    """{name: score} for each metric in ``names`` (a metric giving several scores adds each under
    its own name); ``kw`` is passed to every metric."""
    fns = [get_metric(n) for n in names]  # every unknown name fails before any work
    out: dict[str, float] = {}
    for name, fn in zip(names, fns):
        value = fn(hyps, refs, **kw)
        out.update(value if isinstance(value, dict) else {name: float(value)})
    return out
