"""Linear layers over a few rows (sgdd.models.fewrows): the same product as F.linear, taken as
W @ x^T only where the rows are few, and a model converted in place keeps its weights."""

import time

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
