"""Speculative greedy decoding with an MTP head (sgdd.decoding.speculate, `sgdd speculate`) on a
tiny in-process Llama: identical output whatever the drafts, exact acceptance with a perfect
drafter, the hidden state the cache stored, and the CLI end to end."""

import itertools
import json
import math
import random

import pytest
import torch
from click.testing import CliRunner

from sgdd.cache import open_cache
from sgdd.cli import cli
from sgdd.decoding.samplers import Sampling
from sgdd.decoding.speculate import (BaseLM, Generation, HeadDrafter, LookupDrafter, TreeDraft, context_draft,
                                     draft_vocabulary, greedy, speculate)
from sgdd.models import fewrows
from sgdd.models.decoder import Decoder
from sgdd.models.decoder import DecoderConfig
from sgdd.stages.collect.config import CollectConfig
from sgdd.errors import SgddError
from sgdd.runtime import cpu_bf16_native, pick_precision
from sgdd.stages import collect
from sgdd.stages.speculate import summary
from sgdd.stages.train import fit
from tests.helpers_lm import DOCUMENTS, build_causal_lm_dir
from tests.train.helpers import one_thread, tiny_cfg  # noqa: F401 (fixture)

L = 4
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return build_causal_lm_dir(tmp_path_factory.mktemp("spec-lm"))


@pytest.fixture(scope="module")
def lm(lm_dir):
    from sgdd.models.causal_lm import FrozenCausalLM

    return FrozenCausalLM(str(lm_dir), CPU, pick_precision("fp32", CPU))


@pytest.fixture(scope="module")
def prompts(lm):
    return [lm.tokenizer(d)["input_ids"][:n] for d, n in zip(DOCUMENTS, (5, 9, 14, 3, 20))]


def hf_greedy(lm, prompt: list[int], n: int) -> list[int]:
    """The reference: transformers' own greedy generate, no end token."""
    out = lm.model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                            pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def random_head(lm, seed: int = 0) -> Decoder:
    V = lm.model.config.vocab_size
    torch.manual_seed(seed)
    cfg = DecoderConfig(n_layers=1, d_model=32, n_heads=2, max_len=L, conditioning="prefix", cond_tokens=1)
    return Decoder(cfg, V + 1, lm.hidden_size, lm.hidden_size, V)


class Oracle:
    """Drafts the base model's own greedy continuation (``truth``: the prompt, then greedy's
    tokens), each token replaced by a wrong one with probability ``noise`` (0 = a perfect drafter)."""

    def __init__(self, truth: list[int], drafts: int, vocab: int, noise: float = 0.0, seed: int = 0):
        self.truth, self.drafts, self.vocab, self.noise = truth, drafts, vocab, noise
        self.rng = random.Random(seed)

    def __call__(self, h, context):
        n = len(context)
        assert context == self.truth[:n]  # the loop only ever extends the prompt by its greedy output
        out = self.truth[n : n + self.drafts]
        return [(t + 1) % self.vocab if self.rng.random() < self.noise else t for t in out]


@pytest.mark.parametrize("one_row", ["linear", "padded"])
def test_greedy_loop_matches_transformers_generate(lm, prompts, one_row):
    fewrows.use_few_rows(lm.model)
    fewrows.set_one_row(lm.model, "linear")  # the reference's one-row steps as F.linear
    refs = [hf_greedy(lm, prompt, 24) for prompt in prompts]
    base = BaseLM(lm, one_row=one_row)
    assert base.one_row == one_row and base.one_row_ms == {}
    assert all(layer.one_row == one_row for layer in lm.model.modules() if isinstance(layer, fewrows.FewRowsLinear))
    for prompt, ref in zip(prompts, refs):
        assert greedy(base, prompt, 24).tokens == ref


def test_auto_times_both_one_row_forms_and_keeps_the_faster(lm, prompts):
    base = BaseLM(lm)
    assert set(base.one_row_ms) == set(fewrows.ONE_ROW_FORMS) and all(ms > 0 for ms in base.one_row_ms.values())
    assert base.one_row == min(base.one_row_ms, key=base.one_row_ms.get)
    assert base.length == 0 and base.forwards == 0  # the timing left no sequence behind
    assert greedy(base, prompts[1], 12).tokens == hf_greedy(lm, prompts[1], 12)
    with pytest.raises(ValueError, match="one-row form 'gemv'"):
        BaseLM(lm, one_row="gemv")


@pytest.mark.parametrize("sampler,passes", [("maskgit_plus", 1), ("maskgit_plus", 3), ("random", 2), ("threshold", 2)])
def test_a_random_head_still_gives_the_greedy_output(lm, prompts, sampler, passes):
    base = BaseLM(lm)
    drafter = HeadDrafter(random_head(lm), L, Sampling(sampler=sampler, steps=passes), CPU, lm.precision)
    for prompt in prompts:
        ref = hf_greedy(lm, prompt, 30)
        spec = speculate(base, drafter, prompt, 30, vocab_size=lm.model.config.vocab_size)
        assert spec.tokens == ref
        assert sum(spec.accepted) >= 29 and all(1 <= a <= L for a in spec.accepted)
        assert spec.forwards == 1 + len(spec.accepted)  # the prompt, then one verification per pass


