"""The forward process: schedules, loss weights and masking."""

import math

import pytest
import torch

from sgdd.models.diffusion import (IGNORE_INDEX, LOGLINEAR_EPS, TokenLossInputs, apply_mask,
                                   cart_weights, elbo_weight, get_loss_weight, get_schedule, sample_noise,
                                   weighted_token_loss)
from sgdd.errors import SgddError

SCHEDULE_CASES = [("linear", None), ("cosine", None), ("polynomial", 2.0), ("polynomial", 0.5),
                  ("polynomial", 3.0), ("loglinear", None)]


@pytest.mark.parametrize("name,kappa", SCHEDULE_CASES)
def test_schedule_ends_and_monotone(name, kappa):
    s = get_schedule(name, kappa)
    a = s.alpha(torch.linspace(0, 1, 1001))
    assert a[0].item() == pytest.approx(1.0, abs=1e-7)
    end = LOGLINEAR_EPS if name == "loglinear" else 0.0  # log-linear never masks everything
    assert a[-1].item() == pytest.approx(end, abs=1e-7)
    assert torch.all(a[1:] <= a[:-1])


@pytest.mark.parametrize("name,kappa", SCHEDULE_CASES)
def test_schedule_derivative_matches_finite_difference(name, kappa):
    s = get_schedule(name, kappa)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-5
    fd = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    assert torch.allclose(s.dalpha(t), fd, atol=1e-6)


def test_polynomial_kappa_is_the_exponent_and_defaults_to_two():
    t = torch.tensor([0.5])
    assert get_schedule("polynomial", 3.0).alpha(t).item() == pytest.approx(1 - 0.125)
    assert get_schedule("polynomial").alpha(t).item() == pytest.approx(1 - 0.25)
    assert get_schedule("polynomial", 1.0).alpha(t).item() == get_schedule("linear").alpha(t).item()


@pytest.mark.parametrize("name,kappa,expected", [
    ("linear", None, lambda t: 1 / t),
    ("loglinear", None, lambda t: 1 / t),  # MDLM: the log-linear schedule's ELBO weight is 1/t too
    ("polynomial", 3.0, lambda t: 3 / t),
])
def test_elbo_weight_closed_forms(name, kappa, expected):
    t = torch.linspace(0.01, 1.0, 100, dtype=torch.float64)
    assert torch.allclose(elbo_weight(get_schedule(name, kappa), t), expected(t))


def test_elbo_weight_cosine_matches_finite_difference_formula():
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    h = 1e-6

    def alpha(s):
        return torch.cos(0.5 * math.pi * s)

    expected = -((alpha(t + h) - alpha(t - h)) / (2 * h)) / (1 - alpha(t))
    assert torch.allclose(elbo_weight(get_schedule("cosine"), t), expected, rtol=1e-5)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(SgddError, match="valid: elbo, ones, path, cart"):
        get_loss_weight("nope")
    with pytest.raises(SgddError, match="valid: linear, cosine, polynomial, loglinear"):
        get_schedule("nope")


