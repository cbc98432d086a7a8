"""Length at decode: max, predicted (a length head), oracle and beam:N, on fake models and through eval."""


import pytest
import torch

from sgdd.cache import open_cache
from sgdd.cache.views import sentence_view
from sgdd.decoding.lengths import LengthRule, parse_length, resolve_length, top_lengths
from sgdd.decoding.maskgit import Trajectory
from sgdd.decoding.samplers import Sampling
from sgdd.config import from_dict
from sgdd.stages.evaluate.config import EvalConfig
from sgdd.errors import SgddError
from sgdd.stages import evaluate
from sgdd.stages.evaluate import batches, stage
from sgdd.stages.evaluate.batches import decode_rows
from sgdd.stages.evaluate.data import EvalData
from sgdd.runtime import pick_precision
from tests.helpers_eval import V, TableModel, perfect_tables
from tests.evaluate.test_evaluate import MAX_LEN, eval_cfg, make_run, read_report

L, PAD, BOS, EOS = 12, 1, 0, 2


class LengthTableModel(TableModel):
    """TableModel with a length head whose logits are given per row, decoding any length n <= L
    (the first n rows of each table)."""

    def __init__(self, length_logits: torch.Tensor):
        super().__init__(length=L)
        self.cfg.length_head = True
        self.head = length_logits  # [B, L + 1]
        self.decoded_lengths: list[tuple[int, int]] = []  # (rows, length) of every forward call

    def length_logits(self, z):
        rows = [self.row_of[tuple(v.tolist())] for v in z]
        return self.head[rows]

    def forward(self, x_t, t, kv=None, z=None, drop=None):
        self.decoded_lengths.append(tuple(x_t.shape))
        return super().forward(x_t, t, kv=kv, z=z, drop=drop)[:, :x_t.shape[1]]


def sentences(lengths: list[int], seed: int = 0) -> torch.Tensor:
    """Reference ids [B, L]: BOS, random words, EOS, padding."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.full((len(lengths), L), PAD)
    for i, n in enumerate(lengths):
        ref[i, 0], ref[i, n - 1] = BOS, EOS
        ref[i, 1:n - 1] = torch.randint(5, V, (n - 2,), generator=g)
    return ref


def head_logits(best: list[list[int]]) -> torch.Tensor:
    """Length logits [B, L + 1] ranking the lengths ``best[i]`` first, in that order."""
    out = torch.zeros(len(best), L + 1)
    for i, ranked in enumerate(best):
        for r, n in enumerate(ranked):
            out[i, n] = 10.0 - r
    return out


def setup(ref: torch.Tensor, best: list[list[int]], pad_beyond: bool = True):
    strength = torch.full(ref.shape, 5.0)
    tables = perfect_tables(ref, strength)  # the reference token first at every position
    if not pad_beyond:  # no opinion past the reference's end: a flat distribution there
        tab = tables.view(-1, L, V)
        tab[ref == PAD] = 0.0
    model = LengthTableModel(head_logits(best))
    model.row_of = {tuple(v.tolist()): i for i, v in enumerate(tables)}
    data = EvalData("sentences", tables, ref, [str(i) for i in range(len(ref))], ["x"] * len(ref), None, 0, L)
    return model, data


def run_rows(model, data, lengths, judge=None):
    cpu = torch.device("cpu")
    return decode_rows(model, data, Sampling(steps=L), 0, 2, cpu, pick_precision("fp32", cpu), keep=3,
                       lengths=lengths, pad_id=PAD, judge=judge)


def test_parse_and_resolve_the_length_rule():
    assert parse_length("beam:4") == LengthRule("beam", 4) and str(parse_length("BEAM:2")) == "beam:2"
    for bad in ("beam", "beam:0", "long", "beam:x"):
        with pytest.raises(SgddError, match="valid: predicted, oracle, max, beam:N"):
            parse_length(bad)
    with_head, without = LengthTableModel(torch.zeros(1, L + 1)), TableModel()
    assert resolve_length(None, with_head) == LengthRule("predicted")
    assert resolve_length(None, without) == LengthRule("max")
    assert resolve_length("oracle", without) == LengthRule("oracle")
    with pytest.raises(SgddError, match="needs a model trained with a length head"):
        resolve_length("beam:3", without)


def test_top_lengths_rank_the_head_and_never_pick_under_two():
    model = LengthTableModel(head_logits([[1, 7, 4], [0, 3, 12]]))
    model.row_of = {(0.0,): 0, (1.0,): 1}
    top = top_lengths(model, torch.tensor([[0.0], [1.0]]), 2)
    assert top.tolist() == [[7, 4], [3, 12]]  # lengths 0 and 1 cannot hold a start and an end token


def test_a_perfect_predictor_decodes_exactly_with_the_length_head():
    lengths = [5, 9, 5, 12, 7]
    ref = sentences(lengths)
    model, data = setup(ref, [[n] for n in lengths])
    predicted = top_lengths(model, data.cond, 1)[:, 0]
    assert predicted.tolist() == lengths
    out = run_rows(model, data, predicted)
    assert torch.equal(out.ids, ref)  # padded with pad_id after each row's length, in row order
    assert out.lengths.tolist() == lengths and out.tokens == sum(lengths)
    # rows of one length are decoded together, every block holds exactly that many positions
    assert {n for _, n in model.decoded_lengths} == set(lengths)
    assert all(x[0] <= 2 for x in model.decoded_lengths)  # batch size 2
    assert out.passes_per_row.tolist() == [n for n in lengths]  # L steps: one token per pass
    assert bool((out.committed_at[:, :5] > 0).all()) and bool((out.committed_at[0, 5:] == 0).all())


def test_a_length_beam_keeps_the_length_the_model_scores_best():
    lengths = [6, 9, 4]
    ref = sentences(lengths, seed=1)
    # the head ranks a wrong (longer) length first; past the reference the model has no opinion
    model, data = setup(ref, [[n + 2, n, n + 3] for n in lengths], pad_beyond=False)
    out = run_rows(model, data, top_lengths(model, data.cond, 3))
    assert torch.equal(out.ids, ref) and out.lengths.tolist() == lengths
    assert out.beam["by"] == "model mean log-probability" and out.beam["chosen_rank_share"] == [0.0, 1.0, 0.0]
    assert out.tokens == sum(3 * n + 5 for n in lengths)  # every candidate length was decoded


def test_a_length_beam_with_a_judge_keeps_what_the_judge_prefers():
    lengths = [6, 9]
    ref = sentences(lengths, seed=2)
    model, data = setup(ref, [[n, n + 1] for n in lengths], pad_beyond=False)
    seen = []

    def judge(ids, rows):  # prefers the longer output of each row (a token, not padding, past the end)
        seen.append(rows.tolist())
        return (ids != PAD).sum(1).float()

    out = run_rows(model, data, top_lengths(model, data.cond, 2), judge=judge)
    assert seen == [[0, 0, 1, 1]] and out.lengths.tolist() == [7, 10]
    assert out.beam["by"] == "encoder cosine"


# -- through sgdd eval -----------------------------------------------------------------------
def lookup_by_length(answers: dict, calls: list):
    """A stand-in for ``decode`` that returns each condition's reference ids cut to ``length``."""

    def fake(model, z, length=None, **kw):
        ids = torch.stack([answers[tuple(v.tolist())] for v in z.float()])[:, :length].clone()
        calls.append(length)
        return ids, Trajectory(torch.ones_like(ids), 1, torch.ones(ids.shape[0], dtype=torch.long),
                               token_logp=torch.zeros(ids.shape, dtype=torch.float))

    return fake


