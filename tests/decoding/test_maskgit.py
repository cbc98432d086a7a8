"""MaskGIT decoding (the loop every sampler shares): plans, a perfect predictor decodes exactly, commits are final, CFG, sampling."""

import pytest
import torch

from sgdd.decoding.maskgit import _guide, decode, tokens_to_text
from sgdd.decoding.schedules import UNMASK_SCHEDULES, unmask_plan
from sgdd.models.decoder import Decoder
from sgdd.models.decoder import DecoderConfig
from sgdd.errors import SgddError
from tests.helpers import build_tokenizer
from tests.helpers_eval import MASK, V, L, TableModel, perfect_tables, reference


# -- the plan --------------------------------------------------------------------------------
def test_plan_hand_values():
    # cosine: floor(16 cos(pi/8)) = 14, floor(16 cos(pi/4)) = 11, floor(16 cos(3pi/8)) = 6
    assert unmask_plan(16, 4, "cosine") == [14, 11, 6, 0]
    assert unmask_plan(16, 4, "linear") == [12, 8, 4, 0]
    assert unmask_plan(5, 1, "cosine") == [0]
    # square 1-r^2: 15, 12, 7; cubic 1-r^3: 15, 14, 9; sqrt 1-sqrt(r): 8, 4, 2
    assert unmask_plan(16, 4, "square") == [15, 12, 7, 0]
    assert unmask_plan(16, 4, "cubic") == [15, 14, 9, 0]
    assert unmask_plan(16, 4, "sqrt") == [8, 4, 2, 0]


@pytest.mark.parametrize("schedule", list(UNMASK_SCHEDULES))
@pytest.mark.parametrize("length", [1, 3, 16, 64])
@pytest.mark.parametrize("steps", [1, 2, 4, 15, 16, 64, 100])
def test_plan_commits_each_step_and_ends_unmasked(schedule, length, steps):
    plan = unmask_plan(length, steps, schedule)
    assert len(plan) == min(steps, length)  # one forward pass per step, never wasted
    assert plan[-1] == 0
    assert all(a > b for a, b in zip([length] + plan, plan))


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(SgddError, match="valid: cosine, linear, square, cubic, sqrt"):
        unmask_plan(8, 2, "zigzag")


# -- perfect predictor -----------------------------------------------------------------------
@pytest.mark.parametrize("schedule", list(UNMASK_SCHEDULES))
@pytest.mark.parametrize("steps", [1, 4, L])
def test_perfect_predictor_decodes_exactly(schedule, steps):
    ref, strength = reference()
    model = TableModel()
    ids, traj = decode(model, perfect_tables(ref, strength), steps, schedule, return_trajectory=True)
    assert torch.equal(ids, ref)
    assert len(model.inputs) == steps == traj.forward_passes
    assert len(model.conditions) == 1  # kv once per decode call
    # the steps commit exactly the planned numbers of tokens
    plan = unmask_plan(L, steps, schedule)
    for s, masked_after in enumerate(plan, start=1):
        assert bool(((traj.committed_at > s).sum(1) == masked_after).all())


def test_a_given_prefix_is_kept_and_the_rest_decoded():
    ref, strength = reference(seed=2)
    wrong = (ref[:, :3] + 1) % V  # a prefix the tables disagree with: it must survive anyway
    ids, traj = decode(TableModel(), perfect_tables(ref, strength), L, return_trajectory=True, prefix=wrong)
    assert torch.equal(ids[:, :3], wrong) and torch.equal(ids[:, 3:], ref[:, 3:])
    assert bool((traj.committed_at[:, :3] == 0).all()) and bool((traj.committed_at[:, 3:] > 0).all())
    with pytest.raises(SgddError, match="does not fit"):
        decode(TableModel(), perfect_tables(ref, strength), 4, prefix=ref)  # nothing left to decode


