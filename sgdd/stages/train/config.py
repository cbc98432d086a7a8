"""Stage 2's config: ``TrainConfig`` (the ``train`` section of a `sgdd run` file, the options of
`sgdd train`) and its optimizer part ``OptimConfig``; each lists its own problems."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from sgdd.cache.views import BLOCK_TAILS, VIEWS
from sgdd.config import PRECISIONS, doc
from sgdd.models.decoder import DecoderConfig
from sgdd.models.diffusion import DiffusionConfig
from sgdd.stages.train.trackers import TRACKERS

BATCHINGS = ("padded", "by_length")


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
    freeze_embeddings: bool = doc(False, "Keep the token embeddings (and the output matrix tied to them) at their "
                                  "pretrained values: each step skips the vocabulary-sized weight gradient, one of "
                                  "the output layer's three matrix products, and its optimizer update.")
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