def test_sample_noise_range_and_reproducible():
    t, u = sample_noise(500, 9, 0.1, torch.Generator().manual_seed(3))
    assert t.shape == (500,) and u.shape == (500, 9)
    assert t.min() >= 0.1 and t.max() <= 1.0 and u.min() >= 0 and u.max() < 1
    t2, u2 = sample_noise(500, 9, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(t, t2) and torch.equal(u, u2)


@pytest.mark.parametrize("name,kappa", SCHEDULE_CASES)
@pytest.mark.parametrize("tval", [0.1, 0.5, 0.9])
def test_apply_mask_share_is_one_minus_alpha(name, kappa, tval):
    s = get_schedule(name, kappa)
    n, length = 4, 20000
    x0 = torch.randint(0, 50, (n, length), generator=torch.Generator().manual_seed(0))
    t = torch.full((n,), tval)
    _, u = sample_noise(n, length, 1e-3, torch.Generator().manual_seed(1))
    x_t, masked = apply_mask(x0, t, u, s, mask_id=99)
    share = masked.float().mean().item()
    assert share == pytest.approx(1 - s.alpha(torch.tensor(tval)).item(), abs=0.01)
    assert torch.all(x_t[masked] == 99)
    assert torch.equal(x_t[~masked], x0[~masked])


def test_mask_exactly_where_u_below_one_minus_alpha():
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(0, 50, (64, 32), generator=g)
    t, u = sample_noise(64, 32, 1e-3, g)
    x_t, masked = apply_mask(x0, t, u, get_schedule("cosine"), mask_id=77)
    threshold = (1 - torch.cos(0.5 * math.pi * t))[:, None]  # [B, 1]
    assert torch.equal(masked, u < threshold)
    assert torch.all(x_t[u >= threshold] == x0[u >= threshold])


def test_ignored_labels_are_always_mask_tokens_and_never_scored():
    x0 = torch.tensor([[5, 6, IGNORE_INDEX, IGNORE_INDEX]])
    u = torch.tensor([[0.9, 0.0, 0.0, 0.9]])  # position 1 and 2 fall under the threshold
    x_t, scored = apply_mask(x0, torch.tensor([0.5]), u, get_schedule("linear"), mask_id=3)
    assert x_t.tolist() == [[5, 3, 3, 3]]
    assert scored.tolist() == [[False, True, False, False]]


def test_given_positions_are_never_masked_nor_scored():
    x0 = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    x_t, scored = apply_mask(x0, torch.tensor([1.0, 1.0]), torch.zeros(2, 4), get_schedule("linear"), mask_id=9, given=1)
    assert x_t.tolist() == [[5, 9, 9, 9], [1, 9, 9, 9]]  # t = 1 masks everything but the given token
    assert scored[:, 0].tolist() == [False, False] and bool(scored[:, 1:].all())


# --------------------------------------------------------------------------------------------
# loss weights
# --------------------------------------------------------------------------------------------
def cart_by_hand(masked: list[bool], p: float) -> list[float]:
    out = []
    for j, m in enumerate(masked):
        w = sum(p * (1 - p) ** max(abs(i - j) - 1, 0) for i, mi in enumerate(masked) if not mi)
        out.append(0.5 * w if m else 0.0)
    return out


def test_cart_weight_is_half_the_geometric_mass_of_clean_neighbours():
    masked = torch.tensor([[False, True, True, False, True]])
    w = cart_weights(masked, 0.5)
    # position 1: clean 0 at gap 0 (p) and clean 3 at gap 1 (p(1-p)) -> 0.5 * (0.5 + 0.25)
    assert w[0].tolist() == pytest.approx([0.0, 0.375, 0.375, 0.0, 0.5 * (0.5 * 0.5 ** 3 + 0.5)])
    g = torch.Generator().manual_seed(0)
    rand = torch.rand(6, 9, generator=g) < 0.6
    expected = torch.tensor([cart_by_hand(row, 0.3) for row in rand.tolist()])
    assert torch.allclose(cart_weights(rand, 0.3), expected, atol=1e-6)
    assert torch.equal(cart_weights(torch.ones(2, 5, dtype=torch.bool), 0.3), torch.zeros(2, 5))  # no context


def loss_inputs(ce: torch.Tensor, p: float = 0.3) -> TokenLossInputs:
    masked = torch.tensor([[True, False, True], [True, True, False]])
    return TokenLossInputs(ce=ce, t=torch.tensor([0.25, 0.5]), masked=masked, scored=masked,
                           schedule=get_schedule("linear"), cart_p=p)


def test_each_loss_weight_applies_its_formula():
    ce = torch.tensor([1.0, 2.0, 0.5, 3.0])  # scored tokens in row-major order: rows 0, 0, 1, 1
    x = loss_inputs(ce)
    assert torch.equal(weighted_token_loss("ones", x), ce)
    assert torch.allclose(weighted_token_loss("elbo", x), ce * torch.tensor([4.0, 4.0, 2.0, 2.0]))
    assert torch.allclose(weighted_token_loss("path", x), ce + torch.exp(-ce) * ce)
    cart = torch.tensor(cart_by_hand([True, False, True], 0.3) + cart_by_hand([True, True, False], 0.3))
    assert torch.allclose(weighted_token_loss("cart", x), cart[cart > 0] * ce)


def test_path_loss_gradient_treats_the_factor_as_a_constant():
    ce = torch.tensor([0.1, 1.0, 2.0, 4.0], requires_grad=True)
    weighted_token_loss("path", loss_inputs(ce)).sum().backward()
    assert torch.allclose(ce.grad, 1 + torch.exp(-ce.detach()))  # d/dl [l + sg(e^-l) l] = 1 + e^-l


def test_cart_p_changes_the_weights():
    ce = torch.ones(4)
    assert not torch.allclose(weighted_token_loss("cart", loss_inputs(ce, 0.3)),
                              weighted_token_loss("cart", loss_inputs(ce, 0.9)))