@pytest.mark.parametrize("noise", [0.2, 0.5, 0.8])
def test_partly_wrong_drafts_roll_back_the_cache_exactly(lm, prompts, noise):
    """Every acceptance length occurs, so every rollback size is exercised."""
    base, V = BaseLM(lm), lm.model.config.vocab_size
    seen = set()
    for i, prompt in enumerate(prompts):
        truth = hf_greedy(lm, prompt, 40 + L)
        spec = speculate(base, Oracle(prompt + truth, L - 1, V, noise, seed=i), prompt, 40)
        assert spec.tokens == truth[:40]
        seen |= set(spec.accepted)
    assert seen == set(range(1, L + 1)) or noise == 0.8 and seen >= {1, 2}


@pytest.mark.parametrize("drafts", [1, L - 1, 6])
def test_a_perfect_drafter_gets_every_draft_accepted(lm, prompts, drafts):
    """drafts + 1 tokens per verification pass, exactly: the drafts and the base model's own token."""
    base, V = BaseLM(lm), lm.model.config.vocab_size
    passes = 5
    n = 1 + passes * (drafts + 1)  # the prompt's forward gives the first token
    for prompt in prompts:
        truth = hf_greedy(lm, prompt, n + drafts)
        spec = speculate(base, Oracle(prompt + truth, drafts, V), prompt, n)
        assert spec.tokens == truth[:n]
        assert spec.accepted == [drafts + 1] * passes


def test_generation_stops_after_the_end_token_like_greedy(lm, prompts):
    base, V = BaseLM(lm), lm.model.config.vocab_size
    prompt = prompts[1]
    truth = hf_greedy(lm, prompt, 20)
    eos = truth[6]  # pretend the seventh token is the end token
    cut = truth[: truth.index(eos) + 1]
    assert greedy(base, prompt, 20, eos).tokens == cut
    for drafts in (1, 3, 5):
        assert speculate(base, Oracle(prompt + truth + [0] * 8, drafts, V), prompt, 20, eos).tokens == cut


@pytest.mark.parametrize("layer", [-1, 1])
def test_the_drafters_hidden_state_is_the_one_the_cache_stored(lm_dir, lm, tmp_path, layer):
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCUMENTS[:2]) + "\n")
    out = collect.run(CollectConfig(model=str(lm_dir), dataset=str(docs), out=str(tmp_path / "c"), sample_size=16,
                                    stride=16, dtype="fp32", precision="fp32", layer=layer, splits=["train:1"]))
    split = open_cache(out).split("train")
    ids, stored = split.column("input_ids")[0], split.array("hidden")[0]  # [S, H]
    base = BaseLM(lm, layer)
    token, h = base.start(ids[:7])
    assert token == split.column("output_ids")[0][6]
    assert torch.allclose(h, stored[6], atol=1e-5)
    greedy_next, hidden = base.extend(ids[7:10])  # with the KV cache: the same states as the full window
    assert greedy_next == split.column("output_ids")[0][7:10]
    assert torch.allclose(hidden, stored[7:10], atol=1e-5)


def test_the_draft_vocabulary_is_the_most_frequent_labels():
    labels = [[5, 5, 9, 3], [9, 5, 7, 7, 2], [3, 11]]  # counts: 5:3, 9:2, 3:2, 7:2, 2:1, 11:1
    assert draft_vocabulary(labels, 1).tolist() == [5]
    assert draft_vocabulary(labels, 3).tolist() == [3, 5, 7]  # ties (9, 3, 7 twice each): smaller ids first
    assert draft_vocabulary(labels, 3, exclude=[5]).tolist() == [3, 7, 9]
    assert draft_vocabulary(labels, 100).tolist() == [2, 3, 5, 7, 9, 11]
    with pytest.raises(ValueError, match="at least one token"):
        draft_vocabulary(labels, 0)


def test_a_draft_vocabulary_limits_the_drafts_not_the_output(lm, prompts):
    """Drafts come only from the given ids, and are the full drafter's wherever its own draft lies
    in them (here: the whole vocabulary but a few of the tokens it drafted); the output is greedy's."""
    V = lm.model.config.vocab_size
    head = random_head(lm, seed=5)
    h = torch.randn(6, lm.hidden_size)
    full = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision)
    wanted = {t for i in range(6) for t in full(h[i], [1, 20 + i])}
    banned = sorted(wanted)[:2]
    vocab = torch.tensor([t for t in range(V) if t not in banned])
    limited = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, vocab=vocab)
    small = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, vocab=torch.tensor([3, 8]))
    for i in range(6):
        ref, got = full(h[i], [1, 20 + i]), limited(h[i], [1, 20 + i])
        assert not set(got) & set(banned)
        assert [g for g, r in zip(got, ref) if r not in banned] == [r for r in ref if r not in banned]
        assert set(small(h[i], [1, 20 + i])) <= {3, 8}
    base = BaseLM(lm)
    for prompt in prompts:
        assert speculate(base, small, prompt, 20, vocab_size=V).tokens == hf_greedy(lm, prompt, 20)


