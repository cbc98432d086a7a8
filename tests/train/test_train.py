"""Stage 2: accumulation, schedule, clipping, resume, checkpoints and the run directory."""

import json
import math
import shutil

import pytest
import torch

from sgdd.models.checkpoint import load_model
from sgdd.models.decoder import Decoder
from sgdd.config import apply_overrides, load_yaml
from sgdd.models.decoder import DecoderConfig
from sgdd.models.diffusion import DiffusionConfig
from sgdd.stages.train.config import OptimConfig, TrainConfig
from sgdd.errors import SgddError
from sgdd.stages.train import fit, run
from sgdd.stages.train.loss import StepNoise, masked_diffusion_loss
from sgdd.stages.train.optim import lr_factor, param_groups
from sgdd.stages.train.rundir import run_dir_for
from sgdd.stages.train.samplers import EpochSampler
from tests.helpers import build_cache
from tests.train.helpers import assert_params_close, metrics, params, tiny_cfg


# --------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------
def test_lr_factor_warmup_then_cosine_to_min():
    f = [lr_factor(s, 3, 10, 0.1) for s in range(11)]
    assert f[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert f[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[3:], f[4:]))
    assert f[10] == pytest.approx(0.1)
    assert lr_factor(0, 0, 5, 0.2) == pytest.approx(1.0)


def test_epoch_sampler_covers_every_row_and_resumes():
    s = EpochSampler(10, 4, seed=0)
    first = [s.next_batch() for _ in range(3)]
    assert [b.numel() for b in first] == [4, 4, 2]  # last micro-batch of the epoch is smaller
    assert sorted(torch.cat(first).tolist()) == list(range(10))  # nothing dropped, nothing twice
    second = [s.next_batch() for _ in range(3)]
    assert sorted(torch.cat(second).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(first), torch.cat(second))  # reshuffled each epoch
    s.next_batch()
    state = s.state_dict()
    ahead = [s.next_batch() for _ in range(5)]
    t = EpochSampler(10, 4, seed=123)
    t.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(ahead, [t.next_batch() for _ in range(5)]))


