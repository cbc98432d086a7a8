"""The time input at decode: the training t of the current mask share under every schedule."""

import pytest
import torch

from sgdd.decoding.maskgit import decode
from sgdd.models.diffusion import LOGLINEAR_EPS, SCHEDULES, get_schedule
from tests.helpers_eval import L, MASK, TableModel, perfect_tables, reference

SCHEDULE_CASES = [("linear", None), ("cosine", None), ("polynomial", 2.0), ("polynomial", 0.5), ("loglinear", None)]


def test_every_schedule_has_a_case():
    assert {name for name, _ in SCHEDULE_CASES} == set(SCHEDULES)


@pytest.mark.parametrize("name,kappa", SCHEDULE_CASES)
def test_time_of_share_inverts_the_masking_probability(name, kappa):
    schedule = get_schedule(name, kappa)
    top = 1 - LOGLINEAR_EPS if name == "loglinear" else 1.0  # loglinear never masks more than 1 - eps
    share = torch.linspace(0, top, 101)
    t = schedule.time_of_share(share)
    assert torch.allclose(1 - schedule.alpha(t), share, atol=1e-5)
    assert bool((t >= 0).all() and (t <= 1).all()) and bool((t[1:] >= t[:-1]).all())
    assert float(schedule.time_of_share(torch.tensor(1.0))) == pytest.approx(1.0)
    assert float(schedule.time_of_share(torch.tensor(0.0))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name,kappa", SCHEDULE_CASES)
@pytest.mark.parametrize("given", [0, 3])
def test_decode_feeds_the_training_time_of_the_maskable_share(name, kappa, given):
    schedule = get_schedule(name, kappa)
    ref, strength = reference(seed=4)
    model = TableModel()
    prefix = ref[:, :given] if given else None
    ids = decode(model, perfect_tables(ref, strength), 6, prefix=prefix, noise=schedule)
    assert torch.equal(ids, ref)
    assert len(model.inputs) == 6
    for x, t in model.inputs:
        share = (x == MASK).sum(1).float() / (L - given)  # the prefix is never masked in training
        assert torch.allclose(t, schedule.time_of_share(share), atol=1e-6)
    first_t = model.inputs[0][1]
    assert torch.allclose(first_t, torch.ones_like(first_t))  # everything that can be masked is: t = 1
    # the old input, the raw share over all L positions, is what training saw only for the linear
    # schedule without a given prefix (loglinear: up to a factor 1 - 1e-3)
    x_mid, t_mid = model.inputs[2]
    old = torch.allclose(t_mid, (x_mid == MASK).float().mean(1), atol=1e-2)
    assert old == (name in ("linear", "loglinear") and given == 0)


def test_without_a_schedule_decode_is_linear():
    ref, strength = reference(seed=5)
    a, b = TableModel(), TableModel()
    decode(a, perfect_tables(ref, strength), 5)
    decode(b, perfect_tables(ref, strength), 5, noise=get_schedule("linear"))
    assert all(torch.equal(ta, tb) for (_, ta), (_, tb) in zip(a.inputs, b.inputs))
    assert all(torch.allclose(t, (x == MASK).float().mean(1)) for x, t in a.inputs)


def test_a_start_block_decodes_only_its_masks_with_its_own_plan():
    ref, strength = reference(seed=6)
    start = ref.clone()
    start[0, [2, 5, 9]] = MASK  # 3 open positions in row 0
    start[1, 4] = MASK  # 1 in row 1, none in row 2
    wrong = start.clone()
    wrong[start != MASK] = (ref[start != MASK] + 1) % 20  # kept tokens the tables disagree with
    wrong[wrong == MASK] = (MASK + 1)
    wrong[start == MASK] = MASK
    model = TableModel()
    ids, traj = decode(model, perfect_tables(ref, strength), 8, start=wrong, return_trajectory=True)
    open_ = start == MASK
    assert torch.equal(ids[open_], ref[open_]) and torch.equal(ids[~open_], wrong[~open_])
    assert traj.passes_per_row.tolist() == [3, 1, 0]  # one commit per step, each row its own plan
    assert bool((traj.committed_at[~open_] == 0).all())
    assert bool((traj.token_logp[open_] < 0).all()) and bool((traj.token_logp[~open_] == 0).all())
    first_t = model.inputs[0][1]
    assert torch.allclose(first_t, torch.tensor([3 / L, 1 / L]))  # linear: t = the share masked


def test_the_score_is_the_mean_log_probability_of_the_committed_tokens():
    ref, strength = reference(seed=7)
    tables = perfect_tables(ref, strength)
    ids, traj = decode(TableModel(), tables, L, return_trajectory=True)  # one token per step: full context
    logp = tables.view(-1, L, 20).clone()
    logp[..., MASK] = float("-inf")
    expected = logp.log_softmax(-1).gather(2, ids[..., None]).squeeze(2).mean(1)
    assert torch.allclose(traj.score(), expected, atol=1e-5)