def test_a_one_pass_draft_is_decodes_single_greedy_step(lm):
    """The drafter's one greedy pass (argmax over the draft vocabulary's own columns) drafts what
    :func:`decode` commits in one step at temperature 0, with and without a draft vocabulary; a
    second pass goes through decode itself."""
    from sgdd.decoding.maskgit import decode

    V = lm.model.config.vocab_size
    head = random_head(lm, seed=11)
    vocab = torch.arange(0, V, 2)
    h = torch.randn(8, lm.hidden_size)
    for ids in (None, vocab):
        drafter = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, vocab=ids)
        assert drafter.one_greedy_pass
        for i in range(8):
            want = decode(drafter.model, h[i:i + 1], length=L, prefix=torch.tensor([[4 + i]]), steps=1)[0, 1:]
            assert drafter(h[i], [1, 4 + i]) == want.tolist()
    assert not HeadDrafter(head, L, Sampling(steps=2), CPU, lm.precision).one_greedy_pass
    assert not HeadDrafter(head, L, Sampling(steps=1, temperature=0.5), CPU, lm.precision).one_greedy_pass


def test_a_draft_vocabulary_of_a_head_with_a_corpus_vocabulary(lm, prompts):
    """A head trained with ``model.vocab: corpus`` computes its own V' rows: a draft vocabulary of
    all of them (but the mask) drafts exactly what the head does without one, the rows looked up by
    token id; an id outside its vocabulary is a one-line error."""
    V = lm.model.config.vocab_size
    full = random_head(lm, seed=9)
    ids = torch.cat([torch.arange(0, V, 3), torch.tensor([V])]).unique()  # every third token, and the mask
    cfg = DecoderConfig(n_layers=1, d_model=32, n_heads=2, max_len=L, conditioning="prefix", cond_tokens=1)
    head = Decoder(cfg, V + 1, lm.hidden_size, lm.hidden_size, V, out_vocab=len(ids))
    state = full.state_dict()
    head.load_state_dict(state | {"out_bias": state["out_bias"][ids], "out_vocab": head.out_vocab})
    head.set_vocab(ids)
    plain = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision)
    limited = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, vocab=ids[:-1])
    h = torch.randn(6, lm.hidden_size)
    for i in range(6):
        got = limited(h[i], [1, 20 + i])
        assert got == plain(h[i], [1, 20 + i]) and set(got) <= set(ids.tolist())
    assert speculate(BaseLM(lm), limited, prompts[1], 20, vocab_size=V).tokens == hf_greedy(lm, prompts[1], 20)
    with pytest.raises(SgddError, match="outside the decoder's output vocabulary"):
        HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, vocab=torch.tensor([1]))


def test_a_probability_floor_cuts_each_draft_before_its_first_unsure_token(lm, prompts):
    """With ``min_prob`` the draft is the full draft up to (not including) its first token whose
    committed probability is below the floor; a floor above every probability drafts nothing, so
    every pass is a plain greedy step; the output is greedy's either way."""
    from sgdd.decoding.maskgit import decode

    V = lm.model.config.vocab_size
    head = random_head(lm, seed=7)
    h = torch.randn(6, lm.hidden_size)
    full = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision)
    for i in range(6):
        _, traj = decode(head, h[i:i + 1], length=L, prefix=torch.tensor([[4 + i]]), steps=1, return_trajectory=True)
        probs = traj.token_logp[0, 1:].exp().tolist()
        low = sorted(probs)
        floor = (low[0] + low[1]) / 2  # the least sure token falls below it, at least one other does not
        cut = next((k for k, p in enumerate(probs) if p < floor), len(probs))
        floored = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, min_prob=floor)
        assert floored(h[i], [1, 4 + i]) == full(h[i], [1, 4 + i])[:cut]
    nothing = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, min_prob=1.0)
    base = BaseLM(lm)
    for prompt in prompts:
        run = speculate(base, nothing, prompt, 20, vocab_size=V)
        assert run.tokens == hf_greedy(lm, prompt, 20)
        assert set(run.drafted) == {0} and set(run.accepted) == {1}
    with pytest.raises(ValueError, match="min_prob"):
        HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, min_prob=1.5)


# --------------------------------------------------------------------------------------------
# draft trees
# --------------------------------------------------------------------------------------------
def test_a_draft_tree_knows_its_ancestors_depths_and_accepted_path():
    #      b
    #    /   \
    #  0:5   1:6
    #   |  \
    # 2:7  3:8
    tree = TreeDraft([5, 6, 7, 8], [-1, -1, 0, 0])
    see = tree.attention()  # rows/columns: b, then the nodes
    assert see.tolist() == [[True, False, False, False, False], [True, True, False, False, False],
                            [True, False, True, False, False], [True, True, False, True, False],
                            [True, True, False, False, True]]
    assert tree.depths() == [0, 1, 1, 2, 2]
    assert tree.walk([6, 9, 9, 9, 9]) == [1]  # b's greedy token is node 1's; nothing below it
    assert tree.walk([5, 8, 9, 9, 9]) == [0, 3]  # node 0, then its second child
    assert tree.walk([4, 8, 9, 9, 9]) == []
    assert tree.keep([True, True, False, True]) == TreeDraft([5, 6, 8], [-1, -1, 0])
    assert tree.keep([False, True, True, True]) == TreeDraft([6], [-1])  # a dropped node takes its subtree
    assert TreeDraft.chain([3, 4]).is_chain and not tree.is_chain


