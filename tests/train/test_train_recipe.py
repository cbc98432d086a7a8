"""The reconstruction recipe's training side: a decoder body started from the encoder's own
layers, length-bucketed batches with a length head, stratified times and a wall-time budget."""

import math

import pytest
import torch

from sgdd.cache.reader import open_cache
from sgdd.models.body import BODY_PREFIX, BodyDecoder
from sgdd.models.checkpoint import load_model
from sgdd.models.diffusion import sample_noise
from sgdd.errors import SgddError
from sgdd.stages.train import fit
from sgdd.stages.train import trainer
from sgdd.stages.train.config import OptimConfig
from sgdd.stages.train.data import load_data
from sgdd.stages.train.model import build_model
from sgdd.stages.train.optim import Clock, lr_factor, param_groups
from sgdd.stages.train.samplers import LengthSampler
from tests.helpers import build_cache
from tests.train.helpers import tiny_cfg

BODY = {"model.init_body": "encoder", "model.conditioning": "prefix", "model.d_model": None, "model.n_layers": 2}
RECIPE = BODY | {"model.length_head": True, "batching": "by_length", "diffusion.stratified": True,
                 "optim.body_lr": 1e-4}


def test_body_starts_from_the_encoders_weights(body_cache, tmp_path):
    cfg = tiny_cfg(body_cache, tmp_path / "run", **BODY)
    model = build_model(cfg, load_data(cfg))
    _, encoder = open_cache(body_cache).body()
    state = model.body.state_dict()
    assert isinstance(model, BodyDecoder) and state
    assert all(torch.equal(state[k], encoder[k].float()) for k in state)
    # at step 0 the condition does not disturb the body: the prefix MLP's output layer is zero
    z = torch.randn(3, model.cond_dim)
    assert torch.count_nonzero(model.condition(z)) == 0


def test_body_takes_the_first_n_layers_and_refuses_more(body_cache, tmp_path):
    cfg = tiny_cfg(body_cache, tmp_path / "run", **BODY | {"model.n_layers": 1})
    assert len(build_model(cfg, load_data(cfg)).body.encoder.layer) == 1
    cfg = tiny_cfg(body_cache, tmp_path / "run", **BODY | {"model.n_layers": 3})
    with pytest.raises(SgddError, match="the encoder has 2 layers"):
        build_model(cfg, load_data(cfg))


def test_body_needs_a_cache_with_encoder_weights(tmp_path):
    cache = build_cache(tmp_path / "plain")
    with pytest.raises(SgddError, match="holds no encoder weights"):
        load_data(tiny_cfg(cache, tmp_path / "run", **BODY))


def test_body_lr_applies_to_pretrained_weights_only(body_cache, tmp_path):
    cfg = tiny_cfg(body_cache, tmp_path / "run", **BODY)
    model = build_model(cfg, load_data(cfg))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, OptimConfig(lr=1e-3, body_lr=1e-5, weight_decay=0.1))
    for g in groups:
        in_body = {names[id(p)].startswith(BODY_PREFIX) for p in g["params"]}
        assert len(in_body) == 1
        assert g["lr"] == (1e-5 if in_body.pop() else 1e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_recipe_trains_saves_and_reloads(body_cache, tmp_path):
    cfg = tiny_cfg(body_cache, tmp_path / "run", **RECIPE | {"optim.max_steps": 12, "eval_every": 6})
    result = fit(cfg)
    rows = [r for r in result.metrics if "loss" in r]
    assert all("length_acc" in r for r in rows)
    val = [r for r in result.metrics if "val_loss" in r]
    assert len(val) == 2 and all("val_length_acc" in r for r in val)
    model, meta = load_model(tmp_path / "run" / "checkpoints" / "last")
    assert isinstance(model, BodyDecoder) and meta["batching"] == "by_length"
    assert meta["diffusion"] == {"schedule": "linear", "kappa": None}
    ids = torch.tensor([[0, 5, 6, 2]])
    z = torch.randn(1, model.cond_dim)
    model.eval(), result.model.eval()
    assert torch.allclose(model(ids, None, z), result.model(ids, None, z), atol=1e-6)
    assert model.length_logits(z).shape == (1, model.cfg.max_len + 1)


def test_by_length_batching_needs_a_length_head(body_cache, tmp_path):
    with pytest.raises(SgddError, match="set model.length_head true"):
        tiny_cfg(body_cache, tmp_path / "run", **{"batching": "by_length"})


def test_length_sampler_batches_one_length_and_covers_every_row_once_per_epoch():
    lengths = torch.tensor([5, 7, 5, 9, 7, 7, 5, 9, 9, 9, 6])
    s = LengthSampler(lengths, batch_size=2, seed=3)
    seen = []
    while len(seen) < lengths.numel():
        idx = s.next_batch()
        assert idx.numel() <= 2 and len(set(lengths[idx].tolist())) == 1
        seen += idx.tolist()
    assert sorted(seen) == list(range(lengths.numel()))
    state = s.state_dict()
    ahead = [s.next_batch() for _ in range(9)]  # into the next epoch
    again = LengthSampler(lengths, batch_size=2, seed=3)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(ahead, [again.next_batch() for _ in range(9)]))


