"""Metrics: documented and hand-computed values for every task, the registry and its errors."""

import math

import pytest
import torch

from sgdd.metrics import (IBLEU_ALPHA, METRICS, acceptance_length, accepted_tokens, bleu, bleu_source,
                          compute_metrics, cosine, diffuseq_bleu, distinct_n, encoder_cosine, exact_match, get_metric,
                          ibleu, position_accuracy, self_bleu, sentence_bleu, token_accuracy,
                          token_accuracy_with_specials, bow_f1)
from sgdd.errors import SgddError


def test_bleu_documented_example():
    # sacrebleu's README: BLEU = 48.53 with two reference streams
    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    refs1 = ["The dog bit the man.", "It was not unexpected.", "The man bit him first."]
    refs2 = ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]
    assert round(bleu(hyps, refs1, extra_refs=[refs2]), 2) == 48.53


def test_bleu_identical_and_disjoint():
    texts = ["the cat sat on the mat .", "a dog ran across the green field ."]
    assert bleu(texts, texts) == pytest.approx(100.0)
    assert bleu(texts, ["x y z w v", "q r s t u"]) == 0.0


def test_bleu_hand_computed():
    # hyp: the cat sat on the mat (6 words); ref: the cat sat on a mat today (7 words)
    # clipped n-gram matches: 1-grams 5/6 ("the" twice, once in ref), 2-grams 3/5 (the cat,
    # cat sat, sat on), 3-grams 2/4 (the cat sat, cat sat on), 4-grams 1/3 (the cat sat on)
    precisions = [5 / 6, 3 / 5, 2 / 4, 1 / 3]
    brevity = math.exp(1 - 7 / 6)
    expected = 100 * brevity * math.exp(sum(math.log(p) for p in precisions) / 4)
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat today"]) == pytest.approx(expected, abs=1e-9)


def test_sentence_bleu_is_a_mean():
    assert sentence_bleu(["a b c d e", "p q r s t"], ["a b c d e", "v w x y z"]) == pytest.approx(50.0)


def test_exact_match_ignores_whitespace_runs():
    assert exact_match(["the  cat sat", "a dog", "x"], [" the cat sat ", "a  cat", "x"]) == pytest.approx(200 / 3)


def test_token_accuracy_counts_the_real_tokens_only():
    pad, bos, eos = 1, 0, 2
    ref = torch.tensor([[bos, 5, 6, eos, pad, pad],
                        [bos, 7, eos, pad, pad, pad]])
    pred = torch.tensor([[bos, 5, 9, eos, 3, 3],  # 1 of 2 real tokens right; start, end, padding not counted
                         [3, 7, 8, 8, 8, 8]])  # 1 of 1 (a wrong start and a missed end do not count)
    assert token_accuracy(pred, ref, pad, bos, eos) == pytest.approx(100 * 2 / 3)
    assert token_accuracy(ref, ref, pad, bos, eos) == 100.0
    only_specials = torch.tensor([[bos, 8, 8, eos, pad, pad], [bos, 8, eos, pad, pad, pad]])
    assert token_accuracy(only_specials, ref, pad, bos, eos) == 0.0
    shifted = torch.tensor([[bos, bos, 5, 6, eos, pad], [bos, bos, 7, eos, pad, pad]])  # right words, one late
    assert token_accuracy(shifted, ref, pad, bos, eos) == 0.0
    assert bow_f1(["a b c", "x"], ["b c a", "x"]) == 100.0  # bag of words does not see the shift


def test_token_accuracy_with_specials_is_the_earlier_figure():
    pad, bos, eos = 1, 0, 2
    ref = torch.tensor([[bos, 5, 6, eos, pad, pad],
                        [bos, 7, eos, pad, pad, pad]])
    pred = torch.tensor([[bos, 5, 9, eos, 3, 3],  # 3 of 4 right; positions after eos do not count
                         [bos, 7, eos, 8, 8, 8]])  # 3 of 3 right
    assert token_accuracy_with_specials(pred, ref, pad) == pytest.approx(100 * 6 / 7)
    assert token_accuracy(pred, ref, pad, bos, eos) == pytest.approx(100 * 2 / 3)
    missed_eos = torch.tensor([[bos, 5, 6, pad, pad, pad], [bos, 7, eos, pad, pad, pad]])
    assert token_accuracy_with_specials(missed_eos, ref, pad) == pytest.approx(100 * 6 / 7)
    assert token_accuracy(missed_eos, ref, pad, bos, eos) == 100.0  # the end token is not a real token
    scores = compute_metrics(["token_accuracy", "token_accuracy_with_specials"], ["a", "b"], ["a", "b"],
                             pred_ids=pred, ref_ids=ref, pad_id=pad, bos_id=bos, eos_id=eos)
    assert scores == {"token_accuracy": pytest.approx(100 * 2 / 3), "token_accuracy_with_specials": pytest.approx(600 / 7)}