class TreeOracle:
    """A tree of the chain-with-alternatives shape (width 2) over the true greedy continuation:
    at each depth the chain holds a wrong token (``chain_right`` False) or the right one, and the
    alternative beside it the right one."""

    def __init__(self, truth: list[int], vocab: int, chain_right: bool):
        self.truth, self.vocab, self.chain_right = truth, vocab, chain_right

    def __call__(self, h, context):
        n = len(context)
        assert context == self.truth[:n]
        tokens, parents, chain = [], [], -1
        for t in self.truth[n : n + L - 1]:
            tokens += [t if self.chain_right else (t + 1) % self.vocab, t]
            parents += [chain, chain]
            chain = len(tokens) - 2
        return TreeDraft(tokens, parents)


@pytest.mark.parametrize("chain_right", [True, False])
def test_a_tree_verification_accepts_the_right_branch_and_keeps_its_cache(lm, prompts, chain_right):
    """A right chain: L tokens per pass. A wrong chain beside a right alternative: the alternative
    at depth 1 (not the first node: the cache keeps a non-prefix entry), then the base model's own
    token, so exactly 2 tokens per pass; the output is greedy's either way."""
    base, V = BaseLM(lm), lm.model.config.vocab_size
    per_pass = L if chain_right else 2
    passes = 5
    n = 1 + passes * per_pass
    for prompt in prompts:
        truth = hf_greedy(lm, prompt, n + L)
        spec = speculate(base, TreeOracle(prompt + truth, V, chain_right), prompt, n)
        assert spec.tokens == truth[:n]
        assert spec.accepted == [per_pass] * passes
        assert spec.drafted == [2 * (L - 1)] * passes


@pytest.mark.parametrize("width,min_prob", [(2, 0.0), (3, 0.0), (3, 0.01), ((2, 1, 1), 0.0), ((1, 1), 0.0)])
def test_a_random_head_drafting_trees_still_gives_the_greedy_output(lm, prompts, width, min_prob):
    head = random_head(lm, seed=11)
    drafter = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, width=width, min_prob=min_prob)
    base = BaseLM(lm)
    for prompt in prompts:
        assert speculate(base, drafter, prompt, 24, vocab_size=lm.model.config.vocab_size).tokens == hf_greedy(lm, prompt, 24)


@pytest.mark.parametrize("nodes", [1, 3, 7])
def test_the_likeliest_paths_tree_takes_the_most_probable_paths_parents_first(lm, nodes):
    """Against brute force: every path of up to L-1 ranks scored by the product of its tokens'
    probabilities in the head's one pass; the tree holds the top ``nodes`` of them."""
    head = random_head(lm, seed=17)
    drafter = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, nodes=nodes)
    for i, h in enumerate(torch.randn(3, lm.hidden_size)):
        tree = drafter(h, [1, 5 + i])
        probs = drafter._first_pass(h[None], 5 + i)  # [L - 1, V]
        assert len(tree.tokens) == nodes and all(p < k for k, p in enumerate(tree.parents))

        def path(k):  # the tokens from b down to node k
            return (*path(tree.parents[k]), tree.tokens[k]) if k >= 0 else ()

        score = {path(k): math.prod(float(probs[d, t]) for d, t in enumerate(path(k))) for k in range(nodes)}
        assert len(score) == nodes  # no path twice
        top = torch.topk(probs, nodes, dim=-1)
        best = sorted((math.prod(float(top.values[d, r]) for d, r in enumerate(ranks)) for n in range(1, L)
                       for ranks in itertools.product(range(nodes), repeat=n)), reverse=True)[:nodes]
        assert sorted(score.values(), reverse=True) == pytest.approx(best, rel=1e-5)
        if nodes == 1:
            assert tree.tokens == [int(probs[0].argmax())]
    with pytest.raises(ValueError, match="most probable paths needs"):
        HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, width=2, nodes=4)


def test_a_random_head_drafting_likeliest_paths_still_gives_the_greedy_output(lm, prompts):
    drafter = HeadDrafter(random_head(lm, seed=19), L, Sampling(steps=1), CPU, lm.precision, nodes=6)
    base = BaseLM(lm)
    for prompt in prompts:
        spec = speculate(base, drafter, prompt, 24, vocab_size=lm.model.config.vocab_size)
        assert spec.tokens == hf_greedy(lm, prompt, 24) and set(spec.drafted) == {6}


