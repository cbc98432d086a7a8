"""What one kind of cache reads, computes and stores (``MODES``).

- ``sentences``: an encoder's sentence vectors (+ optional per-token hidden states);
- ``pairs``: paraphrase pairs, the source sentence's vector beside the target's tokens;
- ``windows``: a causal LM's hidden states and greedy next tokens over token windows
  (EAGLE-style data for the MTP head), optionally on its own continuations (``--generate``).

A mode turns a split's records into rows (``rows``) and encodes one shard of rows in
length-bucketed batches (``encode``); ``load_mode`` picks the mode and loads its model.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Iterator

import torch

from sgdd.cache import format as fmt
from sgdd.cache.writer import ShardBuilder, io_error
from sgdd.errors import SgddError
from sgdd.io import write_json_atomic
from sgdd.runtime import Precision
from sgdd.stages.collect.config import CollectConfig
from sgdd.stages.collect.ranks import BARRIER_TIMEOUT, CollectRanks
from sgdd.stages.collect.sources.base import Record, Source, count
from sgdd.stages.collect.sources.rows import DOCUMENT_CHUNK, document_chunks, pair_rows, sentence_rows, window_rows

SHARD_SIZES = {"sentences": 8192, "pairs": 8192, "windows": 256}  # default --shard-size per kind
BATCH_SIZES = {"sentences": 128, "pairs": 128, "windows": 8}  # default --batch-size per kind

def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (little padding), shortest first."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def columns(rows: list[dict], names: list[str]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in names}


class SentenceMode:
    """Sentence vectors [N, D] (+ hidden states [N, max_tokens, H]) from a frozen encoder."""

    kind = "sentences"
    ids_key = "input_ids"  # the tokens that are encoded
    rows_read_ahead = True  # rows() only reads and tokenizes: a thread may run it ahead of encode()

    def __init__(self, cfg: CollectConfig, model, source: Source):
        self.cfg, self.model, self.source = cfg, model, source
        limit = getattr(model, "max_positions", None)
        if limit is not None and cfg.max_tokens > limit:
            raise SgddError(f"--max-tokens {cfg.max_tokens} exceeds the encoder's {limit} positions; "
                            f"use --max-tokens {limit} or less")
        self.layer = cfg.layer if cfg.hidden_states else None
        self.shard_size = cfg.shard_size or SHARD_SIZES[self.kind]
        self.batch_size = cfg.batch_size or BATCH_SIZES[self.kind]

    def arrays(self) -> dict:
        out = {"vectors": ((self.model.hidden_size,), self.cfg.dtype)}
        if self.layer is not None:
            out["hidden"] = ((self.cfg.max_tokens, self.model.hidden_size), self.cfg.dtype)
        return out

    def settings(self, fingerprint: dict, precision: Precision) -> dict:
        cfg = self.cfg
        return {"kind": self.kind, "encoder": fingerprint, "pooling": cfg.pooling, "dtype": cfg.dtype,
                "precision": precision.name, "hidden_states": cfg.hidden_states, "layer": self.layer,
                "source": self.source.fingerprint,
                "filters": {"min_words": cfg.min_words, "max_words": cfg.max_words, "max_tokens": cfg.max_tokens},
                "shard_size": self.shard_size}

    def encoder_info(self, fingerprint: dict) -> tuple[dict, torch.Tensor, dict]:
        """encoder.json fields, the input embeddings, extra tensor files."""
        special = self.model.special_ids()
        emb = self.model.input_embeddings()
        return ({**fingerprint, **special, "kind": "encoder", "vocab_size": emb.shape[0], "embed_dim": emb.shape[1],
                 "hidden_size": self.model.hidden_size, "pooling": self.cfg.pooling}, emb, {})

    def body(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The encoder's weights and Hugging Face config (a decoder body can start from them)."""
        return self.model.model.state_dict(), self.model.model.config.to_dict()

    def rows(self, split: str, stats: dict, split_dir: Path, ranks: CollectRanks) -> Iterator[dict]:
        return sentence_rows(self.source.records(split, stats), self.model.tokenizer, self.cfg, stats)

    def encode(self, rows: list[dict], shard: ShardBuilder) -> dict[str, list]:
        """Vectors of every row, hidden states block by block (so memory stays one block)."""
        n, H = len(rows), self.model.hidden_size
        vectors = torch.empty(n, H)
        block = shard.block_rows("hidden") if self.layer is not None else n
        for b0 in range(0, n, block):
            part = rows[b0 : b0 + block]
            hidden = torch.zeros(len(part), self.cfg.max_tokens, H) if self.layer is not None else None
            for idx in length_batches([len(r[self.ids_key]) for r in part], self.batch_size):
                vec, hid = self.model.encode([part[i][self.ids_key] for i in idx], self.layer)  # [b, H], [b, S, H]
                vectors[[b0 + i for i in idx]] = vec
                if hidden is not None:
                    hidden[idx, : hid.shape[1]] = hid
            if hidden is not None:
                shard.write("hidden", b0, hidden)
        shard.write("vectors", 0, vectors)
        return columns(rows, shard.writer.schema.names)


