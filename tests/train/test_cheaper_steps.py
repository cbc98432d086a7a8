"""Cheaper training steps of the reconstruction recipe: ``optim.freeze_embeddings`` (no gradient
for the [V, E] matrix) and ``diffusion.loss_vocab`` (the training softmax over a sample of the
output vocabulary, with an importance-sampled normaliser). Validation always scores the full
vocabulary."""

import math

import pytest
import torch

from sgdd.config import validate
from sgdd.errors import SgddError
from sgdd.models.decoder import Decoder, DecoderConfig
from sgdd.models.diffusion import DiffusionConfig
from sgdd.stages.train import fit
from sgdd.stages.train.data import load_data
from sgdd.stages.train.loss import LossVocab, build_loss_vocab, draw_noise, masked_diffusion_loss
from sgdd.stages.train.model import build_model
from tests.helpers_views import build_windows_cache
from tests.train.helpers import BODY_RECIPE, tiny_cfg

V, MASK = 60, 3


def test_the_columns_hold_the_targets_the_frequent_tokens_the_mask_and_n_drawn_others():
    counts = torch.zeros(V, dtype=torch.long)
    counts[[10, 11, 12, 13]] = torch.tensor([50, 40, 30, 20])  # the 2 most frequent: 10, 11
    vocab = LossVocab(counts, n=2, mask_index=MASK, seed=0)
    target = torch.tensor([40, 41, 40, 12])
    cols, offset, where = vocab.columns(target, draw=0)
    fixed = {10, 11, 12, 40, 41, MASK}
    assert len(cols) == len(fixed) + 2 and len(set(cols.tolist())) == len(cols)
    assert fixed <= set(cols.tolist())
    drawn = cols[offset > 0]
    assert len(drawn) == 2 and not set(drawn.tolist()) & fixed
    assert torch.allclose(offset[offset > 0], torch.full((2,), math.log((V - len(fixed)) / 2)))
    assert torch.equal(cols[where[target]], target)  # where: an output index's position among the columns
    assert (where[cols] == torch.arange(len(cols))).all() and (where >= 0).sum() == len(cols)
    again, _, _ = vocab.columns(target, draw=0)
    other, _, _ = vocab.columns(target, draw=1)
    assert torch.equal(again, cols) and not torch.equal(other, cols)  # seeded by the draw


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(4, V, (6, 10), generator=g)
    return x0, torch.randn(6, 8, generator=g), draw_noise(6, 10, DiffusionConfig(), 0.0, g)


def model(seed=0):
    torch.manual_seed(seed)
    m = Decoder(DecoderConfig(n_layers=1, d_model=16, n_heads=2, max_len=10), V, 8, 16, MASK)
    with torch.no_grad():
        m.out_bias.normal_()
    return m


def test_with_every_column_kept_the_sampled_loss_is_the_full_one():
    x0, z, noise = batch()
    full, sampled = model(), model()
    vocab = LossVocab(torch.ones(V), n=V, mask_index=MASK, seed=0)  # the frequent tokens are all of them
    dcfg = DiffusionConfig()
    a = masked_diffusion_loss(full, x0, z, noise, dcfg)
    b = masked_diffusion_loss(sampled, x0, z, noise, dcfg, vocab=vocab)
    a.weighted.backward()
    b.weighted.backward()
    assert b.weighted.item() == pytest.approx(a.weighted.item(), rel=1e-5) and a.correct == b.correct
    for (name, p), q in zip(full.named_parameters(), sampled.parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_the_importance_sampled_normaliser_is_close_to_the_full_one_on_average():
    """Averaged over draws, the sampled loss comes near the full loss, far nearer than the softmax
    over the fixed columns alone (no drawn columns standing for the rest)."""
    x0, z, noise = batch(1)
    m = model(1)
    dcfg = DiffusionConfig()
    with torch.enable_grad():
        full = masked_diffusion_loss(m, x0, z, noise, dcfg).weighted.item()
        counts = torch.zeros(V)
        sampled = [masked_diffusion_loss(m, x0, z, noise, dcfg, vocab=LossVocab(counts, 8, MASK, 0), draw=d)
                   .weighted.item() for d in range(200)]
        bare = masked_diffusion_loss(m, x0, z, noise, dcfg, vocab=LossVocab(counts, 0, MASK, 0)).weighted.item()
    mean = sum(sampled) / len(sampled)
    assert abs(mean - full) < 0.1 * abs(bare - full)


def test_validation_scores_the_full_vocabulary():
    x0, z, noise = batch(2)
    m = model(2)
    dcfg = DiffusionConfig()
    with torch.no_grad():
        a = masked_diffusion_loss(m, x0, z, noise, dcfg)
        b = masked_diffusion_loss(m, x0, z, noise, dcfg, vocab=LossVocab(torch.zeros(V), 2, MASK, 0))
    assert a.weighted.item() == b.weighted.item() and a.correct == b.correct


def test_the_recipe_trains_with_frozen_embeddings_and_a_sampled_softmax(body_cache, tmp_path):
    cfg = tiny_cfg(body_cache, tmp_path / "run", **BODY_RECIPE | {
        "optim.max_steps": 6, "eval_every": 3, "optim.freeze_embeddings": True, "diffusion.loss_vocab": 4})
    data = load_data(cfg)
    start = build_model(cfg, data).tok_emb.weight.detach().clone()
    vocab = build_loss_vocab(cfg.diffusion, data, build_model(cfg, data), cfg.seed)
    real = torch.arange(data.train.ids.shape[1]) < data.train.lengths[:, None]
    ids = data.train.ids[real]
    top = ids.bincount().argmax()  # the most frequent training token is among the fixed columns
    assert int(build_model(cfg, data).out_index(top[None])) in vocab.frequent.tolist()
    result = fit(cfg)
    assert any("val_loss" in r for r in result.metrics)
    assert torch.equal(result.model.tok_emb.weight, start)  # frozen
    trained = dict(result.model.named_parameters())
    fresh = dict(build_model(cfg, data).named_parameters())
    assert not torch.equal(trained["out_bias"], fresh["out_bias"])
    assert not torch.equal(trained["prefix_mlp.2.weight"], fresh["prefix_mlp.2.weight"])


def test_loss_vocab_needs_the_sentence_view_and_a_known_weight(tmp_path):
    cache = build_windows_cache(tmp_path / "windows")
    cfg = tiny_cfg(cache, tmp_path / "run", **{"diffusion.loss_vocab": 8})
    data = load_data(cfg)
    with pytest.raises(SgddError, match="diffusion.loss_vocab needs the sentence view"):
        build_loss_vocab(cfg.diffusion, data, build_model(cfg, data), 0)
    with pytest.raises(SgddError, match="loss_vocab needs a loss weight known before the loss"):
        validate(DiffusionConfig(loss_vocab=8, loss_weight="path"))
    with pytest.raises(SgddError, match="diffusion.loss_vocab must be >= 0, got -1"):
        validate(DiffusionConfig(loss_vocab=-1))
