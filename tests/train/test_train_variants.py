"""Stage 2 options, each checked by what it does: conditioning, schedules, loss weights, time_eps,
CFG drop, EMA, --init-from, the next-block view (MTP head), --report-to, refusals."""

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sgdd.models.checkpoint import load_model
from sgdd.models.decoder import CONDITIONINGS, Decoder
from sgdd.models.diffusion import LOGLINEAR_EPS, cart_weights
from sgdd.models.ema import EMA
from sgdd.config import load_yaml
from sgdd.models.decoder import DecoderConfig
from sgdd.models.diffusion import DiffusionConfig
from sgdd.errors import SgddError
from sgdd.stages.train import fit, run
from sgdd.stages.train import step as step_mod
from sgdd.stages.train.config import TrainConfig
from sgdd.stages.train.data import load_data
from sgdd.stages.train.loss import StepNoise, draw_noise, masked_diffusion_loss
from sgdd.stages.train.step import validation_loss
from tests.helpers import build_cache
from tests.train.helpers import tiny_cfg
from tests.helpers_views import HIDDEN, build_windows_cache

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def windows_cache(tmp_path_factory):
    return build_windows_cache(tmp_path_factory.mktemp("llm") / "llm")


def forward_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(4, 30, (6, 8), generator=g)
    z = torch.randn(6, 8, generator=g)
    noise = StepNoise(torch.rand(6, generator=g) * 0.8 + 0.1, torch.rand(6, 8, generator=g), None)
    return x0, z, noise


def small_model() -> Decoder:
    torch.manual_seed(0)
    return Decoder(DecoderConfig(n_layers=1, d_model=16, n_heads=2, max_len=8), 30, 8, 12, 3).eval()


# --------------------------------------------------------------------------------------------
# the forward process and the loss, as configured
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule,kappa,mask_prob", [
    ("linear", None, lambda t: t),
    ("cosine", None, lambda t: 1 - torch.cos(0.5 * math.pi * t)),
    ("polynomial", 3.0, lambda t: t ** 3),
    ("loglinear", None, lambda t: (1 - LOGLINEAR_EPS) * t),
])
def test_schedule_option_decides_which_tokens_are_masked(schedule, kappa, mask_prob):
    model, (x0, z, noise) = small_model(), forward_inputs()
    parts = masked_diffusion_loss(model, x0, z, noise, DiffusionConfig(schedule=schedule, kappa=kappa))
    assert parts.n_masked.item() == int((noise.u < mask_prob(noise.t)[:, None]).sum())


@pytest.mark.parametrize("loss_weight", ["elbo", "ones", "path", "cart"])
def test_loss_weight_option_weights_each_masked_token(loss_weight):
    model, (x0, z, noise) = small_model(), forward_inputs()
    dcfg = DiffusionConfig(loss_weight=loss_weight, cart_p=0.4 if loss_weight == "cart" else None)
    got = masked_diffusion_loss(model, x0, z, noise, dcfg).weighted.item()
    masked = noise.u < noise.t[:, None]  # linear schedule
    with torch.no_grad():
        logits = model.logits(model(torch.where(masked, 3, x0), noise.t, z))  # [B, L, V]
        ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none") * masked  # [B, L]
    weight = {"elbo": (1 / noise.t)[:, None].expand_as(ce), "ones": torch.ones_like(ce),
              "path": 1 + torch.exp(-ce), "cart": cart_weights(masked, 0.4)}[loss_weight]
    assert got == pytest.approx(((weight * ce).sum() / 8).item(), rel=1e-5)


def test_time_eps_bounds_the_training_times_and_cond_drop_the_null_share():
    g = torch.Generator().manual_seed(0)
    noise = draw_noise(4000, 3, DiffusionConfig(time_eps=0.6), 0.25, g)
    assert noise.t.min() >= 0.6 and noise.t.max() <= 1.0
    assert noise.drop.float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert not draw_noise(4000, 3, DiffusionConfig(), 0.0, g).drop.any()