class PairMode(SentenceMode):
    """Paraphrase pairs: the SOURCE sentence's vector; rows hold the target and source tokens."""

    kind = "pairs"
    ids_key = "source_ids"

    def rows(self, split: str, stats: dict, split_dir: Path, ranks: CollectRanks) -> Iterator[dict]:
        return pair_rows(self.source.records(split, stats), self.model.tokenizer, self.cfg, stats)


class WindowMode:
    """A causal LM over token windows: hidden states [N, sample_size, H] of ``layer`` and the
    greedy next-token prediction at every position, from one forward pass."""

    kind = "windows"

    def __init__(self, cfg: CollectConfig, model, source: Source):
        self.cfg, self.model, self.source = cfg, model, source
        model.check_layer(cfg.layer)
        if model.max_positions is not None and cfg.sample_size > model.max_positions:
            raise SgddError(f"--sample-size {cfg.sample_size} exceeds the model's {model.max_positions} positions")
        self.shard_size = cfg.shard_size or SHARD_SIZES[self.kind]
        self.batch_size = cfg.batch_size or BATCH_SIZES[self.kind]

    def arrays(self) -> dict:
        return {"hidden": ((self.cfg.sample_size, self.model.hidden_size), self.cfg.dtype)}

    def settings(self, fingerprint: dict, precision: Precision) -> dict:
        cfg = self.cfg
        return {"kind": self.kind, "encoder": fingerprint, "dtype": cfg.dtype, "precision": precision.name,
                "layer": cfg.layer, "source": self.source.fingerprint,
                "windows": {"sample_size": cfg.sample_size, "stride": cfg.stride, "generate": cfg.generate,
                            "max_new_tokens": cfg.max_new_tokens if cfg.generate else None},
                "shard_size": self.shard_size}

    def encoder_info(self, fingerprint: dict) -> tuple[dict, torch.Tensor, dict]:
        """The input embeddings with one extra row, the mask token a causal LM lacks (initialised
        to the mean embedding); the LM head as its own file, also when tied."""
        special = self.model.special_ids()
        emb = self.model.input_embeddings()
        base_vocab = emb.shape[0]
        special["mask_id"] = base_vocab
        emb = torch.cat([emb, emb.mean(0, keepdim=True)])  # [V + 1, E]
        head = self.model.output_weight()  # [V, H]
        info = {**fingerprint, **special, "kind": "causal_lm", "vocab_size": base_vocab + 1,
                "base_vocab_size": base_vocab, "embed_dim": emb.shape[1], "hidden_size": self.model.hidden_size,
                "num_layers": self.model.num_layers, "layer": self.cfg.layer, "tied_lm_head": self.model.tied,
                "lm_head_shape": list(head.shape)}
        return info, emb, {fmt.LM_HEAD_FILE: head}

    def body(self) -> None:
        return None  # a causal LM's body is not a bidirectional decoder body

    @property
    def rows_read_ahead(self) -> bool:
        return not self.cfg.generate  # generating runs the model (and the ranks' exchanges) inside rows()

    def rows(self, split: str, stats: dict, split_dir: Path, ranks: CollectRanks) -> Iterator[dict]:
        chunks = document_chunks(self.source.documents(split, stats), self.model.tokenizer, stats)
        if self.cfg.generate:
            chunks = Continuations(self, split_dir, ranks, stats).extend(chunks)
        return window_rows(chunks, self.model.tokenizer, self.cfg)

    def encode(self, rows: list[dict], shard: ShardBuilder) -> dict[str, list]:
        n, S, H = len(rows), self.cfg.sample_size, self.model.hidden_size
        outputs: list[list[int]] = [[] for _ in range(n)]
        block = shard.block_rows("hidden")
        for b0 in range(0, n, block):
            part = rows[b0 : b0 + block]
            hidden = torch.zeros(len(part), S, H)
            for idx in length_batches([r["length"] for r in part], self.batch_size):
                hid, nxt = self.model.forward([part[i]["input_ids"] for i in idx], self.cfg.layer)  # [b, s, H], [b, s]
                hidden[idx, : hid.shape[1]] = hid
                for j, i in enumerate(idx):
                    outputs[b0 + i] = nxt[j, : part[i]["length"]].tolist()
            shard.write("hidden", b0, hidden)
        return columns([{**r, "output_ids": o} for r, o in zip(rows, outputs)], shard.writer.schema.names)