def test_the_trees_chain_is_the_heads_one_pass_draft(lm):
    """The first candidate at every depth (the chain) is what the width-1 drafter drafts; the others
    are the next most probable tokens of the same position, each a leaf beside the chain's token."""
    head = random_head(lm, seed=13)
    h = torch.randn(4, lm.hidden_size)
    chain = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision)
    wide = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, width=3)
    for i in range(4):
        tree = wide(h[i], [1, 9 + i])
        assert tree.tokens[0::3] == chain(h[i], [1, 9 + i])
        assert tree.parents == [-1, -1, -1, 0, 0, 0, 3, 3, 3]
        assert len(set(tree.tokens[0:3])) == 3
    shaped = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, width=(2, 1, 1))
    short = HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, width=(3,))
    for i in range(4):
        tree, best = shaped(h[i], [1, 9 + i]), chain(h[i], [1, 9 + i])
        assert tree.parents == [-1, -1, 0, 2] and [tree.tokens[k] for k in (0, 2, 3)] == best
        assert tree.tokens[1] == wide(h[i], [1, 9 + i]).tokens[1]  # the first alternative of position 1
        assert short(h[i], [1, 9 + i]) == TreeDraft(wide(h[i], [1, 9 + i]).tokens[:3], [-1, -1, -1])
    with pytest.raises(ValueError, match="one draft pass"):
        HeadDrafter(head, L, Sampling(steps=2), CPU, lm.precision, width=2)
    with pytest.raises(ValueError, match="positive widths"):
        HeadDrafter(head, L, Sampling(steps=1), CPU, lm.precision, width=(1, 1, 1, 1))


def test_prompt_lookup_drafts_what_followed_the_latest_longest_match():
    ctx = [1, 2, 3, 4, 9, 2, 3, 5, 6, 7, 2, 3]
    assert context_draft(ctx, 3) == [5, 6, 7]  # "2 3" last came before 5 (no earlier "7 2 3")
    assert context_draft(ctx, 3, longest=1) == [5, 6, 7]  # "3": its latest earlier occurrence is the same
    assert context_draft(ctx + [8], 2) == []  # 8 occurs nowhere before
    assert context_draft([4, 1, 2, 4, 1, 3, 9, 1], 3) == [3, 9, 1]  # only "1" matches: its latest occurrence
    assert context_draft([5, 8, 5, 8], 4) == [5, 8]  # a match near the end drafts what there is (the loop)
    assert context_draft([7, 7, 7], 5) == [7]  # "7 7" ends at 1: one token follows it
    assert context_draft([3], 3) == [] and context_draft([], 3) == []
    # the longest run first: "1 2" last occurred before 8, but "0 1 2" only before 4
    assert context_draft([0, 1, 2, 4, 5, 1, 2, 8, 0, 1, 2], 2) == [4, 5]
    assert context_draft([0, 1, 2, 4, 5, 1, 2, 8, 0, 1, 2], 2, longest=2) == [8, 0]
    assert context_draft([4, 1, 2, 4, 1, 3, 9, 1], 3, shortest=2) == []  # only a one-token match there
    assert context_draft(ctx, 3, shortest=2) == [5, 6, 7]


def test_a_merged_tree_shares_common_prefixes_and_keeps_the_cap():
    chain = TreeDraft.chain([5, 6, 7])
    head = TreeDraft([5, 4, 8, 6], [-1, -1, 0, 0])  # 5 -> {8, 6}, and 4 beside 5
    assert chain.merged(head) == TreeDraft([5, 6, 7, 4, 8], [-1, 0, 1, -1, 0])  # 5 and 5 -> 6 are there already
    assert chain.merged(head, nodes=4) == TreeDraft([5, 6, 7, 4], [-1, 0, 1, -1])  # the cap: other's first nodes
    assert chain.merged(TreeDraft([4, 9], [-1, 0]), nodes=4) == TreeDraft([5, 6, 7, 4], [-1, 0, 1, -1])  # 9: the cap
    assert TreeDraft.chain([]).merged(head) == head and chain.merged(TreeDraft.chain([])) == chain
    for bad in ({"tokens": 0}, {"tokens": 3, "shortest": 4}, {"tokens": 3, "shortest": 0}):
        with pytest.raises(ValueError, match="prompt lookup needs"):
            LookupDrafter(None, **bad)


def test_the_lookup_asks_the_other_drafter_only_while_its_nodes_can_enter():
    calls = []

    def inner(h, context):
        calls.append(list(context))
        return TreeDraft([1, 2], [-1, -1])

    capped = LookupDrafter(inner, tokens=3, nodes=3)
    assert capped(None, [1, 5, 6, 7, 8, 1]) == TreeDraft.chain([5, 6, 7]) and calls == []  # the chain fills the cap
    assert capped(None, [4, 5, 9]) == TreeDraft([1, 2], [-1, -1]) and len(calls) == 1  # no match: the other's draft
    assert capped(None, [7, 8, 7]) == TreeDraft([8, 7, 1], [-1, 0, -1]) and len(calls) == 2  # 2 lookup tokens + 1
    assert LookupDrafter(inner, tokens=3)(None, [1, 5, 6, 7, 8, 1]) == TreeDraft([5, 6, 7, 1, 2], [-1, 0, 1, -1, -1])