def test_no_weight_decay_on_biases_norms_embeddings_null():
    model = Decoder(DecoderConfig(n_layers=1, d_model=16, n_heads=2, max_len=8), 30, 8, 12, 3)
    decay, no_decay = param_groups(model, OptimConfig(weight_decay=0.1))
    decayed = {id(p) for p in decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "tok_emb.weight" not in names and "null_cond" not in names and "out_bias" not in names
    assert not any(n.endswith(".bias") or "norm" in n for n in names)
    assert "blocks.0.attn.qkv.weight" in names and "cond_proj.weight" in names
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert no_decay["weight_decay"] == 0.0
    untied = Decoder(DecoderConfig(n_layers=1, d_model=16, n_heads=2, max_len=8, tie_output=False), 30, 8, 12, 3)
    assert not any(p is untied.out_emb for p in param_groups(untied, OptimConfig(weight_decay=0.1))[0]["params"])  # an output embedding


def test_loss_projects_only_masked_positions_and_sums_over_samples(monkeypatch):
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(n_layers=1, d_model=16, n_heads=2, max_len=8), 30, 8, 12, 3).eval()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(4, 30, (6, 8), generator=g)
    z = torch.randn(6, 8, generator=g)
    noise = StepNoise(torch.rand(6, generator=g) * 0.8 + 0.1, torch.rand(6, 8, generator=g), None)
    dcfg = DiffusionConfig(schedule="linear", loss_weight="elbo")
    seen = []
    logits = model.out_logits
    monkeypatch.setattr(model, "out_logits", lambda h: seen.append(h.shape[0]) or logits(h))
    plain = masked_diffusion_loss(model, x0, z, noise, dcfg, fused=False)
    n_masked = int((noise.u < noise.t[:, None]).sum())  # linear: 1 - alpha(t) = t
    assert seen == [n_masked] and plain.n_masked.item() == n_masked
    whole = masked_diffusion_loss(model, x0, z, noise, dcfg)  # fused: the projection inside the loss
    assert seen == [n_masked] and whole.n_masked.item() == n_masked
    # by hand: sum_i (1/t_i) * sum_masked CE_i / L
    masked = noise.u < noise.t[:, None]
    with torch.no_grad():
        lg = logits(model(torch.where(masked, 3, x0), noise.t, z))  # [B, L, V]
        ce = torch.nn.functional.cross_entropy(lg.transpose(1, 2), x0, reduction="none")  # [B, L]
        expected = ((ce * masked).sum(1) / noise.t).sum() / 8
    assert whole.weighted.item() == pytest.approx(expected.item(), rel=1e-5)
    assert plain.weighted.item() == pytest.approx(expected.item(), rel=1e-5)
    # additive over micro-batches: the split of a step changes nothing
    parts = [masked_diffusion_loss(model, x0[r], z[r], StepNoise(noise.t[r], noise.u[r], None), dcfg)
             for r in (slice(0, 1), slice(1, 6))]
    assert sum(p.weighted.item() for p in parts) == pytest.approx(whole.weighted.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def test_accumulation_8x1_equals_2x4(tiny_cache, tmp_path):
    a = fit(tiny_cfg(tiny_cache, tmp_path / "a", **{"optim.batch_size": 1, "optim.grad_accum": 8, "optim.max_steps": 3}))
    b = fit(tiny_cfg(tiny_cache, tmp_path / "b", **{"optim.batch_size": 4, "optim.grad_accum": 2, "optim.max_steps": 3}))
    assert_params_close(params(a.model), params(b.model), atol=1e-5)
    la = [r["loss"] for r in a.metrics if "loss" in r]
    lb = [r["loss"] for r in b.metrics if "loss" in r]
    assert la == pytest.approx(lb, rel=1e-5)
    start = fit(tiny_cfg(tiny_cache, tmp_path / "c", **{"optim.max_steps": 3}), stop_at=0)  # the initial weights
    assert not torch.allclose(params(start.model)["cond_proj.weight"], params(a.model)["cond_proj.weight"])


def test_scheduler_counts_optimizer_steps(tiny_cache, tmp_path):
    cfg = tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.grad_accum": 3, "optim.batch_size": 2,
                                                  "optim.max_steps": 6, "optim.warmup_steps": 2,
                                                  "optim.min_lr_ratio": 0.1, "optim.lr": 1e-3})
    result = fit(cfg)
    lrs = [r["lr"] for r in result.metrics if "lr" in r]
    assert lrs == pytest.approx([1e-3 * lr_factor(s, 2, 6, 0.1) for s in range(6)])
    assert lrs[1] == pytest.approx(1e-3)  # peak at the end of warmup
    state = torch.load(result.run_dir / "checkpoints/last/trainer.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 6
    assert state["scheduler"]["_last_lr"] == pytest.approx([1e-4, 1e-4])  # min_lr_ratio * lr after max_steps
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx([1e-4, 1e-4])


def test_clip_once_per_optimizer_step(tiny_cache, tmp_path, monkeypatch):
    calls = []
    clip = torch.nn.utils.clip_grad_norm_

    def counting(parameters, max_norm, *a, **kw):
        calls.append(max_norm)
        return clip(parameters, max_norm, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", counting)
    fit(tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.grad_accum": 4, "optim.max_steps": 3, "optim.grad_clip": 0.5}))
    assert calls == [0.5, 0.5, 0.5]
    calls.clear()
    fit(tiny_cfg(tiny_cache, tmp_path / "off", **{"optim.grad_clip": 0.0}))
    assert calls == []


def test_loss_decreases_when_overfitting(tiny_cache, tmp_path):
    cfg = tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.max_steps": 60, "optim.lr": 1e-2, "optim.warmup_steps": 5,
                                                  "optim.batch_size": 8, "model.cond_drop": 0.0,
                                                  "diffusion.loss_weight": "ones", "log_every": 10})
    rows = [r for r in fit(cfg).metrics if "loss" in r]
    assert len(rows) == 6
    first, last = rows[0], rows[-2:]
    assert sum(r["loss"] for r in last) / 2 < 0.5 * first["loss"]
    assert sum(r["masked_ce"] for r in last) / 2 < 0.6 * first["masked_ce"]  # well below the unigram level
    assert sum(r["masked_acc"] for r in last) / 2 > first["masked_acc"] + 0.1


def test_resume_continues_like_an_uninterrupted_run(tiny_cache, tmp_path):
    over = {"optim.max_steps": 6, "model.dropout": 0.1, "model.cond_drop": 0.3, "eval_every": 2}
    whole = fit(tiny_cfg(tiny_cache, tmp_path / "whole", **over))
    half = fit(tiny_cfg(tiny_cache, tmp_path / "split", **over), stop_at=3)
    assert half.step == 3
    assert (half.run_dir / "checkpoints/last/trainer.pt").is_file()
    with open(half.run_dir / "metrics.jsonl", "a") as f:  # lines a killed run wrote after its last save
        f.write(json.dumps({"step": 4, "loss": 123.0}) + "\n")
    resumed = fit(tiny_cfg(tiny_cache, tmp_path / "split", resume=True, **over))
    assert resumed.step == 6
    a, b = params(whole.model), params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in resumed.metrics if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed.metrics if "loss" in r] == [r["loss"] for r in whole.metrics if "loss" in r]
    assert [r["val_loss"] for r in resumed.metrics if "val_loss" in r] == [r["val_loss"] for r in whole.metrics if "val_loss" in r]
    assert resumed.best_val == whole.best_val


def test_first_validation_always_writes_best(tiny_cache, tmp_path):
    result = fit(tiny_cfg(tiny_cache, tmp_path / "r", **{"eval_every": 1}), stop_at=1)
    val = [r for r in result.metrics if "val_loss" in r]
    assert len(val) == 1 and val[0]["best"] is True and math.isfinite(val[0]["val_loss"])
    _, meta = load_model(result.run_dir / "checkpoints/best")
    assert meta["step"] == 1
    assert result.best_val == val[0]["val_loss"]