class Continuations:
    """``--generate``: the model's greedy continuation of every document (the prompt, cut to
    sample_size tokens). Chunk c of the document stream is generated once, by rank
    c % world, and kept in ``<split>/generated/`` until the split is complete, so neither a
    resumed collect nor the other ranks generate it again. Chunks are read in groups that give
    every rank --batch-size prompts, and a rank generates the chunks it owns in a group together:
    a chunk holds fewer documents than a batch."""

    def __init__(self, mode: WindowMode, split_dir: Path, ranks: CollectRanks, stats: dict):
        self.mode, self.dir, self.ranks, self.stats = mode, split_dir / fmt.GENERATED_DIR, ranks, stats
        self.group = -(-mode.batch_size * ranks.world // DOCUMENT_CHUNK)  # chunks read before generating

    def extend(self, chunks: Iterator[list[tuple[Record, list[int]]]]) -> Iterator[list[tuple[Record, list[int]]]]:
        """The chunks with each document's tokens replaced by its prompt + continuation."""
        numbered = enumerate(chunks)
        while group := list(itertools.islice(numbered, self.group)):
            prompts = {c: self._prompts(chunk) for c, chunk in group}
            self._generate({c: p for c, p in prompts.items() if self.ranks.owns(c) and not self._path(c).is_file()})
            for c, chunk in group:
                conts = self._continuations(c, len(chunk))
                yield [(record, p + cont) for (record, _), p, cont in zip(chunk, prompts[c], conts)]

    def _path(self, c: int) -> Path:
        return self.dir / f"chunk-{c:05d}.json"

    def _prompts(self, chunk: list[tuple[Record, list[int]]]) -> list[list[int]]:
        size = self.mode.cfg.sample_size
        count(self.stats, "prompt_truncated", sum(len(ids) > size for _, ids in chunk))
        return [ids[:size] for _, ids in chunk]

    def _generate(self, prompts: dict[int, list[list[int]]]) -> None:
        """Continue the prompts of several chunks in batches of --batch-size; one file per chunk."""
        flat = [(c, j) for c, ps in prompts.items() for j in range(len(ps))]
        conts = {c: [[] for _ in ps] for c, ps in prompts.items()}
        for idx in length_batches([len(prompts[c][j]) for c, j in flat], self.mode.batch_size):
            batch = [flat[i] for i in idx]
            for (c, j), cont in zip(batch, self.mode.model.generate([prompts[c][j] for c, j in batch],
                                                                      self.mode.cfg.max_new_tokens)):
                conts[c][j] = cont
        try:
            self.dir.mkdir(exist_ok=True)
            for c, cs in conts.items():
                write_json_atomic(self._path(c), {"prompts": len(cs), "continuations": cs})
        except OSError as e:
            raise io_error(f"writing {self.dir}", e) from None

    def _continuations(self, c: int, n: int) -> list[list[int]]:
        """Chunk c's saved continuations (waiting for the rank that owns it)."""
        path = self._path(c)
        deadline = time.time() + BARRIER_TIMEOUT.total_seconds()
        while not path.is_file():
            if time.time() > deadline:
                raise SgddError(f"waited too long for {path} from rank {c % self.ranks.world}")
            time.sleep(0.1)
        saved = json.loads(path.read_text())
        if saved["prompts"] != n:
            raise SgddError(f"{path} continues {saved['prompts']} prompts, the source now gives {n}; "
                            "the source changed: pass --overwrite")
        return saved["continuations"]


MODES = {"sentences": SentenceMode, "pairs": PairMode, "windows": WindowMode}

def load_mode(cfg: CollectConfig, source: Source, device: torch.device, precision: Precision):
    """Pick the cache kind from the model (encoder or causal LM) and the source (pairs), load the model."""
    from sgdd.models.encoder import model_kind, resolve_model

    kind = cfg.model_kind if cfg.model_kind != "auto" else model_kind(resolve_model(cfg.model, cfg.gguf_file))
    if kind == "causal_lm":
        from sgdd.models.causal_lm import FrozenCausalLM

        if source.kind == "pairs":
            raise SgddError(f"dataset {source.name!r} holds paraphrase pairs; pairs need an encoder model, "
                            "a causal LM collects windows over text")
        return WindowMode(cfg, FrozenCausalLM(cfg.model, device, precision, cfg.gguf_file), source)
    if cfg.generate:
        raise SgddError("--generate needs a causal LM (--model-kind causal_lm); this model is an encoder")
    from sgdd.models.encoder import FrozenEncoder

    encoder = FrozenEncoder(cfg.model, device, precision, cfg.pooling)
    return MODES[source.kind](cfg, encoder, source)