def test_the_acceptance_histogram_counts_passes_longer_than_the_block():
    """Prompt lookup may draft more than L - 1 tokens, so a pass may add more than L."""
    greedy_run = Generation(list(range(10)), 1.0, 10)
    spec_run = Generation(list(range(10)), 0.5, 4, accepted=[1, 6, 2, 1], drafted=[3, 5, 3, 0])
    report = summary([greedy_run], [spec_run], block_length=4)
    assert report["acceptance_histogram"] == {"1": 2, "2": 1, "3": 0, "4": 0, "5": 0, "6": 1}
    assert report["acceptance_length"] == 2.5 and report["drafted_per_pass"] == 2.75 and report["speedup"] == 2.0


@pytest.mark.parametrize("with_head,nodes", [(False, None), (True, None), (True, 3)])
def test_prompt_lookup_beside_the_head_still_gives_the_greedy_output(lm, prompts, with_head, nodes):
    """A looping prompt, so that lookup drafts come and some are accepted (a random head's seldom are)."""
    head = HeadDrafter(random_head(lm, seed=23), L, Sampling(steps=1), CPU, lm.precision, nodes=nodes) if with_head else None
    drafter = LookupDrafter(head, tokens=L - 1, nodes=nodes)
    base = BaseLM(lm)
    accepted = 0
    for prompt in [*prompts, prompts[0][:5] * 4]:
        spec = speculate(base, drafter, prompt, 24, vocab_size=lm.model.config.vocab_size)
        assert spec.tokens == hf_greedy(lm, prompt, 24)
        assert nodes is None or max(spec.drafted) <= nodes
        accepted += sum(a - 1 for a in spec.accepted)
    assert accepted > 0


# --------------------------------------------------------------------------------------------
# `sgdd speculate` end to end
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(lm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("spec-run")
    docs = root / "docs.txt"
    docs.write_text("\n".join(DOCUMENTS) + "\n")
    cache = collect.run(CollectConfig(model=str(lm_dir), dataset=str(docs), out=str(root / "cache"), sample_size=32,
                                      stride=16, dtype="fp16", precision="fp32", generate=True, max_new_tokens=16,
                                      splits=["train:6"]))
    cfg = tiny_cfg(cache, root / "run", val_split=None, given=1,
                   **{"model.d_model": None, "model.n_heads": 2, "block_length": L, "optim.max_steps": 3,
                      "model.conditioning": "prefix", "model.cond_tokens": 1})
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        return fit(cfg).run_dir


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(d.split()[:6])}) + "\n" for d in DOCUMENTS[:4]))
    return path


def speculate_cli(*args):
    return CliRunner().invoke(cli, ["speculate", *args, "--device", "cpu"], catch_exceptions=False)