def test_bow_f1_hand_values():
    # "The cat sat." vs "the cat sat on the mat": hyp {the, cat, sat}, ref {the x2, cat, sat, on, mat}
    # shared 3, precision 3/3, recall 3/6 -> F1 = 2 * 3 / (3 + 6)
    assert bow_f1(["The cat sat."], ["the cat sat on the mat"]) == pytest.approx(100 * 6 / 9)
    assert bow_f1(["the the the"], ["the cat"]) == pytest.approx(100 * 2 * 1 / 5)  # counted with multiplicity
    assert bow_f1(["", "dog"], ["", "cat"]) == pytest.approx(50.0)  # two empty texts agree; disjoint words 0
    with pytest.raises(SgddError, match="2 hypotheses but 1"):
        bow_f1(["a", "b"], ["a"])


def test_token_accuracy_refuses_bad_input():
    with pytest.raises(SgddError, match="one shape"):
        token_accuracy(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), 1)
    with pytest.raises(SgddError, match="no reference row has a position to score"):
        token_accuracy(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long), 1)
    with pytest.raises(SgddError, match="no reference row has a position to score"):  # start and end only
        token_accuracy(torch.ones(2, 3, dtype=torch.long), torch.tensor([[0, 2, 1], [0, 2, 1]]), 1, 0, 2)


# -- paraphrase ------------------------------------------------------------------------------
def test_bleu_source_and_ibleu():
    hyps, refs, srcs = ["the cat sat on the mat today"], ["the cat sat on the mat"], ["a cat was on a mat today"]
    b_ref, b_src = bleu(hyps, refs), bleu(hyps, srcs)
    assert bleu_source(hyps, refs, sources=srcs) == pytest.approx(b_src)
    assert ibleu(hyps, refs, sources=srcs) == pytest.approx(0.8 * b_ref - 0.2 * b_src) and IBLEU_ALPHA == 0.8
    assert ibleu(refs, refs, sources=refs) == pytest.approx(60.0)  # copying the source costs (1 - alpha) x 100
    with pytest.raises(SgddError, match="metric ibleu needs sources"):
        ibleu(hyps, refs)


def test_diffuseq_bleu_is_nltk_method4_on_whitespace_tokens():
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import sentence_bleu as nltk_bleu

    hyps, refs = ["the cat sat on the mat", "a b c d e"], ["the cat sat on a mat today", "a b c d e"]
    one = nltk_bleu([refs[0].split()], hyps[0].split(), smoothing_function=SmoothingFunction().method4)
    assert diffuseq_bleu(hyps, refs) == pytest.approx(100 * (one + 1) / 2)
    assert 40 < 100 * one < 50  # 45.48: smoothed, unlike sacreBLEU's corpus score of this pair


def test_self_bleu_and_distinct_n():
    same, different = ["a b c d e", "a b c d e"], ["x y z w v", "q r s t u"]
    assert self_bleu([], [], samples=[same]) == pytest.approx(100.0)
    assert self_bleu([], [], samples=[different]) == 0.0
    assert self_bleu([], [], samples=[same, different]) == pytest.approx(50.0)
    with pytest.raises(SgddError, match="at least 2 samples per row"):
        self_bleu([], [], samples=[["only one"]])
    # "a b a b": unigrams a, b of 4 -> 50; bigrams (a b), (b a), (a b): 2 of 3
    assert distinct_n(["a b a b"], 1) == 50.0 and distinct_n(["a b a b"], 2) == pytest.approx(200 / 3)
    assert distinct_n(["a b", "c d"], 1) == 100.0 and distinct_n(["a"], 2) == 0.0
    assert compute_metrics(["distinct_1", "distinct_2"], ["a b a b"], ["x"]) == {
        "distinct_1": 50.0, "distinct_2": pytest.approx(200 / 3)}


