"""Checking outputs against the frozen encoder: re-encode decoded texts and compare their vectors
with the condition vectors (vec2text's idea of verifying against the encoder, without a trained
corrector). Only evaluation loads the encoder; decoding never needs it."""

from __future__ import annotations

from typing import Sequence

import torch

from sgdd.metrics import cosine
from sgdd.errors import SgddError
from sgdd.runtime import Precision


class ReEncoder:
    """The encoder named in a cache's ``encoder/encoder.json``, with the cache's pooling."""

    def __init__(self, encoder_info: dict, device: torch.device, precision: Precision, batch_size: int = 128):
        from sgdd.models.encoder import FrozenEncoder

        name = encoder_info.get("model")
        if not name:
            raise SgddError("the cache's encoder.json names no model, so outputs cannot be re-encoded")
        try:
            self.encoder = FrozenEncoder(name, device, precision, encoder_info.get("pooling", "mean"))
        except SgddError as e:
            raise SgddError(f"re-encoding outputs (encoder_cosine, --candidates) needs the cache's encoder: {e}") from None
        vocab = encoder_info.get("vocab_size")
        if vocab is not None and len(self.encoder.tokenizer) > vocab:
            raise SgddError(f"encoder {name!r} has {len(self.encoder.tokenizer)} tokens, the cache {vocab}: "
                            "it is not the encoder the cache was collected with")
        limit = getattr(self.encoder.model.config, "max_position_embeddings", 512)
        self.max_tokens = max(8, min(512, limit - 2))
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Sentence vectors [N, D] (float32, CPU) of ``texts``, batched by length."""
        ids = self.encoder.tokenizer(list(texts), truncation=True, max_length=self.max_tokens)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = [None] * len(ids)
        for lo in range(0, len(order), self.batch_size):
            chunk = order[lo:lo + self.batch_size]
            vectors, _ = self.encoder.encode([ids[i] for i in chunk])
            for i, v in zip(chunk, vectors):
                out[i] = v
        return torch.stack(out) if out else torch.empty(0)


def rerank(cosines: torch.Tensor) -> torch.Tensor:
    """The candidate closest to the condition per row: cosines [K, N] -> index [N] (ties: the
    earliest candidate)."""
    return cosines.argmax(0)


def cosines_to(vectors: list[torch.Tensor], cond: torch.Tensor) -> torch.Tensor:
    """Cosine of each candidate's vectors [N, D] with the conditions [N, D] -> [K, N]."""
    return torch.stack([cosine(v, cond) for v in vectors])