def test_cond_drop_trains_the_learned_null(tiny_cache, tmp_path):
    over = {"optim.max_steps": 3, "optim.weight_decay": 0.0}
    never = fit(tiny_cfg(tiny_cache, tmp_path / "a", **over, **{"model.cond_drop": 0.0}))
    often = fit(tiny_cfg(tiny_cache, tmp_path / "b", **over, **{"model.cond_drop": 0.5}))
    assert torch.all(never.model.null_cond == 0)  # never used, never changed
    assert often.model.null_cond.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# conditioning variants through the whole trainer
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_every_conditioning_trains_saves_and_loads(tiny_cache, tmp_path, conditioning):
    result = fit(tiny_cfg(tiny_cache, tmp_path / "r", val_split=None,
                          **{"optim.max_steps": 3, "model.conditioning": conditioning}))
    losses = [r["loss"] for r in result.metrics if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    loaded, meta = load_model(result.run_dir / "checkpoints/last")
    assert meta["decoder"]["conditioning"] == conditioning == loaded.cfg.conditioning
    x, t, z = torch.randint(0, 20, (2, 16)), torch.rand(2), torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x, t, z), result.model.eval()(x, t, z))


# --------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------
def test_ema_update_rule_with_warmup():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, 0.9)
    for target, decay in ((10.0, 1 / 10), (20.0, 2 / 11), (30.0, 0.9)):
        ema.updates = {1 / 10: 0, 2 / 11: 1, 0.9: 100}[decay]
        before = ema.shadow["weight"].item()
        with torch.no_grad():
            model.weight.fill_(target)
        ema.update(model)
        assert ema.shadow["weight"].item() == pytest.approx(decay * before + (1 - decay) * target)


def test_ema_is_saved_loaded_and_validated(tiny_cache, tmp_path):
    cfg = tiny_cfg(tiny_cache, tmp_path / "r", ema_decay=0.5, eval_every=2, **{"optim.max_steps": 4})
    result = fit(cfg)
    for which in ("last", "best"):
        assert (result.run_dir / f"checkpoints/{which}/ema.safetensors").is_file()
    model, meta = load_model(result.run_dir / "checkpoints/last")  # eval gets EMA by default
    raw, raw_meta = load_model(result.run_dir / "checkpoints/last", prefer_ema=False)
    assert meta["weights"] == "ema" and raw_meta["weights"] == "model"
    ema_weights = load_file(str(result.run_dir / "checkpoints/last/ema.safetensors"))
    assert all(torch.equal(model.state_dict()[k], ema_weights[k]) for k in ema_weights)
    assert all(torch.equal(raw.state_dict()[k], v) for k, v in result.model.state_dict().items())
    assert not torch.equal(model.state_dict()["cond_proj.weight"], raw.state_dict()["cond_proj.weight"])
    vals = [r for r in result.metrics if "val_loss" in r]
    assert vals and all(r["weights"] == "ema" for r in vals)
    from sgdd.runtime import pick_precision

    again = validation_loss(model, load_data(cfg).val, cfg, pick_precision("fp32", torch.device("cpu")), torch.device("cpu"))
    assert again["val_loss"] == pytest.approx(vals[-1]["val_loss"], rel=1e-6)  # the EMA weights were scored


