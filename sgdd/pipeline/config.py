"""Typed configs: nested dataclasses <-> YAML with strict keys and dotted CLI overrides.

Every field carries its documentation in a ``metadata={"help": ...}`` entry so that
``--help`` texts, YAML files and error messages speak of the same thing.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sgdd.pipeline.errors import SgddError


def doc(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help text (lists and dicts get a default factory)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


# --------------------------------------------------------------------------------------------
# Stage 1
# --------------------------------------------------------------------------------------------
@dataclass
class CollectConfig:
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


# --------------------------------------------------------------------------------------------
# Stage 2
# --------------------------------------------------------------------------------------------
@dataclass
class DecoderConfig:
    n_layers: int = doc(6, "Transformer blocks.")
    d_model: int | None = doc(512, "Hidden size; null = the cache's hidden size (the base model's, for an MTP head).")
    n_heads: int = doc(8, "Attention heads (d_model must be divisible by it).")
    mlp_ratio: float = doc(4.0, "MLP hidden size as a multiple of d_model.")
    max_len: int = doc(64, "Tokens per generated sentence (sentence view; the next-block view uses block_length).")
    conditioning: str = doc(
        "adaln",
        "How the condition vector enters: adaln (AdaLN-Zero: per-block shift/scale/gate from condition + time, "
        "gates start at 0; the default: it learned the condition far better than cross-attention in the "
        "ablations of RESULTS.md), cross (cross-attention to cond_tokens memory slots in every block, the seed's "
        "choice) or prefix (cond_tokens extra tokens prepended to the self-attention; the only choice with "
        "init_body encoder).",
    )
    cond_tokens: int = doc(4, "Memory slots (cross) or prefix tokens (prefix) the condition is projected to; adaln uses none.")
    tie_output: bool = doc(
        True,
        "Output layer tied to the input embeddings; false = a separate output matrix, initialised from "
        "the base model's LM head when the cache has one (lm_head.safetensors).",
    )
    dropout: float = doc(0.0, "Dropout in attention and MLP outputs.")
    cond_drop: float = doc(0.0, "Share of training samples whose condition is replaced by the learned null, so that "
                           "classifier-free guidance (eval cfg_scale) has an unconditional model; 0 = no guidance "
                           "(the seed used 0.1).")
    rope_theta: float = doc(10000.0, "RoPE base.")
    init_body: str = doc(
        "none",
        "none (a transformer trained from scratch, sized by the fields above) or encoder (the frozen encoder's "
        "own pretrained layers, stored in the cache by `sgdd collect`, become the decoder's body: its first "
        "n_layers layers, its hidden size and heads; the condition enters as cond_tokens prefix tokens "
        "(conditioning prefix) or as AdaLN-Zero shifts and scales of the body's norms (conditioning adaln), "
        "both from a small zero-initialised MLP; there is no time input).",
    )
    length_head: bool = doc(False, "Predict each sentence's token count from the condition (a small MLP); decoding "
                            "then generates exactly that many positions instead of max_len padded ones.")


@dataclass
class DiffusionConfig:
    schedule: str = doc("linear", "Noise schedule alpha(t): linear, cosine, polynomial (1 - t^kappa) or loglinear.")
    kappa: float | None = doc(None, "Exponent of the polynomial schedule (default 2); only with schedule polynomial.")
    loss_weight: str = doc(
        "ones",
        "Per-token loss weight: ones (plain cross-entropy; the default: lower variance than elbo with "
        "i.i.d. t, and it won the ablation of RESULTS.md), elbo (-alpha'/(1-alpha); 1/t for linear), path (ones plus "
        "Open-dLLM's exp(-l).detach()*l) or cart (Dream's context-adaptive token-level weights).",
    )
    cart_p: float | None = doc(None, "Geometric-distribution p of the cart weight (default 0.3); only with loss_weight cart.")
    time_eps: float = doc(1e-3, "t is drawn from U(time_eps, 1).")
    stratified: bool = doc(False, "Low-discrepancy times (MDLM): the n times of an optimizer step are "
                           "(u + i/n) mod 1 for one uniform u, spread evenly over (time_eps, 1) instead of i.i.d.")


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


@dataclass
class TrainConfig:
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


# --------------------------------------------------------------------------------------------
# Stage 3
# --------------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
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


@dataclass
class RunConfig:
    """`sgdd run`: the three stages from one file."""

    collect: CollectConfig = field(default_factory=CollectConfig, metadata={"help": "Stage 1."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Stage 2."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Stage 3."})


# The section of a `sgdd run` file that each stage's --config reads from such a file.
RUN_SECTIONS: dict[type, str] = {CollectConfig: "collect", TrainConfig: "train", EvalConfig: "eval"}


# --------------------------------------------------------------------------------------------
# dict / YAML conversion with strict keys
# --------------------------------------------------------------------------------------------
def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the few safe cases (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _coerce(value, arg, where, trial)
            if not trial:
                return out
        problems.append(f"{where}: expected {tp}, got {value!r}")
        return value
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return tp()
        return _from_dict(tp, value, where, problems)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {value!r}")
            return value
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            problems.append(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def _from_dict(cls: type, data: dict, where: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            problems.append(f"{where + '.' if where else ''}{key}: unknown key (valid: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], f"{where + '.' if where else ''}{f.name}", problems)
    return cls(**kwargs)


def from_dict(cls: type, data: dict | None) -> Any:
    """Build ``cls`` from a plain dict; every unknown key and wrong type is listed in one error."""
    problems: list[str] = []
    cfg = _from_dict(cls, data or {}, "", problems)
    if problems:
        raise SgddError(f"invalid {cls.__name__}: " + "; ".join(problems))
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def load_yaml(path: str | Path, cls: type) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SgddError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SgddError(f"config file {path} is not valid YAML: {e}".replace("\n", " ")) from None
    if data is not None and not isinstance(data, dict):
        raise SgddError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    section = RUN_SECTIONS.get(cls)
    if section and data and set(data) <= set(RUN_SECTIONS.values()):  # a `sgdd run` file: this stage's part
        data = run_section(data, section)
    return from_dict(cls, data)


def run_section(data: dict, section: str) -> dict:
    """One stage's section of a `sgdd run` file, linked to the stage before it as `sgdd run` links
    them: train reads the collected cache (collect.out), eval the trained run (train.out)."""
    out = dict(data.get(section) or {})
    before = {"train": ("shards", "collect"), "eval": ("run", "train")}.get(section)
    if before and out.get(before[0]) is None and (data.get(before[1]) or {}).get("out"):
        out[before[0]] = data[before[1]]["out"]
    return out


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of ``cfg`` with dotted keys (``model.d_model``) replaced."""
    data = to_dict(cfg)
    for key, value in overrides.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise SgddError(f"unknown config key {key!r}")
            node = node[p]
        if last not in node:
            raise SgddError(f"unknown config key {key!r}")
        node[last] = value
    return from_dict(type(cfg), data)


