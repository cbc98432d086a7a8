"""Linear layers over a few rows (sgdd.models.fewrows): the same product as F.linear, taken as
W @ x^T only where the rows are few, and a model converted in place keeps its weights."""

import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgdd.models import fewrows


@pytest.mark.parametrize("rows", [1, 2, 4, fewrows.FEW_ROWS, fewrows.FEW_ROWS + 1, 40])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(), (1,)])
@pytest.mark.parametrize("one_row", fewrows.ONE_ROW_FORMS)
def test_linear_equals_f_linear(rows, bias, lead, one_row):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(*lead, rows, 24, generator=g)
    w, b = torch.randn(50, 24, generator=g), (torch.randn(50, generator=g) if bias else None)
    y = fewrows.linear(x, w, b, one_row)
    assert y.shape == (*lead, rows, 50) and y.is_contiguous()
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_only_few_rows_take_the_weight_major_form(monkeypatch):
    """2 to FEW_ROWS rows never reach F.linear; one row and more rows always do."""
    calls = []
    monkeypatch.setattr(fewrows.F, "linear", lambda *a: calls.append(a[0].shape) or torch.zeros(a[0].shape[0], 3))
    w = torch.randn(3, 5)
    fewrows.linear(torch.randn(fewrows.FEW_ROWS, 5), w)
    fewrows.linear(torch.randn(1, 2, 5), w)
    assert calls == []
    fewrows.linear(torch.randn(fewrows.FEW_ROWS + 1, 5), w)
    fewrows.linear(torch.randn(1, 5), w)
    assert calls == [(fewrows.FEW_ROWS + 1, 5), (1, 5)]
    fewrows.linear(torch.randn(1, 1, 5), w, one_row="padded")  # the row twice, as W @ x^T
    assert len(calls) == 2


def test_fastest_one_row_keeps_the_form_that_timed_faster():
    """The step is slow in one form: that form loses, whichever of the two it is."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    fewrows.use_few_rows(model)
    for slow in fewrows.ONE_ROW_FORMS:
        def step():
            time.sleep(0.004 if model[0].one_row == slow else 0.0)

        best, ms = fewrows.fastest_one_row(model, step, repeats=3)
        assert best != slow and ms[slow] > ms[best]
        assert all(layer.one_row == best for layer in model)
    with pytest.raises(ValueError, match="one-row form 'gemv'"):
        fewrows.set_one_row(model, "gemv")


def test_use_few_rows_converts_plain_linears_in_place_and_keeps_the_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4, bias=False), nn.MultiheadAttention(4, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 8)
    ref = model[2](model[1](model[0](x)))
    assert fewrows.use_few_rows(model) == 2  # MultiheadAttention's out_proj is a Linear subclass: left alone
    assert isinstance(model[0], fewrows.FewRowsLinear) and type(model[3].out_proj) is not fewrows.FewRowsLinear
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(model[2](model[1](model[0](x))), ref, rtol=1e-5, atol=1e-5)
    assert fewrows.use_few_rows(model) == 0  # converting twice changes nothing


def test_low_precision_weights_compute_in_their_dtype_and_leave_a_tied_embedding_alone():
    torch.manual_seed(0)
    embed, head, mlp = nn.Embedding(50, 24), nn.Linear(24, 50, bias=False), nn.Linear(24, 24)
    head.weight = embed.weight  # tied, as many causal LMs are
    model = nn.ModuleList([embed, head, mlp])
    x = torch.randn(3, 24)
    assert fewrows.use_low_precision_weights(model) == 2
    assert embed.weight.dtype == torch.float32 and head.weight.dtype == mlp.weight.dtype == torch.bfloat16
    assert head.weight is not embed.weight and isinstance(mlp, fewrows.FewRowsLinear)
    for rows in (1, 3):
        y = mlp(x[:rows])
        assert y.dtype == torch.float32  # the output comes back in the input's dtype
        torch.testing.assert_close(y, F.linear(x[:rows].bfloat16(), mlp.weight, mlp.bias).float())
    torch.testing.assert_close(head(x), x @ embed.weight.t(), rtol=2e-2, atol=5e-2)  # bf16 rounding only
    assert fewrows.use_low_precision_weights(model) == 0  # converting twice changes nothing


def _attention_inputs(rows: int, past: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 4, rows, 8, generator=g)  # 4 query heads over 2 key/value heads (GQA)
    k, v = (torch.randn(1, 2, past + rows, 8, generator=g) for _ in range(2))
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True)
    return module, q, k, v


@pytest.mark.parametrize("mask", ["none", "causal", "tree", "additive"])
def test_rowwise_attention_is_sdpa_with_each_row_computed_as_a_one_row_forward(mask):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, past = 4, 9
    module, q, k, v = _attention_inputs(rows, past)
    see = torch.arange(past + rows)[None] <= torch.arange(past, past + rows)[:, None]  # causal [rows, keys]
    if mask == "tree":  # row 2 is a second child of row 0: it does not see row 1
        see[2, past + 1] = False
        see[3, past + 1] = False  # row 3, the child of row 2
    attention = None if mask == "none" else see[None, None]
    if mask == "additive":  # 0 where a row may attend, the dtype's minimum elsewhere
        attention = torch.zeros(see.shape).masked_fill_(~see, torch.finfo(torch.float32).min)[None, None]
    if mask == "none":
        past, k, v = 0, k[:, :, :rows], v[:, :, :rows]  # no mask: a prompt, causal over its own rows
        see = see[:, 9:]
    out, _ = fewrows.rowwise_attention(module, q, k, v, attention, scaling=8 ** -0.5)
    ref, _ = sdpa_attention_forward(module, q, k, v, attention, scaling=8 ** -0.5)
    assert out.shape == ref.shape == (1, rows, 4, 8)
    torch.testing.assert_close(out, ref)
    for i in range(rows):  # bit for bit what a forward of row i alone over its visible keys computes
        visible = see[i].nonzero()[:, 0]
        alone, _ = sdpa_attention_forward(module, q[:, :, i : i + 1], k[:, :, visible], v[:, :, visible], None,
                                          scaling=8 ** -0.5)
        assert torch.equal(out[:, i : i + 1], alone)