# -- MTP head --------------------------------------------------------------------------------
def test_position_accuracy_and_acceptance_length_hand_values():
    ref = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    pred = torch.tensor([[1, 2, 3, 4],  # all 4 accepted
                         [1, 2, 9, 4],  # 2 accepted: the 4th is right but comes after a miss
                         [9, 2, 3, 4]])  # none accepted
    assert accepted_tokens(pred, ref).tolist() == [4, 2, 0]
    acc = position_accuracy(["", "", ""], [], pred_ids=pred, ref_ids=ref)
    assert acc == {"position_accuracy@1": pytest.approx(200 / 3), "position_accuracy@2": 100.0,
                   "position_accuracy@3": pytest.approx(200 / 3), "position_accuracy@4": 100.0}
    assert acceptance_length(["", "", ""], [], pred_ids=pred, ref_ids=ref) == {
        "acceptance_length": pytest.approx(1 + 2), "accepted_tokens": pytest.approx(2.0)}  # (4 + 2 + 0) / 3 + 1
    # position 1 given (not drafted): positions 2..4 are scored and verified
    assert position_accuracy(["", "", ""], [], pred_ids=pred, ref_ids=ref, given=1) == {
        "position_accuracy@2": 100.0, "position_accuracy@3": pytest.approx(200 / 3), "position_accuracy@4": 100.0}
    assert acceptance_length(["", "", ""], [], pred_ids=pred, ref_ids=ref, given=1) == {
        "acceptance_length": pytest.approx(1 + 7 / 3), "accepted_tokens": pytest.approx(7 / 3)}  # (3 + 1 + 3) / 3 + 1


# -- encoder agreement -----------------------------------------------------------------------
def test_encoder_cosine_hand_values():
    out = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    cond = torch.tensor([[2.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    assert cosine(out, cond).tolist() == pytest.approx([1.0, -1.0, 2 ** -0.5])
    assert encoder_cosine(["a", "b", "c"], [], out_vectors=out, cond_vectors=cond) == pytest.approx(100 * 2 ** -0.5 / 3)
    with pytest.raises(SgddError, match="needs out_vectors"):
        encoder_cosine(["a"], ["a"])
    with pytest.raises(SgddError, match="one vector per output"):
        encoder_cosine(["a"], [], out_vectors=out, cond_vectors=cond)


# -- the registry ----------------------------------------------------------------------------
def test_registry_computes_any_selection_from_one_call():
    ids = torch.tensor([[0, 5, 2, 1]])
    text = ["the cat sat on the mat"]  # 4-grams exist: unsmoothed corpus BLEU is 100
    names = ["bleu", "sentence_bleu", "exact_match", "token_accuracy", "bleu_source", "ibleu", "diffuseq_bleu",
             "encoder_cosine", "position_accuracy", "acceptance_length"]
    scores = compute_metrics(names, text, text, pred_ids=ids, ref_ids=ids, pad_id=1, sources=["x y z"],
                             out_vectors=torch.ones(1, 3), cond_vectors=torch.ones(1, 3))
    assert scores["bleu"] == scores["sentence_bleu"] == pytest.approx(100.0)
    assert scores["exact_match"] == scores["token_accuracy"] == scores["diffuseq_bleu"] == pytest.approx(100.0)
    assert scores["ibleu"] == pytest.approx(80.0) and scores["bleu_source"] == 0.0
    assert scores["encoder_cosine"] == pytest.approx(100.0) and scores["acceptance_length"] == 5.0
    assert [k for k in scores if k.startswith("position_accuracy@")] == [f"position_accuracy@{k}" for k in range(1, 5)]


def test_every_metric_declares_what_it_needs():
    needs = {name: set(m.needs) for name, m in METRICS.items()}
    assert needs["ibleu"] == needs["bleu_source"] == {"sources"} and needs["encoder_cosine"] == {"vectors"}
    assert needs["self_bleu"] == {"samples"} and needs["bleu"] == set()
    assert needs["token_accuracy"] == needs["position_accuracy"] == needs["acceptance_length"] == {"ids"}
    assert all(m.help for m in METRICS.values())


def test_registry_errors():
    with pytest.raises(SgddError, match="valid: bleu, sentence_bleu, exact_match, token_accuracy, encoder_cosine"):
        get_metric("rouge")
    with pytest.raises(SgddError, match="needs pred_ids, ref_ids"):
        compute_metrics(["token_accuracy"], ["a"], ["a"])
    with pytest.raises(SgddError, match="2 hypotheses but 1 references"):
        compute_metrics(["bleu"], ["a", "b"], ["a"])
    with pytest.raises(SgddError, match="no hypotheses"):
        exact_match([], [])


def test_metrics_of_optional_packages_say_so(monkeypatch):
    import importlib.util

    from sgdd.stages.evaluate.config import EvalConfig
    from sgdd.stages.evaluate.score import metrics_for

    assert METRICS["diffuseq_bleu"].package == "nltk" and METRICS["bleu"].available()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nltk" else real(name, *a))
    assert metrics_for(EvalConfig(), "pairs") == ["bleu", "bleu_source", "ibleu", "distinct_2", "bow_f1"]  # defaults adapt
    with pytest.raises(SgddError, match="metric diffuseq_bleu needs the package nltk: pip install 'sgdd\\[paraphrase\\]'"):
        metrics_for(EvalConfig(metrics=["diffuseq_bleu"]), "pairs")
