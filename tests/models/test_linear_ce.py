"""The fused projection + weighted cross-entropy (sgdd.models.linear_ce) against the plain path
(logits [M, V], F.cross_entropy, autograd): the same loss, the same gradients, and the same loss
curve over a fixed number of training steps of a tiny decoder."""

import pytest
import torch
import torch.nn.functional as F

from sgdd.models.decoder import Decoder, DecoderConfig
from sgdd.models.diffusion import DiffusionConfig
from sgdd.models.linear_ce import linear_cross_entropy
from sgdd.stages.train.loss import draw_noise, masked_diffusion_loss

MASK = 5


def reference(x, weight, bias, target, w):
    logits = F.linear(x, weight, bias).float()
    logits[:, MASK] = float("-inf")
    ce = F.cross_entropy(logits, target, reduction="none")
    return (ce * w).sum(), ce, (logits.max(-1).indices == target).sum()


def leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).requires_grad_() for s in shapes]


@pytest.mark.parametrize("M,chunk", [(1, 512), (200, 512), (300, 64), (0, 512)])
def test_loss_and_gradients_match_the_plain_path(M, chunk):
    V, E = 40, 12
    g = torch.Generator().manual_seed(M)
    target = torch.randint(0, V, (M,), generator=g)
    target[target == MASK] = 0
    w = torch.rand(M, generator=g) * 3
    grads = []
    for fn in (reference, lambda *a: linear_cross_entropy(*a, mask_id=MASK, chunk=chunk)):
        x, weight, bias = leaves((M, E), (V, E), (V,))
        loss, ce, correct = fn(x, weight, bias, target, w)
        (2.5 * loss).backward()
        grads.append((loss.detach(), ce.detach(), correct, x.grad, weight.grad, bias.grad))
    for got, want in zip(grads[1], grads[0]):
        assert got.shape == want.shape
        assert torch.allclose(got.float(), want.float(), rtol=1e-4, atol=1e-5)
    assert grads[1][5][MASK] == 0  # the mask token is never predicted, and never pushed


@pytest.mark.parametrize("M,chunk", [(200, 512), (300, 64), (0, 512)])
def test_a_frozen_output_matrix_gets_no_gradient_and_the_rest_are_unchanged(M, chunk):
    V, E = 40, 12
    g = torch.Generator().manual_seed(M + 1)
    target = torch.randint(6, V, (M,), generator=g)
    w = torch.rand(M, generator=g) * 3
    x, weight, bias = leaves((M, E), (V, E), (V,))
    reference(x, weight, bias, target, w)[0].backward()
    fx, fweight, fbias = leaves((M, E), (V, E), (V,))
    fweight.requires_grad_(False)
    linear_cross_entropy(fx, fweight, fbias, target, w, mask_id=MASK, chunk=chunk)[0].backward()
    assert fweight.grad is None
    assert torch.allclose(fx.grad, x.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(fbias.grad, bias.grad, rtol=1e-4, atol=1e-5)


def test_without_grad_it_computes_the_loss_alone():
    V, E, M = 40, 12, 70
    target = torch.randint(6, V, (M,), generator=torch.Generator().manual_seed(3))
    x, weight, bias = leaves((M, E), (V, E), (V,))
    w = torch.rand(M)
    with torch.no_grad():
        got = linear_cross_entropy(x, weight, bias, target, w, MASK)
    want = reference(x.detach(), weight.detach(), bias.detach(), target, w)
    assert got[0].grad_fn is None
    for a, b in zip(got, want):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5)


def test_under_bf16_autocast_it_matches_the_plain_path_within_bf16_rounding():
    V, E, M = 64, 16, 150
    g = torch.Generator().manual_seed(1)
    target = torch.randint(6, V, (M,), generator=g)
    w = torch.rand(M, generator=g)
    out = []
    for fn in (reference, lambda *a: linear_cross_entropy(*a, mask_id=MASK)):
        x, weight, bias = leaves((M, E), (V, E), (V,), seed=2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _, _ = fn(x, weight, bias, target, w)
        loss.backward()
        assert x.grad.dtype == weight.grad.dtype == torch.float32
        out.append((loss.detach(), x.grad, weight.grad))
    for got, want in zip(out[1], out[0]):
        assert (got - want).abs().max() <= 1e-2 * want.abs().max()


def test_under_fp16_autocast_small_gradients_are_not_flushed_to_zero():
    """The gradients are formed in the forward, before a loss scaler multiplies them: under fp16
    they are computed in fp32, so a tiny token weight still gives the fp32 path's gradients."""
    V, E, M = 64, 16, 40
    target = torch.randint(6, V, (M,), generator=torch.Generator().manual_seed(4))
    w = torch.full((M,), 1e-7)
    out = []
    for fp16 in (False, True):
        x, weight, bias = leaves((M, E), (V, E), (V,), seed=5)
        with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
            loss, _, _ = linear_cross_entropy(x, weight, bias, target, w, MASK)
        (loss * 1024).backward()  # the scaler's job, after the loss
        out.append((x.grad, weight.grad))
    for got, want in zip(out[1], out[0]):
        assert want.abs().max() > 0 and (got - want).abs().max() <= 2e-2 * want.abs().max()


def tiny_decoder(seed=0):
    torch.manual_seed(seed)
    return Decoder(DecoderConfig(n_layers=2, d_model=32, n_heads=2, max_len=12), 50, 8, 32, 3)


@pytest.mark.parametrize("loss_weight", ["ones", "elbo", "cart", "path"])
def test_the_loss_curve_of_a_fixed_number_of_steps_is_unchanged(loss_weight):
    """30 AdamW steps of a tiny decoder from the same start, with the same batches and noise:
    the fused loss (ones, elbo, cart) follows the plain one step by step; path (not linear in
    the cross-entropy) takes the plain path either way."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(4, 50, (16, 12), generator=g)  # one batch of 16 blocks, learnt by heart
    z = torch.randn(16, 8, generator=g)
    dcfg = DiffusionConfig(loss_weight=loss_weight)
    curves = []
    for fused in (False, True):
        model = tiny_decoder()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        noise_gen = torch.Generator().manual_seed(1)
        curve = []
        for step in range(30):
            noise = draw_noise(16, 12, dcfg, 0.0, noise_gen)
            parts = masked_diffusion_loss(model, x0, z, noise, dcfg, fused=fused)
            opt.zero_grad()
            parts.weighted.backward()
            opt.step()
            curve.append((parts.weighted.item(), parts.ce_sum.item() / parts.n_masked.item(), parts.correct.item()))
        curves.append(curve)
    plain, fused = curves
    ce = [c for _, c, _ in plain]  # mean CE per scored token
    assert sum(ce[-5:]) < 0.85 * sum(ce[:5])  # it learns: the comparison is of a moving curve
    for (a, ce_a, c_a), (b, ce_b, c_b) in zip(plain, fused):
        assert b == pytest.approx(a, rel=1e-4) and ce_b == pytest.approx(ce_a, rel=1e-4)
        assert abs(c_a - c_b) <= 1  # an argmax tie may fall the other way after rounding