@pytest.fixture
def lookup(tiny_cache, monkeypatch):
    view = sentence_view(open_cache(tiny_cache).split("validation"), MAX_LEN, pad_id=1)
    calls: list = []
    monkeypatch.setattr(batches, "decode", lookup_by_length(dict(zip(map(tuple, view.vectors.tolist()), view.ids)),
                                                             calls))
    return view, calls


def test_oracle_length_through_eval(tmp_path, tiny_cache, lookup):
    view, calls = lookup
    ref_len = (view.ids != 1).sum(1)
    out = evaluate.run(eval_cfg(make_run(tmp_path / "run", tiny_cache), split="validation", length="oracle",
                                metrics=["exact_match", "token_accuracy"]))
    report = read_report(out)
    assert report["metrics"] == {"exact_match": 100.0, "token_accuracy": 100.0}
    assert sorted(set(calls)) == sorted(set(ref_len.tolist()))  # one decode per distinct length
    r = report["results"][0]
    assert r["settings"]["length"] == "oracle" and r["length"]["exact_share"] == 100.0
    assert "## Length" in (out / "report.md").read_text()


def test_predicted_length_through_eval_with_a_length_head(tmp_path, tiny_cache, lookup, monkeypatch):
    view, calls = lookup
    ref_len = (view.ids != 1).sum(1)
    known = {tuple(v.tolist()): int(n) for v, n in zip(view.vectors, ref_len)}
    real_load = stage.load_checkpoint

    def with_head(ckpt, device):  # the decoder gets a length head that is right for every row but the first
        model, meta = real_load(ckpt, device)
        model.cfg.length_head = True
        first = tuple(view.vectors[0].tolist())

        def length_logits(z):
            n = torch.tensor([known[tuple(v.tolist())] + (1 if tuple(v.tolist()) == first else 0) for v in z.float()])
            return torch.nn.functional.one_hot(n, model.cfg.max_len + 1).float()

        model.length_logits = length_logits
        return model, meta

    monkeypatch.setattr(stage, "load_checkpoint", with_head)
    report = read_report(evaluate.run(eval_cfg(make_run(tmp_path / "run", tiny_cache), split="validation",
                                               metrics=["exact_match"])))  # null: predicted, the model has a head
    r = report["results"][0]
    assert r["settings"]["length"] == "predicted"
    assert r["length"]["exact_share"] == pytest.approx(75.0) and report["metrics"]["exact_match"] == 100.0
    assert r["length"]["mean_decoded"] == pytest.approx(float(ref_len.float().mean()) + 0.25)


def test_predicted_length_needs_a_length_head(tmp_path, tiny_cache):
    with pytest.raises(SgddError, match="needs a model trained with a length head"):
        evaluate.run(eval_cfg(make_run(tmp_path / "run", tiny_cache), split="validation", length="predicted"))
    with pytest.raises(SgddError, match="length 'short' unknown"):
        from_dict(EvalConfig, {"length": "short"})
