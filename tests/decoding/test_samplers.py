"""The sampler family: every sampler decodes a perfect predictor exactly, and each confidence
rule, commit rule, block setting and sampling option does what it says."""

import math

import pytest
import torch

from sgdd.decoding.maskgit import decode
from sgdd.decoding.schedules import UNMASK_SCHEDULES, share_steps
from sgdd.decoding.samplers import (CONFIDENCES, SAMPLERS, Sampling, choose_tokens, filter_logits, get_confidence,
                                    get_sampler, rank_scores, sample_categorical)
from sgdd.models.decoder import Decoder
from sgdd.models.decoder import DecoderConfig
from sgdd.errors import SgddError
from tests.helpers_eval import MASK, V, L, TableModel, perfect_tables, reference


# -- every sampler ---------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("schedule", list(UNMASK_SCHEDULES))
@pytest.mark.parametrize("steps", [4, 8, L])
def test_perfect_predictor_decodes_exactly_under_every_sampler(sampler, schedule, steps):
    ref, strength = reference()
    model = TableModel()
    ids, traj = decode(model, perfect_tables(ref, strength), steps, schedule, sampler=sampler,
                       generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert torch.equal(ids, ref)
    assert traj.forward_passes == len(model.inputs) <= steps  # --steps bounds the forward passes
    assert len(model.conditions) == 1  # the condition once per decode call
    assert bool((traj.committed_at >= 1).all()) and int(traj.committed_at.max()) == traj.steps


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("options", [{}, {"temperature": 1.0, "top_k": 3}, {"alg_temp": 0.5}, {"cfg_scale": 1.0},
                                     {"block_length": 5}, {"top_p": 0.9, "temperature": 0.7}])
def test_commits_are_final_under_every_sampler_and_option(sampler, options):
    ref, strength = reference(seed=4)
    model = TableModel(null_table=torch.randn(L, V, generator=torch.Generator().manual_seed(1)))
    ids, traj = decode(model, perfect_tables(ref, strength), 8, sampler=sampler, return_trajectory=True,
                       generator=torch.Generator().manual_seed(2), **options)
    assert not bool((ids == MASK).any())
    B = ids.shape[0]
    states = [x[: x.shape[0] // 2] if options.get("cfg_scale") else x for x, _ in model.inputs]
    assert len(states) == traj.forward_passes
    for s, x in enumerate(states, start=1):  # forward call s sees exactly the tokens of steps < s
        if x.shape[0] == B:  # (the threshold sampler leaves finished rows out)
            assert torch.equal(x != MASK, traj.committed_at < s)
            assert torch.equal(x[x != MASK], ids[x != MASK])  # committed tokens never change


def test_logits_only_at_open_positions_and_stop_when_nothing_is_masked():
    ref, strength = reference()
    model = TableModel()
    decode(model, perfect_tables(ref, strength), 4, "linear")
    assert model.logit_rows == [3 * 16, 3 * 12, 3 * 8, 3 * 4]  # masked positions of 3 rows before each step
    model = TableModel()
    decode(model, perfect_tables(ref, strength), 4, "linear", sampler="llada", block_length=8)
    assert model.logit_rows == [3 * 8, 3 * 4, 3 * 8, 3 * 4]  # only the open block's masked positions
    model = TableModel()
    decode(model, perfect_tables(ref, strength), 5 * L)  # more steps than tokens: L passes
    assert len(model.inputs) == L


# -- confidence rules ------------------------------------------------------------------------
def three_way_table() -> torch.Tensor:
    """Three positions on which the rules disagree (probabilities over the 19 non-mask tokens):
    a: 0.6 + 4 x 0.1        max prob 0.60, margin 0.50, entropy 1.23
    b: 0.58 + 18 x 0.0233   max prob 0.58, margin 0.56, entropy 1.92
    c: 0.55 + 0.45          max prob 0.55, margin 0.10, entropy 0.69
    max prob commits a, b, c; margin b, a, c; entropy c, a, b."""
    probs = torch.full((3, V), 1e-12)
    tokens = [t for t in range(V) if t != MASK]
    probs[0, tokens[0]], probs[0, tokens[1:5]] = 0.6, 0.1
    probs[1, tokens[0]], probs[1, tokens[1:]] = 0.58, 0.42 / 18
    probs[2, tokens[0]], probs[2, tokens[1]] = 0.55, 0.45
    return probs.log().flatten()[None]


@pytest.mark.parametrize("sampler, order", [("maskgit_plus", [1, 2, 3]), ("topk_margin", [2, 1, 3]),
                                            ("entropy", [2, 3, 1])])
def test_each_confidence_rule_commits_in_its_own_order(sampler, order):
    _, traj = decode(TableModel(length=3), three_way_table(), 3, "linear", sampler=sampler, return_trajectory=True)
    assert traj.committed_at[0].tolist() == order


def test_confidence_functions_hand_values():
    logp = torch.tensor([[0.6, 0.3, 0.1], [1.0, 0.0, 0.0]]).log()
    token = torch.tensor([1, 0])
    assert torch.allclose(get_confidence("max_prob")(logp, token), torch.tensor([0.3, 1.0]))
    assert torch.allclose(get_confidence("margin")(logp, token), torch.tensor([0.3, 1.0]))
    expected = 0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1)
    assert torch.allclose(get_confidence("entropy")(logp, token), torch.tensor([expected, 0.0]))
    noise = get_confidence("random")(logp, token, torch.Generator().manual_seed(0))
    assert noise.shape == (2,) and bool(((noise >= 0) & (noise < 1)).all())
    with pytest.raises(SgddError, match="valid: max_prob, entropy, margin, random"):
        get_confidence("bogus")
    assert set(CONFIDENCES) == {s.confidence for s in SAMPLERS.values()}


def test_random_order_ignores_confidence_and_is_seeded():
    ref, strength = reference(b=1)
    z = perfect_tables(ref, strength)

    def order(seed):
        _, traj = decode(TableModel(), z, L, "linear", sampler="random", return_trajectory=True,
                         generator=torch.Generator().manual_seed(seed))
        return traj.committed_at[0]

    by_strength = strength[0].argsort(descending=True).argsort() + 1
    assert torch.equal(order(0), order(0))  # reproducible
    assert not torch.equal(order(0), order(1))
    assert not torch.equal(order(0), by_strength) and not torch.equal(order(1), by_strength)
    assert sorted(order(0).tolist()) == list(range(1, L + 1))  # still one token per step


# -- semi-autoregressive blocks --------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["llada", "maskgit_plus", "entropy"])
def test_blocks_are_decoded_left_to_right(sampler):
    ref = reference()[0]
    strength = torch.linspace(3, 6, L).expand(3, L)  # the last positions are the most confident
    ids, traj = decode(TableModel(), perfect_tables(ref, strength), 8, "linear", sampler=sampler, block_length=4,
                       return_trajectory=True)
    assert torch.equal(ids, ref) and traj.forward_passes == 8 and traj.blocks == [(0, 4), (4, 8), (8, 12), (12, 16)]
    for (lo, hi), (lo2, hi2) in zip(traj.blocks, traj.blocks[1:]):
        assert int(traj.committed_at[:, lo:hi].max()) < int(traj.committed_at[:, lo2:hi2].min())
    _, whole = decode(TableModel(), perfect_tables(ref, strength), 8, "linear", sampler="maskgit_plus",
                      return_trajectory=True)  # no blocks: the confident end goes first
    assert int(whole.committed_at[:, -1].max()) == 1


def test_llada_default_blocks_and_too_few_steps():
    assert Sampling(sampler="llada").blocks(32) == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert Sampling(sampler="llada", block_length=20).blocks(32) == [(0, 20), (20, 32)]
    assert Sampling(sampler="maskgit_plus").blocks(32) == [(0, 32)]
    assert Sampling(sampler="llada").blocks(6) == [(0, 6)]
    assert share_steps(10, 4) == [3, 3, 2, 2]
    ref, strength = reference()
    with pytest.raises(SgddError, match="2 semi-autoregressive blocks need at least 2 steps"):
        decode(TableModel(), perfect_tables(ref, strength), 1, sampler="llada")


# -- threshold (Fast-dLLM) -------------------------------------------------------------------
def test_threshold_uses_fewer_passes_than_steps_on_a_confident_model():
    ref = reference()[0]
    confident = perfect_tables(ref, torch.full((3, L), 30.0))  # p(reference token) ~ 1 everywhere
    ids, traj = decode(TableModel(), confident, L, sampler="threshold", tau=0.9, return_trajectory=True)
    assert torch.equal(ids, ref) and traj.forward_passes == 1 < L
    assert traj.passes_per_row.tolist() == [1, 1, 1]
    # the same model under a schedule-only sampler uses every step
    assert decode(TableModel(), confident, L, return_trajectory=True)[1].forward_passes == L


def test_threshold_falls_back_to_the_schedule_when_nothing_is_sure():
    ref, strength = reference()  # strengths 3..6 over 19 tokens: p(ref) <= 0.92 < tau = 0.95
    ids, traj = decode(TableModel(), perfect_tables(ref, strength), 8, sampler="threshold", tau=0.95,
                       return_trajectory=True)
    assert torch.equal(ids, ref) and traj.forward_passes == 8


def test_threshold_rows_finish_at_their_own_pace_and_leave_the_batch():
    ref = reference()[0]
    strength = torch.stack([torch.full((L,), 30.0), torch.full((L,), 30.0), torch.linspace(3, 4, L)])
    model = TableModel()
    ids, traj = decode(model, perfect_tables(ref, strength), L, sampler="threshold", tau=0.9, return_trajectory=True)
    assert torch.equal(ids, ref)
    assert traj.passes_per_row.tolist() == [1, 1, L]  # the unsure row takes one token per step
    assert [x.shape[0] for x, _ in model.inputs] == [3] + [1] * (L - 1)  # finished rows are not recomputed
    assert model.logit_rows == [3 * L] + list(range(L - 1, 0, -1))


def test_threshold_commits_exactly_the_sure_positions():
    ref = reference(b=1)[0]
    strength = torch.full((1, L), 3.0)
    strength[0, :5] = 30.0  # five sure positions
    _, traj = decode(TableModel(), perfect_tables(ref, strength), L, sampler="threshold", tau=0.9,
                     return_trajectory=True)
    assert traj.committed_at[0, :5].tolist() == [1] * 5 and int(traj.committed_at[0, 5:].min()) == 2
    assert traj.forward_passes == 1 + (L - 5)


# -- token choice: temperature, top-k, top-p -------------------------------------------------
def test_filter_logits_hand_values():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all() and torch.isfinite(filter_logits(logits, 2)[0, :2]).all()
    p = logits.softmax(-1)[0]  # 0.644, 0.237, 0.087, 0.032
    kept = lambda top_p: torch.isfinite(filter_logits(logits, top_p=top_p)[0]).sum().item()  # noqa: E731
    assert kept(0.5) == 1 and kept(float(p[0]) + 0.01) == 2 and kept(0.95) == 3 and kept(1.0) == 4
    assert torch.equal(filter_logits(logits), logits)


def test_choose_tokens_log_probs_are_normalised_over_the_kept_tokens():
    logits = torch.randn(5, V)
    token, logp = choose_tokens(logits, temperature=0.5, top_k=3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(logp.exp().sum(-1), torch.ones(5))
    assert bool((logp.isfinite().sum(-1) == 3).all()) and bool(logp.gather(1, token[:, None]).isfinite().all())
    greedy, _ = choose_tokens(logits)
    assert torch.equal(greedy, logits.argmax(-1))


def test_sample_categorical_draws_from_the_distribution_and_never_an_impossible_token():
    probs = torch.tensor([0.1, 0.0, 0.2, 0.7, 0.0])
    logp = probs.log().expand(40000, 5).contiguous()
    draws = sample_categorical(logp, torch.Generator().manual_seed(0))
    share = torch.bincount(draws, minlength=5).float() / 40000
    assert torch.allclose(share, probs, atol=0.01) and share[1] == share[4] == 0  # 4 sigma is ~0.009
    assert torch.equal(draws, sample_categorical(logp, torch.Generator().manual_seed(0)))
    one_hot = torch.full((3, 5), float("-inf"))
    one_hot[:, 2] = 0.0
    assert sample_categorical(one_hot).tolist() == [2, 2, 2]


def sampled(z, **kw):
    return decode(TableModel(), z, 4, generator=torch.Generator().manual_seed(0), **kw)


def test_temperature_top_k_and_top_p_sample_within_their_sets():
    flat = torch.zeros(2, L * V)  # every token equally likely
    greedy = decode(TableModel(), flat, 4)
    hot = sampled(flat, temperature=1.0)
    assert not torch.equal(hot, greedy) and torch.equal(hot, sampled(flat, temperature=1.0))
    ref, strength = reference(b=2)
    z = perfect_tables(ref, strength)
    assert torch.equal(sampled(z, temperature=50.0, top_k=1), ref)  # top-1 is greedy at any temperature
    assert torch.equal(sampled(z, temperature=50.0, top_p=0.01), ref)  # a tiny nucleus too
    assert not torch.equal(sampled(z, temperature=50.0), ref)
    top3 = torch.zeros(2, L, V)
    top3[..., 10:13] = 5.0
    got = sampled(top3.flatten(1), temperature=5.0, top_k=3)
    assert bool(((got >= 10) & (got < 13)).all()) and len(got.unique()) == 3


# -- alg_temp: randomness in the confidence order --------------------------------------------
def test_alg_temp_randomises_the_order_reproducibly():
    ref, strength = reference(b=1)
    z = perfect_tables(ref, strength)

    def order(alg_temp, seed=0):
        _, traj = decode(TableModel(), z, L, "linear", alg_temp=alg_temp, return_trajectory=True,
                         generator=torch.Generator().manual_seed(seed))
        return traj.committed_at[0]

    strict = order(0.0)
    assert torch.equal(strict, strength[0].argsort(descending=True).argsort() + 1)
    assert torch.equal(order(1e-4), strict)  # a tiny alg_temp keeps the confidence order
    assert not torch.equal(order(1.0), strict) and torch.equal(order(1.0, 3), order(1.0, 3))
    assert not torch.equal(order(1.0, 3), order(1.0, 4))


def test_rank_scores_is_the_confidence_without_alg_temp():
    conf = torch.rand(7)
    assert rank_scores(conf, 0.0, None) is conf


# -- the real decoder: cached and uncached condition -----------------------------------------
def tiny_decoder() -> Decoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(n_layers=2, d_model=16, n_heads=2, max_len=8, cond_tokens=2)
    return Decoder(cfg, vocab_size=30, cond_dim=6, embed_dim=16, mask_id=MASK).eval()


class RecomputedCondition(torch.nn.Module):
    """The decoder with nothing computed ahead: its "condition" only carries z (and the CFG drop
    flags), and every forward pass recomputes the condition from them (the reference the
    decoder's precomputed keys/values must match)."""

    def __init__(self, model: Decoder):
        super().__init__()
        self.inner, self.cfg, self.mask_id, self.passes = model, model.cfg, model.mask_id, 0

    def condition(self, z, drop=None):
        return {"z": z, "drop": drop}  # per-row tensors: decode selects the rows still open

    def forward(self, x, t, kv):
        self.passes += 1
        return self.inner(x, t, z=kv["z"], drop=kv["drop"])

    def logits(self, hidden):
        return self.inner.logits(hidden)


@pytest.mark.parametrize("options", [{}, {"cfg_scale": 1.5}, {"sampler": "threshold", "tau": 0.1},
                                     {"sampler": "llada", "block_length": 4, "temperature": 0.8},
                                     {"sampler": "random", "cfg_scale": 0.5, "alg_temp": 0.3}])
def test_cached_condition_gives_the_same_tokens_as_the_uncached_one(options, monkeypatch):
    model, z = tiny_decoder(), torch.randn(5, 6, generator=torch.Generator().manual_seed(3))
    calls = []
    original = model.condition
    monkeypatch.setattr(model, "condition", lambda z, drop=None: calls.append(z.shape[0]) or original(z, drop))

    def run(m):
        ids, traj = decode(m, z, 6, generator=torch.Generator().manual_seed(7), return_trajectory=True, **options)
        return ids, traj.forward_passes

    cached = run(model)
    assert len(calls) == 1  # the condition is computed once per sequence
    reference = RecomputedCondition(model)
    uncached = run(reference)
    assert torch.equal(cached[0], uncached[0]) and cached[1] == uncached[1]
    assert reference.passes == uncached[1] and len(calls) == 1 + reference.passes  # recomputed at every forward


# -- settings and their errors ---------------------------------------------------------------
def test_sampling_settings_list_every_problem():
    problems = Sampling(sampler="beam", steps=0, schedule="zigzag", block_length=0, tau=0.0, temperature=-1,
                        top_k=-1, top_p=0.0, alg_temp=-0.5, cfg_scale=float("nan")).problems()
    text = "; ".join(problems)
    assert len(problems) == 10
    assert f"valid: {', '.join(SAMPLERS)}" in text and "tau must be in (0, 1], got 0.0" in text
    assert "steps must be at least 1" in text and "valid: cosine, linear" in text
    assert Sampling(tau=1.0).problems() == [] and "tau must be in (0, 1], got 1.5" in Sampling(tau=1.5).problems()[0]
    with pytest.raises(SgddError, match="unknown sampler 'beam' \\(valid: maskgit_plus, random, entropy"):
        get_sampler("beam")
    with pytest.raises(SgddError, match="invalid decoding settings: sampler 'beam' unknown"):
        decode(TableModel(), torch.zeros(1, L * V), 4, sampler="beam")


def test_deterministic_settings():
    assert Sampling().deterministic and Sampling(sampler="llada").deterministic
    assert not Sampling(sampler="random").deterministic
    assert not Sampling(temperature=0.5).deterministic and not Sampling(alg_temp=0.5).deterministic
