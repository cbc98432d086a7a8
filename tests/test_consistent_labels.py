"""Self-consistent labels in the next-block view: on a tiny causal LM's windows, a block's labels
stop at the first position whose chain leaves the base model's greedy path."""

import json

import pytest
import torch

from sgdd.cache import open_cache
from sgdd.cache.views import consistent_default, next_block_view
from sgdd.cache.format import IGNORE_INDEX
from sgdd.stages.collect.config import CollectConfig
from sgdd.stages import collect
from sgdd.stages.train import fit
from tests.helpers_lm import DOCUMENTS, build_causal_lm_dir
from tests.train.helpers import one_thread, tiny_cfg  # noqa: F401 (fixture)

L = 4


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """(document-text cache, --generate cache) of the same tiny Llama over the same documents."""
    root = tmp_path_factory.mktemp("consistent")
    lm_dir = build_causal_lm_dir(root / "lm")
    docs = root / "docs.txt"
    docs.write_text("\n".join(DOCUMENTS) + "\n")
    base = dict(model=str(lm_dir), dataset=str(docs), sample_size=32, stride=16, batch_size=4, dtype="fp32",
                precision="fp32", splits=["train:4"])
    plain = collect.run(CollectConfig(**base, out=str(root / "plain")))
    generated = collect.run(CollectConfig(**base, out=str(root / "gen"), generate=True, max_new_tokens=12))
    return plain, generated


def expected_labels(split, view) -> torch.Tensor:
    """Every sample's block, labels after the first non-greedy link replaced by IGNORE_INDEX,
    computed position by position from the rows."""
    inputs, outputs = split.column("input_ids"), split.column("output_ids")
    rows, pos = view.locate(torch.arange(len(view)))
    out = []
    for r, l in zip(rows.tolist(), pos.tolist()):
        ids, nxt = inputs[r], outputs[r]
        block, alive = [], True
        for k in range(L):
            if k > 0 and l + k < len(ids) and nxt[l + k - 1] != ids[l + k]:
                alive = False
            block.append(nxt[l + k] if alive and l + k < len(nxt) else IGNORE_INDEX)
        out.append(block)
    return torch.tensor(out)


def test_labels_stop_where_the_chain_leaves_greedy(caches):
    _, generated = caches
    split = open_cache(generated).split("train")
    view = next_block_view(split, L, consistent=True)
    x0 = view.batch(torch.arange(len(view))).x0
    assert torch.equal(x0, expected_labels(split, view))
    assert (x0[:, 0] != IGNORE_INDEX).all()  # the base model's own next token always stands
    dropped = x0[:, 1:] == IGNORE_INDEX
    assert dropped.any() and (~dropped).any()  # the document part loses labels, the continuation keeps them
    plain = next_block_view(split, L, consistent=False).batch(torch.arange(len(view))).x0
    assert (plain != IGNORE_INDEX).all() and torch.equal(plain[~(x0 == IGNORE_INDEX)], x0[x0 != IGNORE_INDEX])


def test_on_by_default_only_for_a_cache_of_document_text(caches):
    plain, generated = caches
    plain_split, gen_split = open_cache(plain).split("train"), open_cache(generated).split("train")
    assert consistent_default(plain_split) and not consistent_default(gen_split)
    view = next_block_view(plain_split, L, consistent=None)
    assert view.consistent
    assert torch.equal(view.batch(torch.arange(len(view))).x0, expected_labels(plain_split, view))
    assert not next_block_view(gen_split, L, consistent=None).consistent


@pytest.mark.parametrize("asked,recorded", [(None, True), (False, False)])
def test_training_uses_the_choice_and_records_it(caches, tmp_path, monkeypatch, asked, recorded):
    from sgdd.stages.train import step as train_mod

    plain, _ = caches
    seen, real = [], train_mod.masked_diffusion_loss

    def spy(model, x0, z, noise, dcfg, given=0, lengths=None, **kw):
        seen.append(x0.clone())
        return real(model, x0, z, noise, dcfg, given, lengths, **kw)

    monkeypatch.setattr(train_mod, "masked_diffusion_loss", spy)
    cfg = tiny_cfg(plain, tmp_path / "r", consistent_labels=asked, val_split=None,
                   **{"model.d_model": None, "model.n_heads": 2, "block_length": L, "optim.max_steps": 2})
    result = fit(cfg)
    meta = json.loads((result.run_dir / "checkpoints" / "last" / "model.json").read_text())
    assert meta["consistent_labels"] is recorded
    assert any((x0 == IGNORE_INDEX).any() for x0 in seen) is recorded  # the tiny LM rarely follows the text


@pytest.mark.parametrize("asked", [None, True, False])
def test_eval_scores_the_labels_it_is_asked_for(caches, asked):
    """`sgdd eval --consistent-labels`: None keeps the run's choice (here off), True drops the
    labels after the chain leaves greedy, as training would."""
    from sgdd.stages.evaluate.data import load_eval_data

    plain, _ = caches
    split = open_cache(plain).split("train")
    tok = open_cache(plain).tokenizer()
    data = load_eval_data(split, None, {"block_length": L, "consistent_labels": False}, {}, tok, None, consistent=asked)
    view = next_block_view(split, L, consistent=bool(asked))
    assert torch.equal(data.ref_ids, view.batch(torch.arange(len(view))).x0)
    assert bool((data.ref_ids == IGNORE_INDEX).any()) is bool(asked)