@pytest.mark.parametrize("schedule", list(UNMASK_SCHEDULES))
def test_commits_are_final_and_mask_count_only_falls(schedule):
    ref, strength = reference(seed=1)
    model = TableModel()
    ids = decode(model, perfect_tables(ref, strength), 5, schedule)
    states = [x for x, _ in model.inputs] + [ids]
    counts = [(x == MASK).sum(1) for x in states]
    assert bool((counts[0] == L).all())  # starts fully masked
    for before, after, n_before, n_after in zip(states, states[1:], counts, counts[1:]):
        done = before != MASK
        assert torch.equal(after[done], before[done])  # committed tokens never change
        assert bool((n_after < n_before).all())  # mask count strictly falls
    for (x, t) in model.inputs:  # the time input is the share still masked
        assert torch.allclose(t, (x == MASK).float().mean(1))


def test_most_confident_positions_are_committed_first():
    ref, strength = reference(seed=2)
    _, traj = decode(TableModel(), perfect_tables(ref, strength), L, "linear", return_trajectory=True)
    # one token per step, in falling order of confidence (= strength of the reference logit)
    order = strength.argsort(dim=1, descending=True)
    assert torch.equal(traj.committed_at.gather(1, order), torch.arange(1, L + 1).expand(3, L))


def test_more_steps_than_tokens_stop_when_nothing_is_masked():
    ref, strength = reference()
    model = TableModel()
    ids, traj = decode(model, perfect_tables(ref, strength), 3 * L, return_trajectory=True)
    assert torch.equal(ids, ref)
    assert len(model.inputs) == L == traj.forward_passes


# -- classifier-free guidance ----------------------------------------------------------------
A, B_TOK = 7, 9


def guidance_model() -> tuple[TableModel, torch.Tensor]:
    """Conditional logits prefer A mildly (2 vs 1.5), unconditional ones strongly (4 vs 0):
    guidance with w = 1 scores A at 2*2-4 = 0 and B at 2*1.5-0 = 3, so B wins."""
    cond = torch.full((L, V), -5.0)
    cond[:, A], cond[:, B_TOK] = 2.0, 1.5
    null = torch.full((L, V), -5.0)
    null[:, A], null[:, B_TOK] = 4.0, 0.0
    return TableModel(null_table=null), cond.flatten().expand(2, L * V).clone()


def test_cfg_runs_one_batched_forward_per_step_and_changes_the_choice():
    model, z = guidance_model()
    assert bool((decode(model, z, 4) == A).all())
    model, z = guidance_model()
    ids = decode(model, z, 4, cfg_scale=1.0)
    assert bool((ids == B_TOK).all())
    assert len(model.inputs) == 4  # one forward call per step ...
    assert all(x.shape[0] == 4 for x, _ in model.inputs)  # ... over conditional + unconditional rows
    (rows, drop), = model.conditions  # kv of both branches computed once
    assert rows == 4 and drop.tolist() == [False, False, True, True]


def test_cfg_scale_zero_equals_no_cfg():
    ref, strength = reference(seed=3)
    z = perfect_tables(ref, strength)
    null = torch.randn(L, V, generator=torch.Generator().manual_seed(0))
    plain = decode(TableModel(null_table=null), z, 4)
    assert torch.equal(decode(TableModel(null_table=null), z, 4, cfg_scale=0.0), plain)
    assert torch.equal(decode(TableModel(null_table=null), z, 4, cfg_scale=1e-6), plain)  # batched path
    lc, lu = torch.randn(5, V), torch.randn(5, V)
    lc[:, MASK] = lu[:, MASK] = float("-inf")
    guided = _guide(lc, lu, 0.0)
    assert torch.allclose(guided, lc.log_softmax(-1))
    assert not guided.isnan().any() and bool(torch.isneginf(guided[:, MASK]).all())