def test_stratified_times_cover_the_interval_evenly():
    g = torch.Generator().manual_seed(0)
    t, _ = sample_noise(64, 8, 1e-3, g, stratified=True)
    gaps = t.sort().values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, (1 - 1e-3) / 64), atol=1e-5)
    iid, _ = sample_noise(64, 8, 1e-3, torch.Generator().manual_seed(0))
    assert iid.sort().values.diff().max() > 2 * (1 - 1e-3) / 64  # i.i.d. draws leave gaps


def test_lr_decays_over_the_time_budget():
    clock = Clock(budget_s=100.0)
    assert lr_factor(2, 2, 10_000, 0.1, clock.progress()) == pytest.approx(1.0)
    clock.spent_s = 50.0
    assert lr_factor(2, 2, 10_000, 0.1, clock.progress()) == pytest.approx(0.55)
    clock.spent_s = 100.0
    assert lr_factor(2, 2, 10_000, 0.1, clock.progress()) == pytest.approx(0.1) and clock.out
    assert not Clock().out and Clock().progress() is None


def test_time_budget_stops_training_and_is_saved(body_cache, tmp_path, monkeypatch):

    ticks = iter(range(0, 100_000))  # every perf_counter call advances 1 s
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: float(next(ticks)))
    cfg = tiny_cfg(body_cache, tmp_path / "run", **RECIPE | {"optim.max_steps": 1000, "optim.max_minutes": 1.0})
    result = fit(cfg)
    assert 0 < result.step < 1000
    ts = torch.load(tmp_path / "run" / "checkpoints" / "last" / "trainer.pt", weights_only=True)
    assert ts["train_seconds"] >= 60.0 and ts["step"] == result.step
    last_lr = [r["lr"] for r in result.metrics if "lr" in r][-1]
    assert last_lr < 1e-3 * 0.5 and math.isfinite(last_lr)


def test_adaln_body_starts_as_the_encoder_and_learns_from_the_condition(body_cache, tmp_path):
    import copy

    cfg = tiny_cfg(body_cache, tmp_path / "run", **BODY | {"model.conditioning": "adaln"})
    model = build_model(cfg, load_data(cfg)).eval()
    prefix = build_model(tiny_cfg(body_cache, tmp_path / "p", **BODY), load_data(cfg)).eval()
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    z = torch.randn(1, model.cond_dim)
    with torch.no_grad():
        model.modulation.value = torch.zeros(1, 2 * model.n_norms, model.cfg.d_model)
        plain = model.body(inputs_embeds=model.tok_emb(ids)).last_hidden_state
        model.modulation.value = None
        assert torch.allclose(model(ids, None, z), plain, atol=1e-6)  # zero-initialised: the pretrained body
        body_keys = {k for k in model.state_dict() if k.startswith(BODY_PREFIX)}
        assert body_keys == {k for k in prefix.state_dict() if k.startswith(BODY_PREFIX)}  # the encoder's keys
        model.ada_mlp[2].bias.normal_()
        moved = model(ids, None, z)
        assert not torch.allclose(moved, plain, atol=1e-3)
        ema = copy.deepcopy(model)  # a copy (the EMA model) modulates with its own condition
        assert torch.allclose(ema(ids, None, z), moved, atol=1e-6)
    result = fit(tiny_cfg(body_cache, tmp_path / "fit", **RECIPE | {"model.conditioning": "adaln",
                                                                   "optim.max_steps": 3, "ema_decay": 0.9}))
    assert result.step == 3


def test_body_computes_attention_explicitly_on_cpu_and_as_sdpa_would(body_cache, tmp_path):
    cfg = tiny_cfg(body_cache, tmp_path / "run", **BODY | {"model.conditioning": "adaln"})
    model = build_model(cfg, load_data(cfg))
    model.ada_mlp[2].bias.data.normal_()  # a condition that moves the body
    ids, z = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 4, 4, 2]]), torch.randn(2, model.cond_dim)

    def output_and_grads():
        model.zero_grad()
        out = model(ids, None, z)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.body.parameters() if p.grad is not None]

    model.body.set_attn_implementation("eager")
    model._fit_attention(torch.device("cuda"))  # what another device gets (nothing runs there)
    assert model.body.config._attn_implementation == "sdpa"
    model._fit_attention = lambda device: None  # the reference: SDPA on this CPU
    fused, fused_grads = output_and_grads()
    del model._fit_attention
    explicit, explicit_grads = output_and_grads()  # the forward on this CPU switches to the explicit kernel
    assert model.body.config._attn_implementation == "eager"
    assert torch.allclose(explicit, fused, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(explicit_grads, fused_grads))