def test_no_ema_file_without_ema(tiny_cache, tmp_path):
    result = fit(tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.max_steps": 1}))
    assert not (result.run_dir / "checkpoints/last/ema.safetensors").exists()
    assert load_model(result.run_dir / "checkpoints/last")[1]["weights"] == "model"


# --------------------------------------------------------------------------------------------
# --init-from (phase 2)
# --------------------------------------------------------------------------------------------
def test_init_from_starts_from_the_other_runs_best_weights(tiny_cache, tmp_path):
    first = fit(tiny_cfg(tiny_cache, tmp_path / "a", ema_decay=0.5, **{"optim.max_steps": 3}))
    second = fit(tiny_cfg(tiny_cache, tmp_path / "b", init_from=str(first.run_dir),
                          **{"optim.max_steps": 3, "model.cond_drop": 0.3}), stop_at=0)
    best, meta = load_model(first.run_dir / "checkpoints/best")
    assert meta["weights"] == "ema"
    assert all(torch.equal(second.model.state_dict()[k], v) for k, v in best.state_dict().items())
    assert second.step == 0  # a new run: fresh optimizer, schedule and step counter


def test_init_from_refuses_another_decoder_or_cache(tiny_cache, windows_cache, tmp_path):
    first = fit(tiny_cfg(tiny_cache, tmp_path / "a", **{"optim.max_steps": 1}))
    with pytest.raises(SgddError, match="decoder differs.*model.n_layers: 1 there, 2 here"):
        fit(tiny_cfg(tiny_cache, tmp_path / "b", init_from=str(first.run_dir), **{"model.n_layers": 2}))
    other = build_cache(tmp_path / "other", encoder={"tokenizer_sha256": "f" * 64})  # another tokenizer
    with pytest.raises(SgddError, match="does not fit the run to start from.*tokenizer sha256"):
        fit(tiny_cfg(other, tmp_path / "c", init_from=str(first.run_dir)))
    with pytest.raises(SgddError, match="cond_dim 16 in the checkpoint, 36.*view sentence in the checkpoint, next_block"):
        fit(tiny_cfg(windows_cache, tmp_path / "d", init_from=str(first.run_dir), **{"model.max_len": 4}))
    assert not (tmp_path / "d").exists()  # refused before any step
    with pytest.raises(SgddError, match="neither a checkpoint directory nor a run"):
        fit(tiny_cfg(tiny_cache, tmp_path / "e", init_from=str(tmp_path / "nothing")))


# --------------------------------------------------------------------------------------------
# the next-block view: the MTP head
# --------------------------------------------------------------------------------------------
def mtp_cfg(cache, out, **over) -> TrainConfig:
    return tiny_cfg(cache, out, **{"model.d_model": None, "model.n_heads": 2, "model.tie_output": False,
                                   "block_length": 4, "optim.batch_size": 16} | over)


def test_mtp_head_sizes_and_output_layer_come_from_the_base_model(windows_cache, tmp_path):
    result = fit(mtp_cfg(windows_cache, tmp_path / "r"), stop_at=0)
    model = result.model
    assert model.cfg.d_model == HIDDEN and model.cfg.max_len == 4 and model.cfg.n_layers == 1
    head = load_file(str(windows_cache / "encoder/lm_head.safetensors"))["weight"]
    assert torch.equal(model.out_emb[: head.shape[0]], head) and torch.all(model.out_emb[head.shape[0]:] == 0)
    emb = load_file(str(windows_cache / "encoder/embeddings.safetensors"))["weight"]
    assert torch.equal(model.tok_emb.weight, emb)
    _, meta = load_model(result.run_dir / "checkpoints/last")
    assert meta["view"] == "next_block" and meta["decoder"]["max_len"] == meta["block_length"] == 4
    assert meta["cond_dim"] == HIDDEN and meta["block_tail"] == "skip"


def test_mtp_head_learns_the_next_block(windows_cache, tmp_path):
    cfg = mtp_cfg(windows_cache, tmp_path / "r", val_split=None,
                  **{"optim.max_steps": 60, "optim.lr": 1e-2, "log_every": 10, "optim.batch_size": 32,
                     "model.cond_drop": 0.0, "diffusion.loss_weight": "ones", "model.conditioning": "prefix",
                     "model.cond_tokens": 1})
    rows = [r for r in fit(cfg).metrics if "loss" in r]
    assert rows[-1]["masked_ce"] < rows[0]["masked_ce"] - 0.5  # nats per masked token
    assert rows[-1]["masked_acc"] > rows[0]["masked_acc"]


def test_block_tail_ignore_scores_only_real_labels(windows_cache, tmp_path, monkeypatch):

    seen = []
    real = step_mod.masked_diffusion_loss

    def spy(model, x0, z, noise, dcfg, given=0, lengths=None, **kw):
        parts = real(model, x0, z, noise, dcfg, given, lengths, **kw)
        seen.append((x0.clone(), parts.n_masked.item(), noise))
        return parts

    monkeypatch.setattr(step_mod, "masked_diffusion_loss", spy)
    fit(mtp_cfg(windows_cache, tmp_path / "r", block_tail="ignore", val_split=None, **{"optim.max_steps": 3}))
    assert any((x0 == -100).any() for x0, _, _ in seen)  # tail positions are in the batches ...
    for x0, n_masked, noise in seen:  # ... and never scored
        assert n_masked == int(((noise.u < noise.t[:, None]) & (x0 != -100)).sum())


def test_mtp_head_with_the_first_token_given(windows_cache, tmp_path, monkeypatch):
    from sgdd.stages.evaluate.config import EvalConfig
    from sgdd.stages import evaluate as evaluate_mod

    givens, real = [], step_mod.masked_diffusion_loss

    def spy(model, x0, z, noise, dcfg, given=0, lengths=None, **kw):
        givens.append(given)
        return real(model, x0, z, noise, dcfg, given, lengths, **kw)

    monkeypatch.setattr(step_mod, "masked_diffusion_loss", spy)
    result = fit(mtp_cfg(windows_cache, tmp_path / "r", given=1, **{"optim.max_steps": 3}))
    assert givens and set(givens) == {1}  # training steps and validation
    meta = json.loads((result.run_dir / "checkpoints" / "best" / "model.json").read_text())
    assert meta["given"] == 1
    out = evaluate_mod.run(EvalConfig(run=str(result.run_dir), max_samples=4, steps=3, device="cpu",
                                      precision="fp32"))  # --given follows the run
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    assert [k for k in metrics if k.startswith("position_accuracy@")] == ["position_accuracy@2", "position_accuracy@3",
                                                                        "position_accuracy@4"]
    with pytest.raises(SgddError, match="given=4 needs the next_block view with block_length > 4"):
        fit(mtp_cfg(windows_cache, tmp_path / "t", given=4))


def test_a_view_that_does_not_fit_the_cache_is_refused_before_any_step(windows_cache, tiny_cache, tmp_path):
    with pytest.raises(SgddError, match="sentence view needs a sentence .or pair. cache"):
        run(tiny_cfg(windows_cache, tmp_path / "a", view="sentence"))
    with pytest.raises(SgddError, match="cannot feed the next_block view"):
        run(tiny_cfg(tiny_cache, tmp_path / "b", view="next_block"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_head_count_must_divide_the_base_models_hidden_size(windows_cache, tmp_path):
    with pytest.raises(SgddError, match="d_model 36 .null: the cache's hidden size. must split into model.n_heads=8"):
        run(mtp_cfg(windows_cache, tmp_path / "r", **{"model.n_heads": 8}))


@pytest.mark.parametrize("name", ["mtp-smollm2", "mtp-cpu"])
def test_mtp_preset_trains_on_a_windows_cache(name, windows_cache, tmp_path):
    cfg = load_yaml(CONFIGS / f"{name}.yaml", TrainConfig)
    assert cfg.view == "next_block" and cfg.model.n_layers == 1 and cfg.model.d_model is None
    assert cfg.block_length == 4 and cfg.model.conditioning == "prefix" and cfg.model.cond_tokens == 1
    from sgdd.config import apply_overrides

    small = apply_overrides(cfg, {"shards": str(windows_cache), "out": str(tmp_path / "r"), "optim.max_steps": 2,
                                  "optim.batch_size": 8, "eval_batches": 1, "precision": "fp32", "device": "cpu"})
    result = fit(small)
    assert result.model.cfg.d_model == HIDDEN and result.model.cfg.n_heads == 9


@pytest.mark.parametrize("name", ["wiki-reconstruct", "paraphrase", "cpu-small", "cpu-paraphrase", "mtp-smollm2",
                                  "mtp-cpu"])
def test_training_presets_load(name):
    cfg = load_yaml(CONFIGS / f"{name}.yaml", TrainConfig)
    assert cfg.optim.max_steps > 0


def test_seed_size_preset_builds_the_seed_decoder():
    cfg = load_yaml(CONFIGS / "wiki-reconstruct.yaml", TrainConfig).model
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.max_len, cfg.cond_drop) == (6, 512, 8, 64, 0.1)
    model = Decoder(cfg, 30522, 768, 768, 103)
    trainable = sum(p.numel() for p in model.parameters())
    assert 45e6 < trainable < 60e6  # the seed's ~51M


# --------------------------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------------------------
def test_report_to_a_missing_package_is_refused_before_training(tiny_cache, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(SgddError, match="needs the wandb package.*pip install wandb"):
        run(tiny_cfg(tiny_cache, tmp_path / "r", report_to=["wandb"]))
    assert not (tmp_path / "r/checkpoints").exists()


def test_report_to_mirrors_metrics_to_the_trackers(tiny_cache, tmp_path, monkeypatch):
    logged, scalars = [], []

    class FakeRun:
        def log(self, row, step):
            logged.append((step, row))

        def finish(self):
            logged.append("finished")

    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kw: FakeRun()

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            scalars.append("closed")

    tb = types.ModuleType("torch.utils.tensorboard")
    tb.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "tensorboard", types.ModuleType("tensorboard"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", tb)
    result = fit(tiny_cfg(tiny_cache, tmp_path / "r", report_to=["tensorboard", "wandb"], eval_every=2,
                          **{"optim.max_steps": 2}))
    assert [s for s, _ in logged[:-1] if True] == [1, 2, 2]  # train 1, train 2, val 2
    assert logged[0][1]["train/loss"] == pytest.approx(result.metrics[0]["loss"])
    assert logged[-1] == "finished" and scalars[-1] == "closed"
    assert ("val/val_loss", pytest.approx(result.metrics[-1]["val_loss"]), 2) in scalars
    assert (tmp_path / "r/metrics.jsonl").is_file()  # always written


def test_metrics_report_the_share_of_time_spent_on_data(tiny_cache, tmp_path):
    rows = [r for r in fit(tiny_cfg(tiny_cache, tmp_path / "r", **{"optim.max_steps": 2})).metrics if "loss" in r]
    assert all(0 < r["data_share"] < 1 for r in rows)


def test_options_that_do_not_apply_or_do_not_exist_are_refused_in_one_message():
    from sgdd.config import from_dict

    with pytest.raises(SgddError) as err:
        from_dict(TrainConfig, {"view": "rows", "block_tail": "pad", "block_length": 0, "ema_decay": 1.0,
                                "report_to": ["mlflow"], "model": {"conditioning": "film"},
                                "diffusion": {"kappa": 2.0, "cart_p": 0.5}})
    message = str(err.value)
    for part in ("view 'rows' unknown (valid: auto, sentence, next_block)", "block_tail 'pad' unknown (valid: skip, ignore)",
                 "block_length must be positive", "ema_decay must be in [0, 1)",
                 "report_to 'mlflow' unknown (valid: tensorboard, wandb)",
                 "model.conditioning 'film' unknown (valid: cross, adaln, prefix)",
                 "diffusion.kappa is for the polynomial schedule, not 'linear'",
                 "diffusion.cart_p is for loss_weight cart, not 'ones'"):
        assert part in message