def test_validation_is_comparable_across_evals(tiny_cache, tmp_path):
    cfg = tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.lr": 1e-12, "optim.warmup_steps": 0, "eval_every": 1,
                                                  "optim.max_steps": 3, "optim.weight_decay": 0.0})
    vals = [r["val_loss"] for r in fit(cfg).metrics if "val_loss" in r]
    assert len(vals) == 3 and vals[0] == pytest.approx(vals[1], rel=1e-6) == pytest.approx(vals[2], rel=1e-6)


def test_refuses_existing_run_without_resume(tiny_cache, tmp_path):
    cfg = tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.max_steps": 1})
    with pytest.raises(SgddError, match="no checkpoint"):
        run(apply_overrides(cfg, {"resume": True}))
    run(cfg)
    before = (tmp_path / "r/checkpoints/last/model.safetensors").read_bytes()
    with pytest.raises(SgddError, match="--resume"):
        run(cfg)
    assert (tmp_path / "r/checkpoints/last/model.safetensors").read_bytes() == before


def test_resume_refuses_a_cache_that_does_not_fit(tmp_path):
    cache = build_cache(tmp_path / "c")
    run(tiny_cfg(cache, tmp_path / "r", **{"optim.max_steps": 2}), stop_at=1)
    shutil.rmtree(cache)
    build_cache(cache, dim=8)  # the same path now holds 8-d vectors
    with pytest.raises(SgddError, match="does not fit the run to resume.*cond_dim 16 in the checkpoint, 8 in the cache"):
        run(tiny_cfg(cache, tmp_path / "r", resume=True, **{"optim.max_steps": 2}))
    with pytest.raises(SgddError, match="changed config.*model.d_model: 32 -> 16"):
        run(tiny_cfg(cache, tmp_path / "r", resume=True, **{"optim.max_steps": 2, "model.d_model": 16}))


def test_encoder_is_never_loaded(tiny_cache, tmp_path, monkeypatch):
    import transformers

    def refuse(*a, **kw):
        raise AssertionError("Stage 2 must not load a model or tokenizer")

    for cls in (transformers.AutoModel, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    out = run(tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.max_steps": 2}))
    assert (out / "checkpoints/best/model.safetensors").is_file()


def test_bf16_autocast_on_cpu(tiny_cache, tmp_path):
    result = fit(tiny_cfg(tiny_cache, tmp_path / "r", precision="bf16", **{"optim.max_steps": 3}))
    losses = [r["loss"] for r in result.metrics if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert all(math.isfinite(r["val_loss"]) for r in result.metrics if "val_loss" in r)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # weights stay fp32


def test_checkpoint_round_trip(tiny_cache, tmp_path):
    result = fit(tiny_cfg(tiny_cache, tmp_path / "r", val_split=None, **{"optim.max_steps": 3}))
    loaded, meta = load_model(result.run_dir / "checkpoints/last")
    best, _ = load_model(result.run_dir / "checkpoints/best")  # no validation: best = last
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, meta["vocab_size"], (3, 16), generator=g)
    t, z = torch.rand(3, generator=g), torch.randn(3, 16, generator=g)
    with torch.no_grad():
        expected = result.model.eval()(x, t, z)
        assert torch.equal(loaded.eval()(x, t, z), expected)
        assert torch.equal(best.eval()(x, t, z), expected)
    assert meta["step"] == 3 and meta["cond_dim"] == 16
    info = json.loads((tiny_cache / "encoder/encoder.json").read_text())
    assert meta["special_ids"] == {k: info[k] for k in ("pad_id", "mask_id", "bos_id", "eos_id")}
    assert not any("val_loss" in r for r in result.metrics)


def test_run_dir_holds_config_and_metrics(tiny_cache, tmp_path):
    cfg = tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.max_steps": 4, "log_every": 2, "eval_every": 2})
    out = run(cfg)
    assert load_yaml(out / "config.yaml", TrainConfig) == cfg
    rows = metrics(out)
    logs = [r for r in rows if "loss" in r]
    vals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in logs] == [2, 4] and [r["step"] for r in vals] == [2, 4]
    keys = {"step", "epoch", "lr", "loss", "masked_ce", "masked_acc", "tokens_per_s", "elapsed"}
    assert keys <= logs[0].keys() and {"step", "val_loss", "val_acc"} <= vals[0].keys()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "last"]  # no temporary leftovers


def test_default_run_dir_is_named_after_the_cache(tiny_cache):
    cfg = TrainConfig(shards=str(tiny_cache))
    assert run_dir_for(cfg).as_posix() == f"runs/{tiny_cache.name}"
    assert run_dir_for(apply_overrides(cfg, {"name": "x"})).as_posix() == "runs/x"
