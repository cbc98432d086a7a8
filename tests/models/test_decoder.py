"""The conditional masked-diffusion decoder: shapes, output layer, the three ways the condition
enters (cross-attention, AdaLN-Zero, prefix), attention, and the sampler's interface."""

import pytest
import torch

from sgdd.models.decoder import CONDITIONINGS, Decoder
from sgdd.models.decoder import DecoderConfig

V, DZ, MASK = 40, 8, 3


def tiny(embed_dim: int = 12, conditioning: str = "cross", trained: bool = True, **kw) -> Decoder:
    """A small decoder. ``trained``: the AdaLN-Zero maps get random values, as after training
    (at initialisation they are zero and the condition has no effect yet, by design)."""
    torch.manual_seed(0)
    cfg = DecoderConfig(n_layers=2, d_model=16, n_heads=2, max_len=10, cond_tokens=2, dropout=0.0,
                        conditioning=conditioning, **kw)
    model = Decoder(cfg, vocab_size=V, cond_dim=DZ, embed_dim=embed_dim, mask_id=MASK).eval()
    if trained and conditioning == "adaln":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "ada" in name:
                    p.normal_(std=0.3)
    return model


def inputs(b: int = 3, length: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (b, length), generator=g)
    t = torch.rand(b, generator=g)
    z = torch.randn(b, DZ, generator=g)
    return x, t, z


modes = pytest.mark.parametrize("conditioning", CONDITIONINGS)


@modes
@pytest.mark.parametrize("embed_dim", [12, 16])  # factorised and plain embeddings
def test_shapes(embed_dim, conditioning):
    model = tiny(embed_dim, conditioning)
    x, t, z = inputs(length=7)
    h = model(x, t, z)
    assert h.shape == (3, 7, 16)
    assert model.logits(h).shape == (3, 7, V)
    assert model.logits(h[:, 2]).shape == (3, V)


def test_too_long_input_is_refused():
    model = tiny()
    x, t, z = inputs(length=10)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.cat([x, x], dim=1), t, z)


@pytest.mark.parametrize("embed_dim", [12, 16])
def test_output_is_tied_to_token_embeddings(embed_dim):
    model = tiny(embed_dim)
    with torch.no_grad():
        model.out_bias.normal_()
    x, t, z = inputs()
    with torch.no_grad():
        h = model(x, t, z)
        logits = model.logits(h)
        expected = model.emb_out(h) @ model.tok_emb.weight.T + model.out_bias
        expected[..., MASK] = float("-inf")
        assert torch.allclose(logits, expected, atol=1e-6)
        model.tok_emb.weight[7].add_(torch.randn(embed_dim))  # changes the output column of token 7 only
        after = model.logits(h)
    assert not torch.allclose(after[..., 7], logits[..., 7])
    others = [i for i in range(V) if i not in (7, MASK)]
    assert torch.allclose(after[..., others], logits[..., others])


def test_untied_output_is_a_separate_matrix_loaded_from_an_lm_head():
    model = tiny(16, tie_output=False)
    head = torch.randn(V - 1, 16)  # a base LM's head: the appended mask row is not in it
    model.load_output(head)
    assert torch.equal(model.out_emb[: V - 1], head) and torch.all(model.out_emb[V - 1] == 0)
    assert "out_emb" in dict(model.named_parameters())
    x, t, z = inputs()
    with torch.no_grad():
        h = model(x, t, z)
        expected = h @ model.out_emb.T + model.out_bias
        expected[..., MASK] = float("-inf")
        assert torch.allclose(model.logits(h), expected, atol=1e-6)
        before = model.logits(h)
        model.tok_emb.weight.add_(1.0)  # the input embeddings no longer reach the output
        assert torch.equal(model.logits(h), before)
    with pytest.raises(ValueError, match="does not fit"):
        model.load_output(torch.randn(V + 1, 16))
    with pytest.raises(ValueError, match="tied"):
        tiny(16).load_output(head)


@modes
def test_mask_token_is_never_predicted(conditioning):
    model = tiny(conditioning=conditioning)
    x, t, z = inputs()
    with torch.no_grad():
        logits = model.logits(model(x, t, z))
    assert torch.all(logits[..., MASK] == float("-inf"))
    assert torch.isfinite(logits[..., [i for i in range(V) if i != MASK]]).all()
    assert torch.all(logits.argmax(-1) != MASK)


@modes
def test_condition_changes_the_output(conditioning):
    model = tiny(conditioning=conditioning)
    x, t, z = inputs()
    with torch.no_grad():
        assert not torch.allclose(model(x, t, z), model(x, t, z * 3 + 1))


@modes
def test_dropped_condition_is_the_learned_null(conditioning):
    model = tiny(conditioning=conditioning)
    with torch.no_grad():
        model.null_cond.normal_()
    x, t, z1 = inputs(seed=0)
    z2 = torch.randn_like(z1) * 3
    drop = torch.tensor([True, False, True])
    with torch.no_grad():
        a = model(x, t, z1, drop)
        b = model(x, t, z2, drop)
        c = model(x, t, z1)
    assert torch.equal(a[drop], b[drop])  # null condition: z does not matter
    assert not torch.allclose(a[~drop], b[~drop])
    assert not torch.allclose(a[drop], c[drop])  # differs from the conditioned output
    assert torch.allclose(a[~drop], c[~drop], atol=1e-6)


