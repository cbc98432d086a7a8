"""Typed configs: nested dataclasses <-> YAML with strict keys and dotted CLI overrides.

Every field carries its documentation in a ``metadata={"help": ...}`` entry so that
``--help`` texts, YAML files and error messages speak of the same thing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from sgdd.config import PRECISIONS, doc
from sgdd.stages.train.config import TrainConfig


DTYPES = ("bf16", "fp16", "fp32")


# --------------------------------------------------------------------------------------------
# Stage 1
# --------------------------------------------------------------------------------------------
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
    batch_size: int | None = doc(None, "Sequences per forward pass; default 128 sentences (8 windows for a causal LM).")
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



# --------------------------------------------------------------------------------------------
# Stage 3
# --------------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    RUN_SECTION: ClassVar[str] = "eval"  # its section of a `sgdd run` file

    run: str | None = doc(None, "Run directory; default the most recently modified one under runs/.")
    shards: str | None = doc(None, "Cache directory; default the one the run was trained on.")
    allow_foreign_cache: bool = doc(False, "Use a cache whose encoder identity (weights, tokenizer, pooling, "
                                    "layer, stored dtype, precision) differs from the one the run was trained on.")
    split: str | None = doc(None, "Split to decode; default test if the cache has it, else validation.")
    checkpoint: str = doc("best", "Checkpoint to load: best or last.")
    sampler: str = doc(
        "maskgit_plus",
        "Sampler: maskgit_plus (most probable first), random (Dream's origin), entropy, topk_margin, "
        "llada (low-confidence remasking in blocks) or threshold (Fast-dLLM: everything above tau).",
    )
    steps: int = doc(16, "Decoding steps: the most forward passes per sequence (threshold may need fewer).")
    schedule: str = doc("cosine", "Unmasking schedule, how many tokens stay masked after each step: cosine, "
                                  "linear, square, cubic or sqrt.")
    block_length: int | None = doc(None, "Semi-autoregressive blocks of N tokens, decoded left to right "
                                         "(null = the sampler's default: one block; llada 8).")
    tau: float = doc(0.9, "threshold sampler: commit every position whose probability reaches tau, in (0, 1].")
    cfg_scale: float = doc(0.0, "Classifier-free guidance w: p = p_c + w (p_c - p_u).")
    temperature: float = doc(0.0, "Sampling temperature (0 = greedy).")
    top_k: int = doc(0, "Sample among the k most likely tokens (0 = all).")
    top_p: float = doc(1.0, "Sample within the smallest set of most likely tokens holding this probability (1 = all).")
    alg_temp: float = doc(0.0, "Randomness in the commit order: positions drawn in proportion to "
                               "softmax(confidence / alg_temp) (0 = strictly most confident first).")
    candidates: int = doc(1, "Decode N candidates per row (seeds seed..seed+N-1, or the candidate samplers) and "
                             "keep the one whose re-encoded vector is closest to the condition (loads the encoder).")
    candidate_samplers: list[str] = doc([], "Samplers of the candidates, used in turn (default: sampler for all).")
    metrics: list[str] = doc([], "Metrics to report; none = the task's defaults (see README).")
    sweep: list[str] = doc([], "KEY=V1,V2,...: evaluate once per value (several: every combination), e.g. "
                               "steps=4,8,16,32 or sampler=maskgit_plus,threshold.")
    trajectories: int = doc(3, "Rows whose denoising trajectory (which token was committed at which step) "
                               "goes into the report.")
    max_samples: int | None = doc(None, "Decode at most N rows of the split (windows of an MTP cache).")
    max_tokens: int | None = doc(None, "Sentences: score only the rows of at most N tokens (special tokens "
                                 "included) among those read; the decoder still generates max_len tokens.")
    given: int | None = doc(None, "MTP head: the first N tokens of each block are given, not drafted (1 = the "
                            "base model's own next token, which its LM head computes in the pass that made "
                            "h_l); position_accuracy and acceptance_length score the drafted positions. "
                            "null = as the run was trained (0 unless it set given).")
    length: str | None = doc(None, "Sentences: positions decoded per row. max = the model's max_len (it writes the "
                             "end token and padding itself); predicted = the length head's most likely length; "
                             "oracle = the reference's length; beam:N = the N most likely lengths decoded, the best "
                             "kept by the model's mean log-probability (by the encoder's cosine when it is loaded). "
                             "null = predicted when the model has a length head, else max.")
    refine: str | None = doc(None, "encoder: after decoding, improve each output with the frozen encoder as judge "
                             "(remask the least confident tokens, re-decode several candidates, keep one only "
                             "if it raises the cosine to the condition; loads the encoder). null = off.")
    refine_steps: int = doc(3, "Refinement rounds with --refine encoder (metrics are reported after each).")
    refine_candidates: int = doc(8, "Candidates per row and refinement round: candidate c remasks a growing "
                                    "number of the least confident tokens (up to half of them).")
    refine_temperature: float = doc(0.7, "Sampling temperature of the re-decoded tokens in refinement (0 = greedy; "
                                         "the seed makes it reproducible).")
    batch_size: int = doc(128, "Sequences decoded together.")
    precision: str = doc("auto", "auto, fp32, bf16, fp16.")
    device: str = doc("auto", "auto, cpu, cuda or cuda:N.")
    seed: int = doc(0, "Seed for sampling.")
    out: str | None = doc(None, "Report directory; default <run>/eval-<split>.")

    def problems(self) -> list[str]:
        """Every problem of this config, one short sentence each."""
        p: list[str] = []
        from sgdd.decoding.samplers import SAMPLERS, Sampling
        from sgdd.decoding.sweep import sweep_problems
        from sgdd.metrics import METRICS

        p += Sampling.of(self).problems()
        if self.checkpoint not in ("best", "last"):
            p.append(f"checkpoint must be best or last, got {self.checkpoint!r}")
        for m in self.metrics:
            if m not in METRICS:
                p.append(f"metric {m!r} unknown (valid: {', '.join(METRICS)})")
        if self.candidates < 1:
            p.append(f"candidates must be at least 1, got {self.candidates}")
        unknown = [s for s in self.candidate_samplers if s not in SAMPLERS]
        for name in unknown:
            p.append(f"candidate sampler {name!r} unknown (valid: {', '.join(SAMPLERS)})")
        used = {self.candidate_samplers[k % len(self.candidate_samplers)] for k in range(self.candidates)} \
            if self.candidate_samplers else {self.sampler}
        if self.candidates > 1 and not unknown and len(used) == 1 and self.sampler in SAMPLERS \
                and Sampling.of(dataclasses.replace(self, sampler=used.pop())).deterministic:
            p.append(f"candidates={self.candidates} would decode identical candidates: set temperature > 0, "
                     "alg_temp > 0, sampler random, or several candidate samplers")
        if self.trajectories < 0:
            p.append(f"trajectories must be >= 0, got {self.trajectories}")
        p += sweep_problems(self)
        if self.batch_size < 1:
            p.append(f"batch_size must be positive, got {self.batch_size}")
        if self.max_samples is not None and self.max_samples < 1:
            p.append(f"max_samples must be positive, got {self.max_samples}")
        if self.max_tokens is not None and self.max_tokens < 1:
            p.append(f"max_tokens must be positive, got {self.max_tokens}")
        if self.given is not None and self.given < 0:
            p.append(f"given must be >= 0, got {self.given}")
        from sgdd.decoding.lengths import length_problems

        p += length_problems(self.length)
        if self.refine not in (None, "encoder"):
            p.append(f"refine {self.refine!r} unknown (valid: encoder, or null for none)")
        if self.refine_steps < 1:
            p.append(f"refine_steps must be at least 1, got {self.refine_steps}")
        if self.refine_candidates < 1:
            p.append(f"refine_candidates must be at least 1, got {self.refine_candidates}")
        if self.refine_temperature < 0:
            p.append(f"refine_temperature must be >= 0, got {self.refine_temperature}")
        if self.precision not in PRECISIONS:
            p.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        return p



@dataclass
class RunConfig:
    """`sgdd run`: the three stages from one file."""

    collect: CollectConfig = field(default_factory=CollectConfig, metadata={"help": "Stage 1."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Stage 2."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Stage 3."})

    def problems(self) -> list[str]:
        """Every problem of this config, one short sentence each."""
        p = self.collect.problems() + self.train.problems() + self.eval.problems()
        return p