def diff_dicts(old: dict, new: dict, ignore: frozenset[str] = frozenset(), prefix: str = "") -> list[str]:
    """``key: old -> new`` for every differing leaf of two nested dicts (dotted keys in ``ignore``
    are left out): how refusals list what changed."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_dicts(a, b, ignore, f"{prefix}{key}.")
        elif a != b and f"{prefix}{key}" not in ignore:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def parse_set(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as YAML scalars (``3``, ``1e-4``, ``true``)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SgddError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:  # e.g. a !!python/object tag: never constructed
            reason = str(e).splitlines()[0]
            raise SgddError(f"--set {item!r}: the value is not a plain YAML scalar or list ({reason})") from None
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


# --------------------------------------------------------------------------------------------
# cross-field checks: every problem in one message
# --------------------------------------------------------------------------------------------
DTYPES = ("bf16", "fp16", "fp32")
INIT_BODIES = ("none", "encoder")
BATCHINGS = ("padded", "by_length")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _check(cfg: Any) -> list[str]:
    p: list[str] = []
    if isinstance(cfg, CollectConfig):
        if cfg.pooling not in ("mean", "cls"):
            p.append(f"pooling must be mean or cls, got {cfg.pooling!r}")
        if cfg.dtype not in DTYPES:
            p.append(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
        if cfg.precision not in PRECISIONS:
            p.append(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
        if not 0 < cfg.min_words <= cfg.max_words:
            p.append(f"need 0 < min_words <= max_words, got {cfg.min_words} and {cfg.max_words}")
        if cfg.max_tokens < 3:
            p.append(f"max_tokens must be at least 3, got {cfg.max_tokens}")
        for name in ("batch_size", "shard_size", "max_samples", "max_new_tokens"):
            if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
                p.append(f"{name} must be positive, got {getattr(cfg, name)}")
        if cfg.model_kind not in ("auto", "encoder", "causal_lm"):
            p.append(f"model_kind must be auto, encoder or causal_lm, got {cfg.model_kind!r}")
        if cfg.sample_size < 2:
            p.append(f"sample_size must be at least 2, got {cfg.sample_size}")
        if not 1 <= cfg.stride <= cfg.sample_size:
            p.append(f"need 1 <= stride <= sample_size, got {cfg.stride} and {cfg.sample_size}")
        if (cfg.source_field is None) != (cfg.target_field is None):
            p.append("source_field and target_field go together (paraphrase pairs); give both or neither")
        if cfg.gguf_file is not None and not cfg.gguf_file.endswith(".gguf"):
            p.append(f"gguf_file must name a .gguf file, got {cfg.gguf_file!r}")
    elif isinstance(cfg, DecoderConfig):
        if cfg.d_model is None:  # the cache's hidden size: checked when the decoder is built
            if cfg.n_heads < 1:
                p.append(f"model.n_heads must be positive, got {cfg.n_heads}")
        elif cfg.n_heads < 1 or cfg.d_model % cfg.n_heads:
            p.append(f"model.d_model ({cfg.d_model}) must be divisible by model.n_heads ({cfg.n_heads})")
        elif (cfg.d_model // cfg.n_heads) % 2:
            p.append(f"model head size d_model/n_heads = {cfg.d_model // cfg.n_heads} must be even for RoPE")
        for name in ("n_layers", "max_len", "cond_tokens"):
            if getattr(cfg, name) < 1:
                p.append(f"model.{name} must be positive, got {getattr(cfg, name)}")
        from sgdd.models.decoder import CONDITIONINGS

        if cfg.conditioning not in CONDITIONINGS:
            p.append(f"model.conditioning {cfg.conditioning!r} unknown (valid: {', '.join(CONDITIONINGS)})")
        if not 0 <= cfg.cond_drop < 1:
            p.append(f"model.cond_drop must be in [0, 1), got {cfg.cond_drop}")
        if not 0 <= cfg.dropout < 1:
            p.append(f"model.dropout must be in [0, 1), got {cfg.dropout}")
        if cfg.init_body not in INIT_BODIES:
            p.append(f"model.init_body {cfg.init_body!r} unknown (valid: {', '.join(INIT_BODIES)})")
        elif cfg.init_body == "encoder" and cfg.conditioning not in ("prefix", "adaln"):
            p.append(f"model.init_body encoder takes the condition as prefix tokens or AdaLN modulation of its norms: "
                     f"set model.conditioning prefix or adaln (got {cfg.conditioning!r})")
    elif isinstance(cfg, DiffusionConfig):
        from sgdd.models.diffusion import LOSS_WEIGHTS, SCHEDULES

        if cfg.schedule not in SCHEDULES:
            p.append(f"diffusion.schedule {cfg.schedule!r} unknown (valid: {', '.join(SCHEDULES)})")
        if cfg.loss_weight not in LOSS_WEIGHTS:
            p.append(f"diffusion.loss_weight {cfg.loss_weight!r} unknown (valid: {', '.join(LOSS_WEIGHTS)})")
        if cfg.kappa is not None and cfg.schedule != "polynomial":
            p.append(f"diffusion.kappa is for the polynomial schedule, not {cfg.schedule!r}")
        if cfg.kappa is not None and cfg.kappa <= 0:
            p.append(f"diffusion.kappa must be positive, got {cfg.kappa}")
        if cfg.cart_p is not None and cfg.loss_weight != "cart":
            p.append(f"diffusion.cart_p is for loss_weight cart, not {cfg.loss_weight!r}")
        if cfg.cart_p is not None and not 0 < cfg.cart_p <= 1:
            p.append(f"diffusion.cart_p must be in (0, 1], got {cfg.cart_p}")
        if not 0 < cfg.time_eps < 1:
            p.append(f"diffusion.time_eps must be in (0, 1), got {cfg.time_eps}")
    elif isinstance(cfg, OptimConfig):
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(cfg, name) < 1:
                p.append(f"optim.{name} must be positive, got {getattr(cfg, name)}")
        if cfg.warmup_steps < 0:
            p.append(f"optim.warmup_steps must be >= 0, got {cfg.warmup_steps}")
        for name in ("lr", "body_lr", "max_minutes"):
            if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
                p.append(f"optim.{name} must be positive, got {getattr(cfg, name)}")
    elif isinstance(cfg, TrainConfig):
        p += _check(cfg.model) + _check(cfg.diffusion) + _check(cfg.optim)
        if cfg.precision not in PRECISIONS:
            p.append(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
        for name in ("eval_every", "save_every", "log_every", "eval_batches"):
            if getattr(cfg, name) < 0:
                p.append(f"{name} must be >= 0, got {getattr(cfg, name)}")
        from sgdd.cache.views import BLOCK_TAILS, VIEWS
        from sgdd.pipeline.trackers import TRACKERS

        if cfg.view != "auto" and cfg.view not in VIEWS:
            p.append(f"view {cfg.view!r} unknown (valid: auto, {', '.join(VIEWS)})")
        if cfg.block_length < 1:
            p.append(f"block_length must be positive, got {cfg.block_length}")
        if cfg.batching not in BATCHINGS:
            p.append(f"batching {cfg.batching!r} unknown (valid: {', '.join(BATCHINGS)})")
        elif cfg.batching == "by_length" and not cfg.model.length_head:
            p.append("batching by_length trains no pad positions, so the length must come from a length head: "
                     "set model.length_head true")
        if cfg.given < 0:
            p.append(f"given must be >= 0, got {cfg.given}")
        if cfg.block_tail not in BLOCK_TAILS:
            p.append(f"block_tail {cfg.block_tail!r} unknown (valid: {', '.join(BLOCK_TAILS)})")
        if not 0 <= cfg.ema_decay < 1:
            p.append(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
        for name in cfg.report_to:
            if name not in TRACKERS:
                p.append(f"report_to {name!r} unknown (valid: {', '.join(TRACKERS)})")
    elif isinstance(cfg, EvalConfig):
        from sgdd.decoding.samplers import SAMPLERS, Sampling
        from sgdd.decoding.sweep import sweep_problems
        from sgdd.metrics import METRICS

        p += Sampling.of(cfg).problems()
        if cfg.checkpoint not in ("best", "last"):
            p.append(f"checkpoint must be best or last, got {cfg.checkpoint!r}")
        for m in cfg.metrics:
            if m not in METRICS:
                p.append(f"metric {m!r} unknown (valid: {', '.join(METRICS)})")
        if cfg.candidates < 1:
            p.append(f"candidates must be at least 1, got {cfg.candidates}")
        unknown = [s for s in cfg.candidate_samplers if s not in SAMPLERS]
        for name in unknown:
            p.append(f"candidate sampler {name!r} unknown (valid: {', '.join(SAMPLERS)})")
        used = {cfg.candidate_samplers[k % len(cfg.candidate_samplers)] for k in range(cfg.candidates)} \
            if cfg.candidate_samplers else {cfg.sampler}
        if cfg.candidates > 1 and not unknown and len(used) == 1 and cfg.sampler in SAMPLERS \
                and Sampling.of(dataclasses.replace(cfg, sampler=used.pop())).deterministic:
            p.append(f"candidates={cfg.candidates} would decode identical candidates: set temperature > 0, "
                     "alg_temp > 0, sampler random, or several candidate samplers")
        if cfg.trajectories < 0:
            p.append(f"trajectories must be >= 0, got {cfg.trajectories}")
        p += sweep_problems(cfg)
        if cfg.batch_size < 1:
            p.append(f"batch_size must be positive, got {cfg.batch_size}")
        if cfg.max_samples is not None and cfg.max_samples < 1:
            p.append(f"max_samples must be positive, got {cfg.max_samples}")
        if cfg.max_tokens is not None and cfg.max_tokens < 1:
            p.append(f"max_tokens must be positive, got {cfg.max_tokens}")
        if cfg.given is not None and cfg.given < 0:
            p.append(f"given must be >= 0, got {cfg.given}")
        from sgdd.decoding.lengths import length_problems

        p += length_problems(cfg.length)
        if cfg.refine not in (None, "encoder"):
            p.append(f"refine {cfg.refine!r} unknown (valid: encoder, or null for none)")
        if cfg.refine_steps < 1:
            p.append(f"refine_steps must be at least 1, got {cfg.refine_steps}")
        if cfg.refine_candidates < 1:
            p.append(f"refine_candidates must be at least 1, got {cfg.refine_candidates}")
        if cfg.refine_temperature < 0:
            p.append(f"refine_temperature must be >= 0, got {cfg.refine_temperature}")
        if cfg.precision not in PRECISIONS:
            p.append(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    elif isinstance(cfg, RunConfig):
        p += _check(cfg.collect) + _check(cfg.train) + _check(cfg.eval)
    return p


def validate(cfg: Any) -> None:
    problems = _check(cfg)
    if problems:
        raise SgddError(f"invalid {type(cfg).__name__}: " + "; ".join(problems))
