"""Stage 1's config: ``CollectConfig`` (the ``collect`` section of a `sgdd run` file) and the
stored dtypes it accepts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sgdd.config import PRECISIONS, doc

DTYPES = ("bf16", "fp16", "fp32")


@dataclass
class CollectConfig:
    RUN_SECTION: ClassVar[str] = "collect"  # its section of a `sgdd run` file

    model: str = doc("roberta-base", "Hugging Face model id or local directory of a frozen encoder or causal LM "
                     "(a .gguf file also works).")
    model_kind: str = doc("auto", "auto (from the model's config), encoder (sentence vectors) or causal_lm "
                          "(EAGLE-style windows of hidden states).")
    gguf_file: str | None = doc(None, "GGUF weights file inside --model DIR (loaded dequantized to fp32).")
    dataset: str = doc("wiki", "Dataset name (wiki, qqp, mrpc, flickr8k), hf:NAME[:CONFIG] (a Hugging Face dataset, "
                       "streamed) or a local .txt/.jsonl/.csv/.parquet file.")
    data_dir: str | None = doc(None, "Local directory holding the dataset's split files (wiki: "
                               "{train,validation,test}.parquet; qqp/mrpc/flickr8k: <split>.jsonl).")
    text_field: str = doc("text", "Column holding the text in a local jsonl/csv/parquet file or hf: dataset.")
    source_field: str | None = doc(None, "Paraphrase pairs from a local file or hf: dataset: column of the source "
                                   "sentence (needs --target-field).")
    target_field: str | None = doc(None, "Paraphrase pairs: column of the target sentence (needs --source-field).")
    splits: list[str] = doc(
        [],
        "Splits to collect, 'NAME' or 'NAME:MAX' to cap one split's rows; none = every split "
        "the dataset has (a local file has one: train).",
    )
    out: str | None = doc(None, "Cache directory; default cache/<dataset name>.")
    pooling: str = doc("mean", "Sentence vector pooling: mean (over real tokens) or cls.")
    dtype: str = doc("fp16", "Stored dtype of vectors and hidden states: bf16, fp16 or fp32.")
    hidden_states: bool = doc(False, "Also store per-token hidden states [N, S, H] (always on for a causal LM).")
    layer: int = doc(-1, "Layer of the stored hidden states: -1 = last (for a causal LM: the final-norm output "
                     "that feeds the LM head); 0 = embeddings; L = output of block L.")
    min_words: int = doc(5, "Drop sentences with fewer words.")
    max_words: int = doc(40, "Drop sentences with more words.")
    max_tokens: int = doc(64, "Drop sentences longer than this many tokens (special tokens included).")
    max_samples: int | None = doc(None, "Cap on rows per split: sentences, pairs or windows (a NAME:MAX split spec wins).")
    sample_size: int = doc(512, "Causal LM: tokens per window.")
    stride: int = doc(256, "Causal LM: tokens between the starts of consecutive windows of one document.")
    generate: bool = doc(False, "Causal LM: collect on the model's own greedy continuation of each document "
                         "(self-distillation) instead of the document alone.")
    max_new_tokens: int = doc(128, "Causal LM with --generate: tokens generated per prompt (fewer if it ends).")
    batch_size: int | None = doc(None, "Sequences per forward pass; default 128 sentences (8 windows for a causal LM). "
                                           "With --generate, also the prompts generated together.")
    shard_size: int | None = doc(None, "Rows per committed shard; default 8192 (256 windows for a causal LM).")
    device: str = doc("auto", "auto, cpu, cuda or cuda:N (under torchrun: each rank its local GPU).")
    precision: str = doc("auto", "Encoder compute precision: auto (bf16 autocast where the hardware computes bf16 natively and faster: AMX / AVX-512 BF16 CPUs, bf16 GPUs; else fp32), fp32, bf16, fp16.")
    overwrite: bool = doc(False, "Replace an existing cache collected with other settings.")

    def problems(self) -> list[str]:
        """Every problem of this config, one short sentence each."""
        p: list[str] = []
        if self.pooling not in ("mean", "cls"):
            p.append(f"pooling must be mean or cls, got {self.pooling!r}")
        if self.dtype not in DTYPES:
            p.append(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.precision not in PRECISIONS:
            p.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0 < self.min_words <= self.max_words:
            p.append(f"need 0 < min_words <= max_words, got {self.min_words} and {self.max_words}")
        if self.max_tokens < 3:
            p.append(f"max_tokens must be at least 3, got {self.max_tokens}")
        for name in ("batch_size", "shard_size", "max_samples", "max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                p.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.model_kind not in ("auto", "encoder", "causal_lm"):
            p.append(f"model_kind must be auto, encoder or causal_lm, got {self.model_kind!r}")
        if self.sample_size < 2:
            p.append(f"sample_size must be at least 2, got {self.sample_size}")
        if not 1 <= self.stride <= self.sample_size:
            p.append(f"need 1 <= stride <= sample_size, got {self.stride} and {self.sample_size}")
        if (self.source_field is None) != (self.target_field is None):
            p.append("source_field and target_field go together (paraphrase pairs); give both or neither")
        if self.gguf_file is not None and not self.gguf_file.endswith(".gguf"):
            p.append(f"gguf_file must name a .gguf file, got {self.gguf_file!r}")
        return p
