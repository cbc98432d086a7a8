"""``model.vocab: corpus``: the output projection restricted to the tokens of the training and
validation splits. The restricted decoder is the full one with every other token ruled out: the
same logits on the vocabulary, -inf elsewhere, the same loss; it trains, saves, reloads and
decodes only tokens of its vocabulary, and a token outside it is a one-line error."""

import pytest
import torch

from sgdd.cache.format import SPECIAL_KEYS
from sgdd.config import validate
from sgdd.decoding.maskgit import decode
from sgdd.errors import SgddError
from sgdd.models.checkpoint import load_model, read_meta
from sgdd.models.decoder import Decoder, DecoderConfig
from sgdd.models.diffusion import DiffusionConfig
from sgdd.stages.train import fit
from sgdd.stages.train.data import load_data
from sgdd.stages.train.loss import draw_noise, masked_diffusion_loss
from sgdd.stages.train.model import build_model, corpus_vocabulary
from tests.helpers import build_cache
from tests.helpers_views import build_windows_cache
from tests.train.helpers import BODY_RECIPE, tiny_cfg

V, MASK = 50, 3
VOCAB = torch.tensor([0, 1, 2, MASK, 7, 8, 11, 20, 21, 30, 44, 49])  # sorted, the mask among them


def pair(seed=0):
    """A full decoder and a restricted one with the same weights (the bias cut to the vocabulary)."""
    cfg = DecoderConfig(n_layers=2, d_model=32, n_heads=2, max_len=12)
    torch.manual_seed(seed)
    full = Decoder(cfg, V, 8, 32, MASK)
    with torch.no_grad():
        full.out_bias.normal_()
    small = Decoder(cfg, V, 8, 32, MASK, out_vocab=len(VOCAB))
    state = full.state_dict()
    small.load_state_dict(state | {"out_bias": state["out_bias"][VOCAB], "out_vocab": small.out_vocab})
    small.set_vocab(VOCAB)
    return full, small


def test_restricted_logits_are_the_full_ones_on_the_vocabulary_and_minus_inf_elsewhere():
    full, small = pair()
    hidden = torch.randn(5, 32)
    want, got = full.logits(hidden), small.logits(hidden)
    assert got.shape == want.shape == (5, V)
    inside = torch.zeros(V, dtype=torch.bool)
    inside[VOCAB] = True
    inside[MASK] = False  # never predicted either way
    assert torch.allclose(got[:, inside], want[:, inside], atol=1e-6)
    assert torch.isinf(got[:, ~inside]).all() and torch.isinf(want[:, MASK]).all()
    assert small.projection[1].shape == (len(VOCAB), 32)  # only V' rows are multiplied


@pytest.mark.parametrize("fused", [True, False])
def test_the_loss_is_the_full_models_with_other_tokens_ruled_out(fused):
    """A full decoder whose bias is -1e4 outside the vocabulary gives the same loss, and the same
    gradients of the shared weights, as the restricted one (fused and plain path)."""
    full, small = pair()
    with torch.no_grad():
        outside = torch.ones(V, dtype=torch.bool)
        outside[VOCAB] = False
        full.out_bias[outside] = -1e4
    g = torch.Generator().manual_seed(0)
    x0 = VOCAB[torch.randint(0, len(VOCAB), (6, 12), generator=g)]
    x0[x0 == MASK] = 7
    z = torch.randn(6, 8, generator=g)
    dcfg = DiffusionConfig()
    noise = draw_noise(6, 12, dcfg, 0.0, torch.Generator().manual_seed(1))
    parts = [masked_diffusion_loss(m, x0, z, noise, dcfg, fused=fused) for m in (full, small)]
    for p in parts:
        p.weighted.backward()
    assert parts[1].weighted.item() == pytest.approx(parts[0].weighted.item(), rel=1e-5)
    assert parts[1].correct == parts[0].correct and parts[1].n_masked == parts[0].n_masked
    for (name, a), b in zip(full.named_parameters(), small.parameters()):
        if name != "out_bias":
            assert torch.allclose(a.grad, b.grad, atol=1e-5), name
    assert torch.allclose(small.out_bias.grad, full.out_bias.grad[VOCAB], atol=1e-5)


def test_a_token_outside_the_vocabulary_is_a_one_line_error():
    _, small = pair()
    assert small.out_index(torch.tensor([0, 49, 20])).tolist() == [0, 11, 7]
    with pytest.raises(SgddError, match=r"1 token ids \(e.g. 5\) are outside the decoder's output vocabulary"):
        small.out_index(torch.tensor([7, 5, 5]))
    with pytest.raises(SgddError, match="model.vocab 'words' unknown"):
        validate(DecoderConfig(vocab="words"))


def test_corpus_vocab_trains_saves_reloads_and_writes_only_its_tokens(body_cache, tmp_path):
    cfg = tiny_cfg(body_cache, tmp_path / "run", **BODY_RECIPE | {"optim.max_steps": 6, "eval_every": 3, "ema_decay": 0.9})
    data = load_data(cfg)
    vocab = corpus_vocabulary(data)
    specials = [data.special_ids[k] for k in SPECIAL_KEYS]
    want = torch.cat([data.train.ids.flatten(), data.val.ids.flatten(), torch.tensor(specials)]).unique()
    assert torch.equal(vocab, want) and len(vocab) < data.vocab_size
    result = fit(cfg)
    assert any("val_loss" in r for r in result.metrics)
    ckpt = tmp_path / "run" / "checkpoints" / "last"
    model, meta = load_model(ckpt)  # the EMA weights, with the vocabulary's ids
    assert meta["weights"] == "ema"
    assert read_meta(ckpt)["out_vocab"] == len(vocab) and torch.equal(model.out_vocab, vocab)
    z = data.val.vectors[:4]
    out = decode(model, z, steps=4, length=8)
    assert torch.isin(out, vocab).all()


def test_an_mtp_heads_corpus_vocab_is_its_labels_and_it_trains(tmp_path):
    """On the next_block view the vocabulary is every label (output id) of the training and
    validation windows and the specials; a head trains on it with the given token, and its
    validation loss is finite (every label has a row)."""
    cache = build_windows_cache(tmp_path / "windows")
    cfg = tiny_cfg(cache, tmp_path / "run", **{"model.vocab": "corpus", "view": "next_block", "block_length": 3,
                                                "given": 1, "optim.max_steps": 4, "eval_every": 2})
    data = load_data(cfg)
    vocab = corpus_vocabulary(data)
    labels = torch.cat([v.labels.flatten() for v in (data.train, data.val)])
    specials = torch.tensor([i for i in data.special_ids.values() if i is not None])
    assert torch.equal(vocab, torch.cat([labels[labels >= 0], specials]).unique())
    assert len(vocab) < data.vocab_size
    result = fit(cfg)
    losses = [r["val_loss"] for r in result.metrics if "val_loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    model, _ = load_model(tmp_path / "run" / "checkpoints" / "last")
    assert torch.equal(model.out_vocab, vocab)


def test_a_full_vocab_run_is_unchanged(tmp_path):
    cfg = tiny_cfg(build_cache(tmp_path / "cache"), tmp_path / "run")
    model = build_model(cfg, load_data(cfg))
    assert model.out_vocab is None and model.out_bias.shape == (model.vocab_size,)
    assert model.out_mask_id == model.mask_id
