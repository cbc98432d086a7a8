"""``model.length_input: standardized``: the length head reads the condition shifted and scaled by
the training split's statistics, which travel with the weights; the rest of the decoder reads the
condition as stored."""

import pytest
import torch

from sgdd.errors import SgddError
from sgdd.models.checkpoint import load_model
from sgdd.models.decoder import Standardizer
from sgdd.stages.train import fit
from sgdd.stages.train.data import load_data
from sgdd.stages.train.model import build_model
from tests.helpers_views import build_windows_cache
from tests.train.helpers import tiny_cfg
from tests.train.test_train_recipe import RECIPE

STANDARDIZED = {"model.length_input": "standardized"}


def test_the_length_head_reads_the_standardized_condition(body_cache, tmp_path):
    cfg = tiny_cfg(body_cache, tmp_path / "run", **RECIPE | STANDARDIZED | {"model.conditioning": "adaln"})
    data = load_data(cfg)
    model = build_model(cfg, data)
    z = data.train.vectors
    seen = model.length_head.norm(z)
    assert torch.allclose(seen.mean(0), torch.zeros(z.shape[1]), atol=1e-5)
    assert torch.allclose(seen.std(0), torch.ones(z.shape[1]), atol=1e-4)
    standardized = (z[:2] - z.mean(0)) / z.std(0)
    with torch.no_grad():
        assert torch.allclose(model.length_logits(z[:2]), model.length_head.net(standardized), atol=1e-5)
        # the condition MLP still reads the vector as stored
        model.ada_mlp[2].weight.normal_()
        assert torch.allclose(model.condition(z[:2]).flatten(1), model.ada_mlp(z[:2]), atol=1e-6)


def test_a_raw_length_head_has_no_statistics(body_cache, tmp_path):
    cfg = tiny_cfg(body_cache, tmp_path / "run", **RECIPE)
    model = build_model(cfg, load_data(cfg))
    assert model.length_head.norm is None
    assert not any(".norm." in k for k in model.state_dict() if k.startswith("length_head"))


def test_a_dimension_that_never_varies_is_not_divided_by_zero():
    vectors = torch.randn(50, 4)
    vectors[:, 2] = 0.3
    norm = Standardizer(4)
    norm.fit(vectors)
    assert torch.isfinite(norm(torch.randn(5, 4))).all()
    assert float(norm.std[2]) > 0
    with pytest.raises(SgddError, match="at least 2 vectors of 4 dimensions, got shape \\(1, 4\\)"):
        norm.fit(vectors[:1])


@pytest.mark.parametrize("body", [True, False], ids=["encoder-body", "scratch"])
def test_the_statistics_are_saved_and_reloaded_with_the_weights(body_cache, tmp_path, body):
    recipe = RECIPE if body else {"model.length_head": True}
    cfg = tiny_cfg(body_cache, tmp_path / "run", **recipe | STANDARDIZED | {"optim.max_steps": 3})
    result = fit(cfg)
    model, meta = load_model(tmp_path / "run" / "checkpoints" / "last")
    assert meta["decoder"]["length_input"] == "standardized"
    vectors = load_data(cfg).train.vectors
    assert torch.allclose(model.length_head.norm.mean, vectors.double().mean(0).float(), atol=1e-6)
    assert torch.equal(model.length_head.norm.std, result.model.length_head.norm.std)
    z = torch.randn(2, model.cond_dim)
    model.eval(), result.model.eval()
    assert torch.allclose(model.length_logits(z), result.model.length_logits(z), atol=1e-6)


def test_length_input_refuses_an_unknown_value_and_the_next_block_view(body_cache, tmp_path):
    with pytest.raises(SgddError, match="model.length_input 'whiten' unknown \\(valid: raw, standardized\\)"):
        tiny_cfg(body_cache, tmp_path / "run", **{"model.length_input": "whiten"})
    windows = build_windows_cache(tmp_path / "llm")
    cfg = tiny_cfg(windows, tmp_path / "mtp", **STANDARDIZED | {"model.max_len": 4, "model.length_head": True})
    with pytest.raises(SgddError, match="length_input standardized is for the sentence view"):
        build_model(cfg, load_data(cfg))