def speculate_report(run, prompt_file, out, *args) -> dict:
    """`sgdd speculate` of the tiny run on the prompt file, 12 new tokens -> its report.json."""
    result = speculate_cli("--run", str(run), "--prompts", str(prompt_file), "--max-new-tokens", "12",
                           "--checkpoint", "last", "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def test_cli_runs_end_to_end_and_writes_the_report(tiny_run, prompt_file, tmp_path):
    out = tmp_path / "spec"
    report = speculate_report(tiny_run, prompt_file, out, "--draft-passes", "2")
    assert report["identical_to_greedy"] is True and report["prompts"] == 4 and report["block_length"] == L
    hist = report["acceptance_histogram"]
    assert list(hist) == [str(k) for k in range(1, L + 1)] and sum(hist.values()) == report["verification_passes"]
    mean = sum(int(k) * v for k, v in hist.items()) / report["verification_passes"]
    assert report["acceptance_length"] == pytest.approx(mean)
    g, s = report["greedy"], report["speculative"]
    assert g["tokens_per_s"] == pytest.approx(report["tokens"] / g["seconds"], rel=1e-3)
    assert report["speedup"] == pytest.approx(g["seconds"] / s["seconds"], rel=1e-3)
    assert g["forward_passes"] == report["tokens"]  # the prompt's forward gives the first token, then one each
    assert s["forward_passes"] == 4 + report["verification_passes"]
    assert (out / "report.md").read_text().count("identical to greedy: **True**") == 1
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and sum(r["tokens"] for r in rows) == report["tokens"]
    labels = {t for ids in open_cache(json.loads((tiny_run / "checkpoints/last/model.json").read_text())["cache"])
              .split("train").column("output_ids") for t in ids}
    assert report["draft_vocab"] == len(labels)  # by default: up to 4096 of the training labels, here all of them
    assert report["drafted_per_pass"] == L - 1 and report["draft_min_prob"] == 0  # whole drafts by default


def test_cli_in_bf16_names_the_precision_and_keeps_greedys_output(tiny_run, prompt_file, tmp_path):
    report = speculate_report(tiny_run, prompt_file, tmp_path / "spec", "--precision", "bf16", "--draft-nodes", "3")
    assert report["identical_to_greedy"] is True and report["precision"] == "bf16" and report["one_row"] == "padded"


def test_cli_drafts_trees_and_refuses_a_tree_over_several_passes(tiny_run, prompt_file, tmp_path):
    report = speculate_report(tiny_run, prompt_file, tmp_path / "spec", "--draft-width", "2")
    assert report["identical_to_greedy"] is True and report["draft_widths"] == [2] * (L - 1)
    assert report["drafted_per_pass"] == 2 * (L - 1)
    report = speculate_report(tiny_run, prompt_file, tmp_path / "spec2", "--draft-width", "3,1")
    assert report["identical_to_greedy"] is True and report["draft_widths"] == [3, 1]
    assert report["drafted_per_pass"] == 4 and "a tree of [3, 1]" in (tmp_path / "spec2/report.md").read_text()
    report = speculate_report(tiny_run, prompt_file, tmp_path / "spec3", "--draft-nodes", "5")
    assert report["identical_to_greedy"] is True and report["draft_nodes"] == 5 and report["drafted_per_pass"] <= 5
    assert "the 5 most probable paths" in (tmp_path / "spec3/report.md").read_text()
    for bad, message in ((["--draft-width", "2", "--draft-passes", "2"], "which needs --draft-passes 1"),
                         (["--draft-nodes", "4", "--draft-width", "2"], "no --draft-width (got 2)"),
                         (["--draft-nodes", "0"], "--draft-nodes 0 needs a positive N"),
                         (["--draft-width", "1,1,1,1"], "with 1 to 3 positive integers"),
                         (["--draft-width", "2,0"], "--draft-width '2,0'")):
        result = speculate_cli("--run", str(tiny_run), "--prompts", str(prompt_file), *bad)
        assert result.exit_code != 0 and message in result.output, result.output


def test_cli_drafts_by_prompt_lookup_beside_the_head_or_alone(tiny_run, prompt_file, tmp_path):
    out = tmp_path / "spec"
    report = speculate_report(tiny_run, prompt_file, out, "--lookup", "3", "--draft-nodes", "3", "--lookup-min-ngram", "2")
    assert report["identical_to_greedy"] is True and report["lookup"] == 3 and report["draft_head"] is True
    assert report["lookup_min_ngram"] == 2 and "last 3 tokens down to 2" in (out / "report.md").read_text()
    assert 0 < report["drafted_per_pass"] <= 3 and "prompt lookup of up to 3 tokens" in (out / "report.md").read_text()
    report = speculate_report(tiny_run, prompt_file, out, "--lookup", "5", "--no-draft-head")
    assert report["identical_to_greedy"] is True and report["draft_head"] is False
    assert report["drafted_per_pass"] <= 5 and "alone, without the head" in (out / "report.md").read_text()
    hist = report["acceptance_histogram"]  # every pass counted, also those of more than L tokens
    assert sum(hist.values()) == report["verification_passes"] and len(hist) >= L
    for bad, message in ((["--no-draft-head"], "--no-draft-head leaves nothing to draft"),
                         (["--lookup", "-1"], "--lookup must be 0 (off) or more"),
                         (["--lookup", "3", "--lookup-min-ngram", "4"], "1 <= --lookup-min-ngram <= --lookup-ngram")):
        result = speculate_cli("--run", str(tiny_run), "--prompts", str(prompt_file), *bad)
        assert result.exit_code == 1 and message in result.output, result.output


def test_cli_with_a_probability_floor_of_one_drafts_nothing(tiny_run, prompt_file, tmp_path):
    report = speculate_report(tiny_run, prompt_file, tmp_path / "spec", "--draft-min-prob", "1")
    assert report["identical_to_greedy"] is True and report["drafted_per_pass"] == 0
    assert report["acceptance_histogram"]["1"] == report["verification_passes"]
    result = speculate_cli("--run", str(tiny_run), "--prompts", str(prompt_file), "--draft-min-prob", "2")
    assert result.exit_code != 0 and "draft_min_prob must lie in [0, 1], got 2" in result.output


def test_cli_drafts_from_the_most_frequent_training_labels(tiny_run, prompt_file, tmp_path):
    out = tmp_path / "spec"
    report = speculate_report(tiny_run, prompt_file, out, "--draft-vocab", "5")
    assert report["identical_to_greedy"] is True and report["draft_vocab"] == 5
    assert "the 5 most frequent training labels" in (out / "report.md").read_text()
    report = speculate_report(tiny_run, prompt_file, out, "--draft-vocab", "null")
    assert report["identical_to_greedy"] is True and report["draft_vocab"] is None
    assert "the whole vocabulary" in (out / "report.md").read_text()
    result = speculate_cli("--run", str(tiny_run), "--prompts", str(prompt_file), "--checkpoint", "last",
                           "--draft-vocab", "0")
    assert result.exit_code == 1 and "draft_vocab must be at least 1" in result.output


def test_cli_fails_when_the_output_differs_from_greedy(tiny_run, prompt_file, tmp_path, monkeypatch):
    from sgdd.stages import speculate as stage

    real = stage.speculate

    def broken(*args, **kwargs):
        gen = real(*args, **kwargs)
        gen.tokens[-1] += 1
        return gen

    monkeypatch.setattr(stage, "speculate", broken)
    out = tmp_path / "spec"
    result = speculate_cli("--run", str(tiny_run), "--prompts", str(prompt_file), "--max-new-tokens", "6",
                           "--checkpoint", "last", "--out", str(out))
    assert result.exit_code == 1 and "differs from greedy on 4 of 4 prompts" in result.output
    assert json.loads((out / "report.json").read_text())["identical_to_greedy"] is False


def test_cli_refuses_another_base_model_or_a_bad_prompt_file(tiny_run, prompt_file, tmp_path):
    other = build_causal_lm_dir(tmp_path / "other", layers=1)
    result = speculate_cli("--run", str(tiny_run), "--prompts", str(prompt_file), "--model", str(other),
                           "--checkpoint", "last")
    assert result.exit_code == 1 and "is not the one cache" in result.output and "weights_sha256" in result.output
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    result = speculate_cli("--run", str(tiny_run), "--prompts", str(empty), "--checkpoint", "last")
    assert result.exit_code == 1 and "holds no prompt" in result.output


def test_speculate_refuses_a_sentence_decoder(tiny_cache, tmp_path, prompt_file):
    run_dir = fit(tiny_cfg(tiny_cache, tmp_path / "r")).run_dir
    with pytest.raises(SgddError, match="not an MTP head"):
        from sgdd.stages.speculate import SpeculateConfig, run

        run(SpeculateConfig(run=str(run_dir), checkpoint="last", prompts=str(prompt_file), device="cpu"))


def test_the_drafter_drafts_what_the_sampler_decodes(lm):
    """Drafts = positions 1..L-1 of the head's own decode with the known token given (the drafter
    only skips the row padding of the vocabulary projection)."""
    from sgdd.decoding.maskgit import decode

    head = random_head(lm, seed=3)
    h = torch.randn(5, lm.hidden_size)
    for sampling in (Sampling(steps=1), Sampling(sampler="entropy", steps=3)):
        drafter = HeadDrafter(head, L, sampling, CPU, lm.precision)
        for i in range(5):
            ref = decode(head, h[i:i + 1], length=L, prefix=torch.tensor([[7 + i]]), sampler=sampling.sampler,
                         steps=sampling.steps)
            assert drafter(h[i], [1, 7 + i]) == ref[0, 1:].tolist()


@pytest.mark.skipif(not cpu_bf16_native(), reason="bf16 is emulated on this CPU (precision auto never picks it)")
def test_in_bf16_a_verification_computes_every_row_as_the_greedy_step_does(tmp_path):
    """bf16 weights round every linear layer's input: an fp32 difference in the last place between
    a verification row and the greedy step it stands for can change a token, so the two must
    agree bit for bit (the one-row form padded, rowwise attention). A model of SmolLM2-135M's
    width (576, 9 heads over 3 key/value heads), where SDPA's kernels for one row and for several
    differ in the last place; four layers."""
    from sgdd.models.causal_lm import FrozenCausalLM

    lm_dir = build_causal_lm_dir(tmp_path / "lm", layers=4, hidden=576, heads=9, kv_heads=3, intermediate=1536)
    lm = FrozenCausalLM(str(lm_dir), CPU, pick_precision("bf16", CPU))
    base = BaseLM(lm)
    linears = [m for m in lm.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert lm.model.get_input_embeddings().weight.dtype == torch.float32
    assert base.one_row == "padded" and lm.model.config._attn_implementation == fewrows.ROWWISE_ATTENTION
    lm.model.config._attn_implementation = "sdpa"
    base = BaseLM(lm)  # a second loop over the converted model sets it up the same way
    assert base.one_row == "padded" and lm.model.config._attn_implementation == fewrows.ROWWISE_ATTENTION
    V = lm.model.config.vocab_size
    for seed in range(5):
        prompt = torch.randint(5, V, (120,), generator=torch.Generator().manual_seed(seed)).tolist()
        token, _ = base.start(prompt)
        start = base.length
        steps, hs = [token], []
        for _ in range(4):
            greedy_tokens, h = base.extend([steps[-1]])
            steps.append(greedy_tokens[-1])
            hs.append(h[-1])
        base.rollback(start)
        verdict, h = base.extend(steps[:4])  # the chain of the greedy tokens, in one forward
        assert verdict == steps[1:] and torch.equal(h, torch.stack(hs))
        base.rollback(start)
        tree = TreeDraft([(steps[1] + 1) % V, steps[1], steps[2]], [-1, -1, 1])  # the right branch second
        verdict, h = base.extend([steps[0], *tree.tokens], tree=tree)
        assert tree.walk(verdict) == [1, 2] and torch.equal(h[[0, 2, 3]], torch.stack(hs[:3]))
    drafter = HeadDrafter(random_head(lm, seed=3), L, Sampling(steps=1), CPU, lm.precision, nodes=5)
    prompt = list(range(5, 40))
    assert speculate(base, drafter, prompt, 30, vocab_size=V).tokens == greedy(base, prompt, 30).tokens