# -- repetition penalty ----------------------------------------------------------------------
def repeating_table(strength: float = 3.0) -> torch.Tensor:
    """Every position prefers token A (logit ``strength`` plus a bonus falling from 0.5 to 0 along
    the positions); its second choice, at 1, is a token no other position wants; the rest 0: [1, L*V]."""
    table = torch.zeros(L, V)
    table[:, A] = strength + torch.linspace(0.5, 0, L)
    second = [tok for tok in range(V) if tok not in (A, MASK)][:L]
    table[torch.arange(L), second] = 1.0
    return table.flatten()[None]


def test_repetition_penalty_lowers_tokens_already_held():
    assert bool((decode(TableModel(), repeating_table(), L) == A).all())  # the weak decoder's failure
    ids = decode(TableModel(), repeating_table(), L, repetition_penalty=5.0)[0]
    assert (ids == A).sum() == 1 and ids[0] == A  # the first commit keeps it, then held: 3 - 5 < 1
    # a penalty of 1 per copy: A (3 + bonus - held) beats the second choice (1) while held < 2 + bonus
    ids = decode(TableModel(), repeating_table(), L, repetition_penalty=1.0)[0]
    assert (ids == A).sum() == 3 and bool((ids[:3] == A).all())
    # exempt ids (padding, sentence ends) may repeat freely; the default (0) is off
    assert bool((decode(TableModel(), repeating_table(), L, repetition_penalty=5.0, exempt=[A]) == A).all())
    ref, strength = reference(seed=4)
    assert torch.equal(decode(TableModel(), perfect_tables(ref, strength), 4, repetition_penalty=0.0),
                       decode(TableModel(), perfect_tables(ref, strength), 4))


def test_repetition_penalty_must_be_finite_and_not_negative():
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(SgddError, match="repetition_penalty"):
            decode(TableModel(), repeating_table(), 4, repetition_penalty=bad)


# -- the real decoder ------------------------------------------------------------------------
def tiny_decoder() -> Decoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(n_layers=1, d_model=16, n_heads=2, max_len=8, cond_tokens=2)
    return Decoder(cfg, vocab_size=30, cond_dim=6, embed_dim=16, mask_id=MASK)


def test_real_decoder_condition_once_steps_forwards_and_mode_restored(monkeypatch):
    model = tiny_decoder().train()
    calls = {"condition": 0, "forward": 0}
    original = model.condition

    def counting_condition(z, drop=None):
        calls["condition"] += 1
        return original(z, drop)

    monkeypatch.setattr(model, "condition", counting_condition)
    model.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    ids = decode(model, torch.randn(3, 6), 4, cfg_scale=2.0)
    assert ids.shape == (3, 8) and not (ids == MASK).any()
    assert calls == {"condition": 1, "forward": 4}
    assert model.training  # decode runs in eval mode and gives the mode back


def test_sampling_is_reproducible_with_a_seeded_generator():
    model, z = tiny_decoder(), torch.randn(4, 6, generator=torch.Generator().manual_seed(1))

    def sample(seed):
        return decode(model, z, 4, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    assert torch.equal(decode(model, z, 4), decode(model, z, 4))  # greedy needs no generator


# -- ids to text -----------------------------------------------------------------------------
def test_tokens_to_text_cuts_at_eos_and_drops_specials():
    tok = build_tokenizer()
    special = {"pad_id": tok.pad_token_id, "mask_id": tok.mask_token_id,
               "bos_id": tok.cls_token_id, "eos_id": tok.sep_token_id}
    bos, eos, pad = special["bos_id"], special["eos_id"], special["pad_id"]
    the, cat, dog = (tok.convert_tokens_to_ids(w) for w in ("the", "cat", "dog"))
    ids = torch.tensor([
        [bos, the, cat, eos, pad, pad],
        [bos, dog, eos, the, cat, pad],  # anything after the first eos is cut
        [bos, the, pad, dog, pad, pad],  # no eos: pads dropped, the rest kept
        [eos, cat, the, pad, eos, dog],  # eos at position 0 is not an end
    ])
    assert tokens_to_text(ids, tok, special) == ["the cat", "dog", "the dog", "cat the"]
    assert tokens_to_text([[bos, eos]], tok, special) == [""]
