"""Typed configs: nested dataclasses <-> YAML with strict keys and dotted CLI overrides.

Every field carries its documentation in a ``metadata={"help": ...}`` entry so that
``--help`` texts, YAML files and error messages speak of the same thing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from sgdd.config import PRECISIONS, doc
from sgdd.models.decoder import DecoderConfig
from sgdd.models.diffusion import DiffusionConfig
from sgdd.stages.collect.config import CollectConfig


BATCHINGS = ("padded", "by_length")


# --------------------------------------------------------------------------------------------
# Stage 2
# --------------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    lr: float = doc(3e-4, "Peak learning rate.")
    min_lr_ratio: float = doc(0.1, "Final learning rate as a share of the peak (cosine decay).")
    weight_decay: float = doc(0.01, "AdamW weight decay (not applied to norms, biases, embeddings).")
    beta1: float = doc(0.9, "AdamW beta1.")
    beta2: float = doc(0.98, "AdamW beta2.")
    warmup_steps: int = doc(200, "Linear warmup, in optimizer steps.")
    max_steps: int = doc(10000, "Optimizer steps in the whole run.")
    batch_size: int = doc(64, "Samples per micro-batch and process (under torchrun the step sees batch_size x processes x grad_accum).")
    grad_accum: int = doc(1, "Micro-batches per optimizer step.")
    grad_clip: float = doc(1.0, "Clip the global gradient norm once per optimizer step (0 = off).")
    body_lr: float | None = doc(None, "Peak learning rate of the pretrained body (model.init_body: encoder) and "
                                "its embeddings; null = lr. The new weights (prefix MLP, heads) use lr.")
    max_minutes: float | None = doc(None, "Wall-time budget of the run in minutes (resumed runs count their earlier "
                                    "time): training stops when it is spent, and the cosine LR decay runs over the "
                                    "budget instead of max_steps (which still caps the steps).")

    def problems(self) -> list[str]:
        """Every problem of this config, one short sentence each."""
        p: list[str] = []
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                p.append(f"optim.{name} must be positive, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            p.append(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("lr", "body_lr", "max_minutes"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                p.append(f"optim.{name} must be positive, got {getattr(self, name)}")
        return p



@dataclass
class TrainConfig:
    RUN_SECTION: ClassVar[str] = "train"  # its section of a `sgdd run` file

    shards: str = doc("cache/wiki", "Cache directory written by `sgdd collect`.")
    out: str | None = doc(None, "Run directory; default runs/<name>.")
    name: str | None = doc(None, "Run name; default the cache directory's name.")
    train_split: str = doc("train", "Cache split to train on.")
    val_split: str | None = doc("validation", "Cache split for validation loss (null = none).")
    model: DecoderConfig = field(default_factory=DecoderConfig, metadata={"help": "Decoder size."})
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig, metadata={"help": "Forward process."})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "Optimizer and schedule."})
    precision: str = doc("auto", "auto (bf16 autocast where the hardware computes bf16 natively and faster: AMX / AVX-512 BF16 CPUs, bf16 GPUs; else fp32), fp32, bf16, fp16.")
    device: str = doc("auto", "auto, cpu, cuda or cuda:N.")
    compile: bool = doc(False, "Compile the decoder's forward with torch.compile (inductor; needs a C compiler on "
                        "CPU). Off by default: `python -m bench --only precision` measures whether it wins on a machine.")
    seed: int = doc(0, "Seed for initialisation, data order and noise.")
    eval_every: int = doc(500, "Validation loss every N optimizer steps (0 = only at the end).")
    eval_batches: int = doc(20, "Micro-batches per validation.")
    save_every: int = doc(500, "Write the 'last' checkpoint every N optimizer steps.")
    log_every: int = doc(20, "Append to metrics.jsonl every N optimizer steps.")
    max_train_samples: int | None = doc(None, "Use only the first N rows of the training split.")
    resume: bool = doc(False, "Continue from the run directory's last checkpoint.")
    view: str = doc(
        "auto",
        "What the decoder learns from the cache: sentence (sentence vector -> its tokens), next_block "
        "(base-LM hidden state h_l -> the base model's next block_length tokens: the MTP head), or auto "
        "(next_block for a windows cache, else sentence).",
    )
    batching: str = doc(
        "padded",
        "Sentence view: padded (every sentence padded to model.max_len, pad positions scored like tokens) or "
        "by_length (batches of sentences of one length, no padding computed; needs model.length_head, which "
        "learns the length instead).",
    )
    block_length: int = doc(4, "Next-block view: tokens per block L (the head predicts t_l .. t_{l+L-1}).")
    given: int = doc(0, "Next-block view: the first N tokens of each block are never masked nor scored, "
                     "because they are known at inference (1 = the base model's own next token t_l, which its "
                     "LM head computes with h_l; EAGLE feeds it to its draft head too). sgdd eval follows it.")
    block_tail: str = doc(
        "skip",
        "Next-block view, positions whose block runs past the window's end: skip them, or ignore (train "
        "on the tokens that exist; the missing ones are mask tokens that are never scored).",
    )
    consistent_labels: bool | None = doc(
        None,
        "Next-block view: stop scoring a block after its first position whose label chain leaves greedy "
        "(output_ids[l+k-1] != input_ids[l+k]), since a greedy verifier never sees the labels after it. "
        "null = on for a windows cache collected without --generate, off for one with it.",
    )
    init_from: str | None = doc(None, "Start from the weights of this run (its best checkpoint, EMA if saved) or checkpoint directory.")
    allow_foreign_cache: bool = doc(False, "Resume or --init-from with a cache whose encoder identity (weights, "
                                    "tokenizer, pooling, layer, stored dtype, precision) differs from the run's.")
    ema_decay: float = doc(0.0, "Keep an exponential moving average of the weights (e.g. 0.999; 0 = off); eval uses it.")
    report_to: list[str] = doc([], "Also log to tensorboard and/or wandb (metrics.jsonl is always written).")

    def problems(self) -> list[str]:
        """Every problem of this config, one short sentence each."""
        p = self.model.problems() + self.diffusion.problems() + self.optim.problems()
        if self.precision not in PRECISIONS:
            p.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("eval_every", "save_every", "log_every", "eval_batches"):
            if getattr(self, name) < 0:
                p.append(f"{name} must be >= 0, got {getattr(self, name)}")
        from sgdd.cache.views import BLOCK_TAILS, VIEWS
        from sgdd.pipeline.trackers import TRACKERS

        if self.view != "auto" and self.view not in VIEWS:
            p.append(f"view {self.view!r} unknown (valid: auto, {', '.join(VIEWS)})")
        if self.block_length < 1:
            p.append(f"block_length must be positive, got {self.block_length}")
        if self.batching not in BATCHINGS:
            p.append(f"batching {self.batching!r} unknown (valid: {', '.join(BATCHINGS)})")
        elif self.batching == "by_length" and not self.model.length_head:
            p.append("batching by_length trains no pad positions, so the length must come from a length head: "
                     "set model.length_head true")
        if self.given < 0:
            p.append(f"given must be >= 0, got {self.given}")
        if self.block_tail not in BLOCK_TAILS:
            p.append(f"block_tail {self.block_tail!r} unknown (valid: {', '.join(BLOCK_TAILS)})")
        if not 0 <= self.ema_decay < 1:
            p.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in self.report_to:
            if name not in TRACKERS:
                p.append(f"report_to {name!r} unknown (valid: {', '.join(TRACKERS)})")
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
