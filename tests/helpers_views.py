"""A tiny LLM "windows" cache, written in-process the way an LLM collect writes one, for the
next-block view (the MTP head) and the trainer. No language model is run: the "base model's"
hidden state at a position is a fixed vector of the token there plus a little of the previous
one, and its greedy output is the next token of the text, so the next block is learnable.

Cache contract (sgdd.cache.format, kind "windows"): rows id, sample_id, text, input_ids,
length, output_ids; array hidden [N, S, H] (zeros beyond length); encoder/ with
embeddings [V + 1, H] (an appended mask row), lm_head.safetensors [V, H] and encoder.json
(kind causal_lm, hidden_size, vocab_size incl. the mask row, base_vocab_size, tied_lm_head,
mask_id, eos_id, pad_id None).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from tests.helpers import SENTENCES, build_tokenizer, text_vector, write_shard

HIDDEN = 36  # divisible by the 9 heads of configs/mtp-smollm2.yaml into an even head size


def token_vector(token: int, dim: int) -> torch.Tensor:
    return text_vector(f"token {token}", dim)


def window_rows(texts: list[str], tokenizer, sample_size: int, stride: int, hidden: int, eos: int, split: str):
    """Rows (columns of the windows schema) and the hidden array [N, S, H] of ``texts``: EAGLE-style
    windows of ``sample_size`` tokens every ``stride`` tokens (the last one of a text may be shorter)."""
    rows = {"id": [], "sample_id": [], "text": [], "input_ids": [], "length": [], "output_ids": []}
    states = []
    for s, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        following = ids[1:] + [eos]  # the "base model" predicts the next token of the text
        for w, start in enumerate(range(0, len(ids), stride)):
            window = ids[start:start + sample_size]
            rows["id"].append(f"{split}-{s}-{w}")
            rows["sample_id"].append(f"{split}-{s}")
            rows["text"].append(tokenizer.decode(window))
            rows["input_ids"].append(window)
            rows["length"].append(len(window))
            rows["output_ids"].append(following[start:start + len(window)])
            h = torch.zeros(sample_size, hidden)
            for j, tok in enumerate(window):
                prev = window[j - 1] if j else tok
                h[j] = token_vector(tok, hidden) + 0.3 * token_vector(prev, hidden)
            states.append(h)
            if start + sample_size >= len(ids):
                break
    return rows, torch.stack(states)


def _window_writer(split_dir: Path, settings: dict, arrays: dict):
    """The cache's SplitWriter for kind "windows" (and no extra manifest fields)."""
    from sgdd.cache.writer import SplitWriter

    return SplitWriter(split_dir, settings, arrays, kind="windows"), {}


def build_windows_cache(root: Path, splits: dict[str, list[str]] | None = None, sample_size: int = 8,
                        stride: int = 4, hidden: int = HIDDEN, tied_lm_head: bool = False,
                        tokenizer_sha256: str = "2" * 64, shard_rows: int = 16) -> Path:
    """A windows cache of ``splits`` (default: the helper sentences, train/validation)."""
    from sgdd.cache import write_encoder_files

    tokenizer = build_tokenizer()
    V = len(tokenizer)
    eos = tokenizer.sep_token_id
    splits = splits or {"train": SENTENCES[:24], "validation": SENTENCES[24:28]}
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(V, hidden, generator=g) * 0.05
    lm_head = emb.clone() if tied_lm_head else torch.randn(V, hidden, generator=g) * 0.05
    embeddings = torch.cat([emb, emb.mean(0, keepdim=True)])  # + the mask row
    info = {"model": "tiny-causal", "weights_sha256": "3" * 64, "tokenizer_sha256": tokenizer_sha256,
            "kind": "causal_lm", "hidden_size": hidden, "embed_dim": hidden, "vocab_size": V + 1,
            "base_vocab_size": V, "tied_lm_head": tied_lm_head, "mask_id": V, "eos_id": eos, "pad_id": None,
            "bos_id": None}
    params = inspect.signature(write_encoder_files).parameters
    if "tensors" in params:
        write_encoder_files(root, tokenizer, embeddings, info, tensors={"lm_head.safetensors": lm_head})
    else:
        from safetensors.torch import save_file

        out = write_encoder_files(root, tokenizer, embeddings, info)
        save_file({"weight": lm_head.contiguous()}, str(out / "lm_head.safetensors"))
    for split, texts in splits.items():
        rows, states = window_rows(texts, tokenizer, sample_size, stride, hidden, eos, split)
        settings = {"model": "tiny-causal", "split": split, "sample_size": sample_size, "stride": stride}
        writer, extra = _window_writer(root / split, settings, {"hidden": ((sample_size, hidden), "fp32")})
        with writer as w:
            for start in range(0, len(rows["id"]), shard_rows):
                part = {k: v[start:start + shard_rows] for k, v in rows.items()}
                write_shard(w, part, {"hidden": states[start:start + shard_rows]})
            w.finalize(extra)
    return root
