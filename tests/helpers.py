"""Tiny models and caches built in-process, so the suite needs no download."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

SENTENCES = [
    "the cat sat on the mat in the warm sun .",
    "a dog ran across the green field after the ball .",
    "the river flows north through the old city .",
    "she wrote a long letter to her brother in spring .",
    "the museum opened a new wing for modern art .",
    "many birds fly south when the winter comes .",
    "the train to the coast leaves every hour .",
    "he planted tomatoes and beans in the small garden .",
    "the team won the final match after extra time .",
    "a storm closed the mountain road for two days .",
    "the library keeps old maps of the region .",
    "students met in the hall to hear the speech .",
    "the bridge was built of stone in the last century .",
    "fresh bread is sold at the market each morning .",
    "the island has a small harbour and a lighthouse .",
    "their band played songs from the early years .",
    "the company moved its office to the north side .",
    "a quiet village lies beyond the dark forest .",
    "the film tells the story of a young sailor .",
    "rain fell all night on the roofs of the town .",
    "the school added a course on local history .",
    "the king gave the land to his younger son .",
    "the lake freezes over in the coldest months .",
    "a new road links the port with the capital .",
    "the painter used bright colours for the sky .",
    "the church stands on a hill above the valley .",
    "the farmers sold their grain at a good price .",
    "an old clock hangs above the station door .",
    "the children played games in the park after school .",
    "the ship carried wood and salt to the south .",
    "the poet read from her first book of poems .",
    "the castle walls were repaired after the war .",
]


def write_shard(writer, rows: dict[str, list], arrays: dict[str, torch.Tensor], index: int | None = None,
                first_row: int | None = None) -> dict:
    """Commit one shard of ``writer`` (a SplitWriter) in one call: columns of the split's schema and
    one tensor per declared array; by default the next shard, after the committed rows."""
    if set(arrays) != set(writer.arrays):
        raise ValueError(f"arrays {sorted(arrays)} do not match the declared {sorted(writer.arrays)}")
    index = (max(writer.committed) + 1 if writer.committed else 0) if index is None else index
    first_row = writer.committed_rows if first_row is None else first_row
    shard = writer.begin_shard(index, len(rows["id"]), first_row)
    try:
        for name, tensor in arrays.items():
            shard.write(name, 0, tensor)
        return shard.commit(rows)
    finally:
        shard.abort()

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def build_tokenizer(sentences=SENTENCES):
    """A word-level RoBERTa-style tokenizer trained on ``sentences`` in milliseconds."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", cls_token="<s>", eos_token="</s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
    )


def build_encoder_dir(path: Path) -> Path:
    """A RoBERTa with hidden size 32 and its tokenizer, saved as a Hugging Face model directory."""
    from transformers import RobertaConfig, RobertaModel

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=80, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    path.mkdir(parents=True, exist_ok=True)
    RobertaModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def text_vector(text: str, dim: int) -> torch.Tensor:
    """A deterministic stand-in for a sentence vector: a fixed function of the text."""
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


def build_cache(root: Path, splits: dict[str, list[str]] | None = None, dim: int = 16,
                shard_size: int = 8, encoder: dict | None = None, settings: dict | None = None) -> Path:
    """A sentence cache written through the real writer, without running an encoder.
    ``encoder`` / ``settings`` override fields of encoder.json / of each split's settings."""
    from sgdd.cache import SplitWriter, write_encoder_files

    tokenizer = build_tokenizer()
    splits = splits or {"train": SENTENCES[:24], "validation": SENTENCES[24:28], "test": SENTENCES[28:]}
    embed_dim = 24
    emb = torch.randn(len(tokenizer), embed_dim, generator=torch.Generator().manual_seed(1)) * 0.05
    write_encoder_files(root, tokenizer, emb, {
        "model": "tiny", "weights_sha256": "0" * 64, "tokenizer_sha256": "1" * 64,
        "vocab_size": len(tokenizer), "embed_dim": embed_dim, "hidden_size": dim,
        "pad_id": tokenizer.pad_token_id, "mask_id": tokenizer.mask_token_id,
        "bos_id": tokenizer.cls_token_id, "eos_id": tokenizer.sep_token_id, **(encoder or {}),
    })
    for split, texts in splits.items():
        split_settings = {"model": "tiny", "split": split, **(settings or {})}
        with SplitWriter(root / split, split_settings, {"vectors": ((dim,), "fp32")}) as w:
            for start in range(0, len(texts), shard_size):
                chunk = texts[start:start + shard_size]
                ids = [tokenizer(t)["input_ids"] for t in chunk]
                write_shard(w, 
                    {"id": [f"{split}-{start + i}" for i in range(len(chunk))], "text": chunk,
                     "input_ids": ids, "length": [len(x) for x in ids]},
                    {"vectors": torch.stack([text_vector(t, dim) for t in chunk])},
                )
            w.finalize()
    return root


def build_body_cache(root: Path, dim: int = 16) -> Path:
    """A sentence cache whose encoder/ also holds a tiny RoBERTa's weights and config (what
    ``sgdd collect`` stores so that a decoder body can start from the encoder)."""
    from transformers import RobertaModel

    from sgdd.cache import SplitWriter, write_encoder_files
    from sgdd.cache.writer import write_body_files

    encoder = RobertaModel.from_pretrained(str(build_encoder_dir(root.parent / f"{root.name}-encoder")))
    tokenizer = build_tokenizer()
    emb = encoder.get_input_embeddings().weight.detach()
    write_encoder_files(root, tokenizer, emb, {
        "model": "tiny-roberta", "weights_sha256": "2" * 64, "tokenizer_sha256": "1" * 64,
        "vocab_size": emb.shape[0], "embed_dim": emb.shape[1], "hidden_size": dim,
        "pad_id": tokenizer.pad_token_id, "mask_id": tokenizer.mask_token_id,
        "bos_id": tokenizer.cls_token_id, "eos_id": tokenizer.sep_token_id,
    })
    write_body_files(root, encoder.state_dict(), encoder.config.to_dict())
    for split, texts in {"train": SENTENCES[:24], "validation": SENTENCES[24:28], "test": SENTENCES[28:]}.items():
        with SplitWriter(root / split, {"model": "tiny-roberta", "split": split}, {"vectors": ((dim,), "fp32")}) as w:
            ids = [tokenizer(t)["input_ids"] for t in texts]
            write_shard(w, {"id": [f"{split}-{i}" for i in range(len(texts))], "text": texts, "input_ids": ids,
                           "length": [len(x) for x in ids]},
                          {"vectors": torch.stack([text_vector(t, dim) for t in texts])})
            w.finalize()
    return root


class _NotWeights:
    """An object whose unpickling would run code: what a loader must never unpickle."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def make_pickle_only(model_dir: Path) -> Path:
    """Turn a saved model directory into one whose weights exist only as a pickle holding, besides
    the tensors, an object that would run code when unpickled."""
    from safetensors.torch import load_file

    weights = load_file(str(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").unlink()
    torch.save({**weights, "x": _NotWeights()}, model_dir / "pytorch_model.bin")
    return model_dir