@modes
def test_attention_is_bidirectional(conditioning):
    model = tiny(conditioning=conditioning)
    x, t, z = inputs()
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % V
    with torch.no_grad():
        hx, hy = model(x, t, z), model(y, t, z)
    assert not torch.allclose(hx[:, 0], hy[:, 0])  # an earlier position sees a later token


@modes
def test_time_changes_the_output(conditioning):
    model = tiny(conditioning=conditioning)
    x, t, z = inputs()
    with torch.no_grad():
        assert not torch.allclose(model(x, t, z), model(x, t * 0.5, z))


@modes
def test_precomputed_condition_gives_the_same_output(conditioning):
    model = tiny(conditioning=conditioning)
    x, t, z = inputs()
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        kv = model.condition(z, drop)
        assert torch.equal(model(x, t, kv=kv), model(x, t, z, drop))


@modes
def test_sampler_interface_batches_conditional_and_null_rows(conditioning):
    """What the MaskGIT sampler does for CFG: condition(cat[z, z], drop) once, then one forward
    over both halves; each half equals its own separate computation."""
    model = tiny(conditioning=conditioning)
    x, t, z = inputs()
    drop = torch.arange(6) >= 3
    with torch.no_grad():
        both = model(torch.cat([x, x]), torch.cat([t, t]), kv=model.condition(torch.cat([z, z]), drop))
        assert torch.allclose(both[:3], model(x, t, kv=model.condition(z, None)), atol=1e-6)
        assert torch.allclose(both[3:], model(x, t, z, torch.ones(3, dtype=torch.bool)), atol=1e-6)


@modes
def test_maskgit_decodes_every_conditioning(conditioning):
    from sgdd.decoding.maskgit import decode

    model = tiny(conditioning=conditioning)
    _, _, z = inputs()
    for scale in (0.0, 1.5):  # plain, and classifier-free guidance (conditional + null rows)
        ids = decode(model, z, steps=4, cfg_scale=scale)
        assert ids.shape == (3, 10) and not (ids == MASK).any()


def test_cross_attention_modules_only_where_used():
    names = {c: {n for n, _ in tiny(conditioning=c).named_parameters()} for c in CONDITIONINGS}
    assert any(".cross." in n for n in names["cross"])
    assert not any(".cross." in n for n in names["adaln"] | names["prefix"])
    assert any(".ada." in n for n in names["adaln"]) and not any("ada" in n for n in names["cross"] | names["prefix"])


def test_prefix_condition_is_cond_tokens_extra_tokens():
    model = tiny(conditioning="prefix")
    _, _, z = inputs()
    prefix = model.condition(z)
    assert prefix.shape == (3, 2, 16)  # cond_tokens = 2 tokens of d_model
    assert model.rope_cos.shape[0] == 2 + 10  # positions for the prefix and the block


def test_adaln_zero_starts_as_the_identity_with_zero_gates():
    model = tiny(conditioning="adaln", trained=False)
    for block in model.blocks:
        assert torch.all(block.ada.weight == 0) and torch.all(block.ada.bias == 0)
    x, t, z = inputs()
    with torch.no_grad():
        h = model(x, t, z)
        embedded = model.emb_in(model.tok_emb(x)) + model.pos_emb.weight[:10]
        assert torch.allclose(h, torch.nn.functional.layer_norm(embedded, (16,)), atol=1e-5)
    # ... and the gates get gradients, so training opens them
    loss = model.logits(model(x, t, z)).logsumexp(-1).sum()
    loss.backward()
    assert model.blocks[0].ada.weight.grad.abs().sum() > 0


def test_rope_buffers_move_with_the_module():
    model = tiny()
    names = {n for n, _ in model.named_buffers()}
    assert {"rope_cos", "rope_sin"} <= names
    assert "rope_cos" not in model.state_dict()  # recomputed, not stored
    model.to(torch.float64)
    assert model.rope_cos.dtype == torch.float64
    model.to("meta")
    assert model.rope_cos.device.type == "meta" and model.rope_sin.device.type == "meta"


def test_load_embeddings_copies_values():
    model = tiny()
    w = torch.randn(V, 12)
    model.load_embeddings(w)
    assert torch.equal(model.tok_emb.weight, w)
    w.add_(1.0)  # a copy, not a view
    assert not torch.equal(model.tok_emb.weight, w)
    with pytest.raises(ValueError, match="do not fit"):
        model.load_embeddings(torch.randn(V, 13))


@modes
def test_fully_masked_input_still_knows_positions(conditioning):
    # decoding starts from all-mask: with relative positions only, every position would be the same
    model = tiny(conditioning=conditioning)
    x = torch.full((2, 10), MASK)
    with torch.no_grad():
        h = model(x, torch.ones(2), torch.randn(2, DZ))
    assert (h - h[:, :1]).abs().amax(dim=(0, 2))[1:].min() > 1e-3
