"""Stage 3: decode a cache split with a trained decoder, score the outputs, write a report.

The cache's ``kind`` decides the task:

    sentences  reconstruction: sentence vector -> its sentence    BLEU, exact match, token accuracy, ...
    pairs      paraphrase: source vector -> the target sentence   BLEU to reference and to source, iBLEU, ...
    windows    MTP head: base-LM hidden state -> next L tokens     per-position accuracy, acceptance length

Writes into ``<run>/eval-<split>/`` (or ``cfg.out``):

- ``report.json``     per setting (one, or one per ``--sweep`` combination): metrics, decoding
                      settings, forward passes, throughput, peak memory, reranking gain, the
                      metrics after each refinement round; and which run / checkpoint / weights /
                      cache / split, the time input's schedule and the run's validation masked
                      accuracy (the figure comparable with Xiao 2026's 81.3%)
- ``report.md``       the same as tables, the plots, trajectories and a few samples
- ``samples.jsonl``   one line per row: id, reference, output (+ source, candidates); with a sweep
                      ``samples-<k>.jsonl`` per setting k = 1, 2, ...
- ``trajectories.txt`` / ``trajectory.png``  which token was committed at which step, for a few rows
- ``quality_vs_steps.png``, ``quality_vs_speed.png``  with a sweep
- ``eval-config.yaml`` the resolved EvalConfig (run, shards, split and out filled in)

The reference of a row is its cached token ids turned back into text by the same
``tokens_to_text`` as the outputs, so a decoder that reproduces the tokens scores 100.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import torch
import yaml

from sgdd.io import write_json_atomic
from sgdd.cache.identity import check_identity, encoder_identity
from sgdd.cache.reader import Cache, CacheSplit, open_cache
from sgdd.cache.views import cache_kind, next_block_view, sentence_view
from sgdd.decoding.lengths import LengthRule, pad_to, reference_lengths, resolve_length, top_lengths
from sgdd.decoding.maskgit import decode, share_steps, tokens_to_text
from sgdd.decoding.refine import refine, refine_sampling, rounds_summary
from sgdd.decoding.rerank import ReEncoder, cosines_to, rerank
from sgdd.decoding.samplers import Sampling
from sgdd.decoding.sweep import expand_sweep, label
from sgdd.decoding.trajectory import render_text, trajectory_of
from sgdd.metrics import compute_metrics, get_metric
from sgdd.models.checkpoint import MODEL_FILE, load_model
from sgdd.models.diffusion import IGNORE_INDEX, Schedule, get_schedule
from sgdd.config import save_yaml
from sgdd.pipeline.config import EvalConfig
from sgdd.errors import SgddError
from sgdd.log import progress
from sgdd.runtime import Precision, default_threads, pick_device, pick_precision, seed_everything

RUNS_DIR = Path("runs")
CHECKPOINTS = ("best", "last")
SPECIAL_KEYS = ("pad_id", "mask_id", "bos_id", "eos_id")

TASKS = {"sentences": "reconstruction", "pairs": "paraphrase", "windows": "mtp"}
DEFAULT_METRICS = {
    "sentences": ["bleu", "sentence_bleu", "exact_match", "token_accuracy", "bow_f1"],
    "pairs": ["bleu", "bleu_source", "ibleu", "diffuseq_bleu", "distinct_2", "bow_f1"],
    "windows": ["position_accuracy", "acceptance_length"],
}
# what each kind of cache can feed the metrics (see sgdd.metrics); "samples" comes from --candidates
PROVIDES = {"sentences": {"ids", "vectors"}, "pairs": {"ids", "sources", "vectors"}, "windows": {"ids"}}
NEED_TEXT = {
    "sources": "source sentences (a pair cache, kind 'pairs')",
    "vectors": "sentence vectors to compare with (a sentence or pair cache)",
    "samples": "several samples per row (--candidates 2 or more)",
    "ids": "token ids",
}


# --------------------------------------------------------------------------------------------
# resolving what to evaluate
# --------------------------------------------------------------------------------------------
def checkpoints_of(run_dir: Path) -> list[str]:
    """Names of the checkpoints (best, last) present in a run directory."""
    return [name for name in CHECKPOINTS if (run_dir / "checkpoints" / name / MODEL_FILE).is_file()]


def latest_run(root: Path = RUNS_DIR) -> Path:
    """The run under ``root`` whose newest checkpoint was written last."""
    runs = [d for d in root.iterdir() if d.is_dir() and checkpoints_of(d)] if root.is_dir() else []
    if not runs:
        raise SgddError(f"no trained run under {root}/ (train one with `sgdd train`, or pass --run)")

    def newest(d: Path) -> float:
        return max((d / "checkpoints" / name / MODEL_FILE).stat().st_mtime for name in checkpoints_of(d))

    return max(runs, key=newest)


def checkpoint_dir(run_dir: Path, name: str) -> Path:
    if not run_dir.is_dir():
        raise SgddError(f"run directory {run_dir} does not exist")
    present = checkpoints_of(run_dir)
    if not present:
        raise SgddError(f"run directory {run_dir} has no checkpoint (train it first with `sgdd train`)")
    if name not in present:
        raise SgddError(f"run directory {run_dir} has no {name!r} checkpoint (has: {', '.join(present)})")
    return run_dir / "checkpoints" / name


def default_split(cache: Cache) -> str:
    return "test" if "test" in cache.splits else "validation"


def check_encoder_fit(model, meta: dict, cache: Cache) -> list[str]:
    """Problems between the model and the cache's encoder files (tokenizer, vocabulary, special tokens)."""
    problems = []
    info = cache.encoder_info
    if info.get("vocab_size") != model.vocab_size:
        problems.append(f"its tokenizer has {info.get('vocab_size')} tokens, the model {model.vocab_size}")
    ours, theirs = meta.get("tokenizer_sha256"), info.get("tokenizer_sha256")
    if ours and theirs and ours != theirs:
        problems.append(f"its tokenizer (sha256 {theirs[:12]}...) is not the one the model was trained with ({ours[:12]}...)")
    special = meta.get("special_ids", {})
    for key in SPECIAL_KEYS:
        if key in special and key in info and special[key] != info[key]:
            problems.append(f"its {key} is {info[key]}, the model's {special[key]}")
    return problems


def check_fit(model, meta: dict, cache: Cache, split: CacheSplit) -> None:
    """Refuse a cache whose conditions, vocabulary, special tokens or kind differ from the model's."""
    kind, arrays = cache_kind(split), split.manifest["arrays"]
    problems = []
    if kind == "windows":
        hidden = arrays.get("hidden")
        if hidden is None:
            problems.append(f"split {split.dir} has no hidden states")
        elif hidden["row_shape"][-1] != model.cond_dim:
            problems.append(f"its hidden states have size {hidden['row_shape'][-1]}, the model takes {model.cond_dim}")
    else:
        vectors = arrays.get("vectors")
        if vectors is None:
            problems.append(f"split {split.dir} has no sentence vectors")
        elif tuple(vectors["row_shape"]) != (model.cond_dim,):
            problems.append(f"its vectors have shape {tuple(vectors['row_shape'])}, the model takes ({model.cond_dim},)")
    view = meta.get("view")
    if view == "next_block" and kind != "windows":
        problems.append(f"the run is an MTP head (next_block view), the split holds {kind}")
    if view == "sentence" and kind == "windows":
        problems.append("the run is a sentence decoder, the split holds LLM windows")
    problems += check_encoder_fit(model, meta, cache)
    if problems:
        raise SgddError(f"cache {cache.dir} does not fit the model: " + "; ".join(problems))


def load_checkpoint(ckpt: Path, device: torch.device):
    """The decoder of a checkpoint (its EMA weights when it has them) and its meta."""
    model, meta = load_model(ckpt)
    meta.setdefault("weights", "model")
    return model.to(device).eval(), meta


def training_noise(meta: dict, run_dir: Path) -> tuple[Schedule, str]:
    """The noise schedule the run was trained with, and where it was read: the checkpoint's
    ``diffusion`` entry, else the run's config.yaml, else the default (linear)."""
    entry, source = meta.get("diffusion"), "checkpoint"
    if not entry:
        path = run_dir / "config.yaml"
        try:
            entry = (yaml.safe_load(path.read_text()) or {}).get("diffusion") if path.is_file() else None
        except (OSError, yaml.YAMLError, AttributeError):
            entry = None
        source = "config.yaml"
    if not isinstance(entry, dict) or not entry.get("schedule"):
        return get_schedule("linear"), "default"
    return get_schedule(entry["schedule"], entry.get("kappa")), source


def validation_accuracy(run_dir: Path, step: int | None = None) -> dict | None:
    """The run's validation masked-token accuracy (teacher forced, at the training noise) from
    its metrics.jsonl, in percent: best, last and at ``step`` (the evaluated checkpoint). None
    when the run logged no validation."""
    path = run_dir / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("val_acc"), (int, float)):
                rows.append(row)
    if not rows:
        return None
    best = max(rows, key=lambda r: r["val_acc"])
    at = [r for r in rows if step is not None and r.get("step") == step]
    return {
        "best": 100.0 * best["val_acc"], "best_step": best.get("step"),
        "last": 100.0 * rows[-1]["val_acc"], "last_step": rows[-1].get("step"),
        "checkpoint": 100.0 * at[-1]["val_acc"] if at else None, "checkpoint_step": step,
        "label": "validation masked accuracy: teacher-forced accuracy at the masked positions, the figure "
                 "comparable with Xiao 2026's 81.3% (not the accuracy of a full decode)",
    }


# --------------------------------------------------------------------------------------------
# what one task decodes and scores against
# --------------------------------------------------------------------------------------------
@dataclass
class EvalData:
    """The rows of a split as one task sees them."""

    kind: str  # sentences, pairs or windows
    cond: torch.Tensor  # [N, D] float32 condition of each row
    ref_ids: torch.Tensor  # [N, L] reference token ids
    row_ids: list[str]
    refs: list[str]
    sources: list[str] | None  # pairs: the source sentences
    dropped: int  # rows left out (too long, or windows without a full block)
    length: int  # tokens decoded per row

    @property
    def unit(self) -> str:
        return "windows" if self.kind == "windows" else "sentences"

    def __len__(self) -> int:
        return self.ref_ids.shape[0]


def to_texts(ids: torch.Tensor, kind: str, tokenizer, special: dict) -> list[str]:
    """Token ids [N, L] -> texts: sentences are cut at their end token; MTP blocks are decoded as is."""
    if kind == "windows":
        return tokenizer.batch_decode(ids.tolist())
    return tokens_to_text(ids, tokenizer, special)


def load_sentences(split: CacheSplit, kind: str, length: int, special: dict, tokenizer,
                   max_samples: int | None, max_tokens: int | None = None) -> EvalData:
    view = sentence_view(split, length, special["pad_id"], max_samples, max_tokens)
    all_ids = split.column("id")
    rows = view.row_index.tolist()
    sources = None
    if kind == "pairs":
        source_ids = split.column("source_ids")
        sources = tokens_to_text([source_ids[i] for i in rows], tokenizer, special)
    return EvalData(kind, view.vectors, view.ids, [all_ids[i] for i in rows],
                    tokens_to_text(view.ids, tokenizer, special), sources, view.dropped, length)


def load_windows(split: CacheSplit, length: int, tokenizer, max_samples: int | None,
                 consistent: bool = False) -> EvalData:
    """Every position l of the windows whose block of ``length`` base-model tokens is complete;
    ``consistent``: labels after the chain leaves greedy are IGNORE_INDEX (as the run trained)."""
    lengths = torch.tensor(split.table.column("length").to_pylist(), dtype=torch.long)
    if lengths.numel() == 0:
        raise SgddError(f"split {split.dir} is empty")
    per_row = (lengths - length + 1).clamp_min(0).cumsum(0)  # windows in rows <= n
    rows = split.num_rows
    if max_samples is not None and int(per_row[-1]) > max_samples:
        rows = int(torch.searchsorted(per_row, torch.tensor(max_samples))) + 1
    view = next_block_view(split, length, "skip", max_rows=rows, consistent=consistent)
    n = len(view) if max_samples is None else min(len(view), max_samples)
    idx = torch.arange(n)
    batch = view.batch(idx)
    row, pos = view.locate(idx)
    ids = split.column("id")
    return EvalData("windows", batch.cond, batch.x0, [f"{ids[r]}@{p}" for r, p in zip(row.tolist(), pos.tolist())],
                    tokenizer.batch_decode([[t for t in r if t != IGNORE_INDEX] for r in batch.x0.tolist()]),
                    None, view.dropped, length)


def load_data(split: CacheSplit, model, meta: dict, special: dict, tokenizer, max_samples: int | None,
              max_tokens: int | None = None) -> EvalData:
    kind = cache_kind(split)
    if kind not in TASKS:
        raise SgddError(f"split {split.dir} has kind {kind!r}; sgdd eval knows {', '.join(TASKS)}")
    if kind == "windows":
        return load_windows(split, meta.get("block_length") or model.cfg.max_len, tokenizer, max_samples,
                            bool(meta.get("consistent_labels")))
    return load_sentences(split, kind, model.cfg.max_len, special, tokenizer, max_samples, max_tokens)


def metrics_for(cfg: EvalConfig, kind: str) -> list[str]:
    """The metrics of one setting: the asked ones, or the task's defaults (paraphrase adds
    self_bleu when several candidates are drawn; nltk's metrics only when nltk is installed).
    Refuses a metric the task cannot feed or whose package is missing."""
    names = list(cfg.metrics)
    if not names:  # the defaults leave out what an optional package missing here would compute
        names = DEFAULT_METRICS[kind] + (["self_bleu"] if kind == "pairs" and cfg.candidates > 1 else [])
        names = [n for n in names if get_metric(n).available()]
    provided = PROVIDES[kind] | ({"samples"} if cfg.candidates > 1 else set())
    for name in names:
        if not get_metric(name).available():
            raise SgddError(f"metric {name} needs the package {get_metric(name).package}: "
                            "pip install 'sgdd[paraphrase]'")
        missing = get_metric(name).needs - provided
        if missing:
            raise SgddError(f"metric {name} needs {', '.join(NEED_TEXT[m] for m in sorted(missing))}; "
                            f"this is a {TASKS[kind]} eval of a {kind!r} split")
    return names


def copy_source_floor(data: EvalData) -> dict[str, float] | None:
    """Pairs: the scores of outputting the source sentence unchanged, the floor a paraphrase
    model has to beat (copying already shares most words with a paraphrase). None otherwise."""
    if data.sources is None:
        return None
    names = [n for n in ("bleu", "diffuseq_bleu") if get_metric(n).available()]
    return compute_metrics(names, data.sources, data.refs)


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------
@dataclass
class Decoded:
    """One decode of every row with one sampling setting and seed."""

    ids: torch.Tensor  # [N, L] on CPU (padded with pad_id after a row's decoded length)
    calls: int  # batched forward calls
    passes_per_row: torch.Tensor  # [N] (with a length beam: over all of the row's lengths)
    seconds: float
    committed_at: torch.Tensor  # [K, L] of the first K rows (trajectories)
    lengths: torch.Tensor | None = None  # [N] positions decoded per row
    token_logp: torch.Tensor | None = None  # [N, L] log-probability of each token when committed
    tokens: int = 0  # positions decoded in all (every length of a beam counts)
    beam: dict | None = None  # with a length beam: how the lengths were chosen


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_rows(model, data: EvalData, sampling: Sampling, seed: int, batch_size: int, device: torch.device,
                precision: Precision, keep: int, desc: str = "decode", given: int = 0, noise: Schedule | None = None,
                lengths: torch.Tensor | None = None, pad_id: int = 0,
                judge: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Decoded:
    """Decode every row of ``data`` in batches of ``batch_size`` with one generator seeded ``seed``;
    the first ``given`` tokens of each row are taken from the reference.

    ``lengths``: positions to decode per row, [N] or [N, K] (K candidate lengths per row: the
    length beam); default ``data.length`` for all. Rows of equal length are decoded together and
    put back in order. With K > 1 each row keeps the length whose output scores best:
    ``judge(ids [M, L], rows [M]) -> [M]`` when given (the encoder's cosine), else the model's
    mean log-probability of its committed tokens."""
    generator = torch.Generator(device=device).manual_seed(seed)
    kwargs = dataclasses.asdict(sampling)
    N, L = len(data), data.length
    lengths = torch.full((N, 1), L, dtype=torch.long) if lengths is None else lengths.long().cpu()
    lengths = lengths[:, None] if lengths.dim() == 1 else lengths
    K = lengths.shape[1]
    flat = lengths.reshape(-1)  # [N*K]: row i's k-th length at i*K + k
    src = torch.arange(N).repeat_interleave(K)  # [N*K]
    ids = torch.full((N * K, L), pad_id, dtype=torch.long)
    committed = torch.zeros(N * K, L, dtype=torch.long)
    logp = torch.zeros(N * K, L)
    passes = torch.zeros(N * K, dtype=torch.long)
    calls = 0
    bar = progress(total=N * K, desc=desc, unit="seq", leave=False, logger="eval")
    _sync(device)
    start = time.perf_counter()
    for n in sorted(set(flat.tolist())):
        members = (flat == n).nonzero().squeeze(1)  # in row order
        for lo in range(0, members.numel(), batch_size):
            chunk = members[lo:lo + batch_size]
            rows = src[chunk]
            z = data.cond[rows].to(device)  # [B, D]
            prefix = data.ref_ids[rows, :given] if given else None  # [B, given]
            with precision.autocast():
                out, traj = decode(model, z, generator=generator, return_trajectory=True, length=n,
                                   prefix=prefix, noise=noise, **kwargs)
            ids[chunk, :n] = out.cpu()
            committed[chunk, :n] = traj.committed_at.cpu()
            if traj.token_logp is not None:
                logp[chunk, :n] = traj.token_logp.float().cpu()
            passes[chunk] = traj.passes_per_row.cpu()
            calls += traj.forward_passes
            bar.update(chunk.numel())
    beam = None
    pick = torch.zeros(N, dtype=torch.long)
    if K > 1:  # keep the best length of each row
        if judge is not None:
            scores, by = judge(ids, src).float(), "encoder cosine"
        else:
            decoded = committed > 0
            scores = (logp * decoded).sum(1) / decoded.sum(1).clamp_min(1)
            by = "model mean log-probability"
        pick = scores.view(N, K).argmax(1)
        beam = {"n": K, "by": by, "chosen_rank_share": [float((pick == k).float().mean()) for k in range(K)]}
    _sync(device)
    seconds = time.perf_counter() - start
    bar.close()
    chosen = torch.arange(N) * K + pick  # [N]
    return Decoded(ids[chosen], calls, passes.view(N, K).sum(1), seconds, committed[chosen][:keep],
                   flat[chosen], logp[chosen], int(flat.sum()), beam)


def candidate_sampling(cfg: EvalConfig, k: int) -> Sampling:
    """The sampling setting of candidate k: the candidate samplers in turn, else cfg's sampler."""
    sampling = Sampling.of(cfg)
    if cfg.candidate_samplers:
        sampling = dataclasses.replace(sampling, sampler=cfg.candidate_samplers[k % len(cfg.candidate_samplers)])
    return sampling.check()


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(MiB, what it measures): the CUDA allocator's peak since the last reset, or the process's
    peak resident set size on CPU (which never goes down, so it covers every earlier setting too)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS (ru_maxrss)"


# --------------------------------------------------------------------------------------------
# one setting: decode (N candidates), rerank, score
# --------------------------------------------------------------------------------------------
@dataclass
class Setting:
    """What one setting produced, for the report and the sample files."""

    result: dict
    hyps: list[str]
    ids: torch.Tensor  # [N, L]
    committed_at: torch.Tensor  # [K, L]
    candidates: list[list[str]] | None  # [K][N] texts of every candidate
    chosen: torch.Tensor | None  # [N]
    cos: torch.Tensor | None  # [K, N]
    lengths: torch.Tensor | None = None  # [N] positions decoded per row (before refinement)
    refined: tuple[list[str], torch.Tensor] | None = None  # (outputs before refinement, final cosine [N])
    traj_ids: torch.Tensor | None = None  # [K, L] the first K rows as decoded, when refinement changed ids


def decode_lengths(model, data: EvalData, rule: LengthRule, pad_id: int, batch_size: int, device: torch.device,
                   precision: Precision) -> torch.Tensor | None:
    """Positions to decode per row under ``rule``: None (max), [N] (predicted, oracle) or [N, K] (beam)."""
    if rule.mode == "max":
        return None
    if rule.mode == "oracle":
        return reference_lengths(data.ref_ids, pad_id, data.length)
    out = []
    for lo in range(0, len(data), batch_size):
        with precision.autocast():
            out.append(top_lengths(model, data.cond[lo:lo + batch_size].to(device), rule.beam).cpu())
    top = torch.cat(out) if out else torch.empty(0, rule.beam, dtype=torch.long)
    return top[:, 0] if rule.mode == "predicted" else top


def evaluate_setting(cfg: EvalConfig, changes: dict, model, data: EvalData, special: dict, tokenizer,
                     device: torch.device, precision: Precision, reencoder: ReEncoder | None,
                     noise: Schedule | None = None) -> Setting:
    names = metrics_for(cfg, data.kind)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pad_id = special.get("pad_id") or 0
    rule = resolve_length(cfg.length, model) if data.kind != "windows" else resolve_length("max", model)
    lengths = decode_lengths(model, data, rule, pad_id, cfg.batch_size, device, precision)

    def judge(cand_ids: torch.Tensor, cand_rows: torch.Tensor) -> torch.Tensor:
        vecs = reencoder.encode(to_texts(cand_ids, data.kind, tokenizer, special))
        return cosines_to([vecs], data.cond[cand_rows])[0]

    runs = [decode_rows(model, data, candidate_sampling(cfg, k), cfg.seed + k, cfg.batch_size, device, precision,
                        cfg.trajectories, desc=f"decode {label(changes)}" + (f" #{k + 1}" if cfg.candidates > 1 else ""),
                        given=cfg.given, noise=noise, lengths=lengths, pad_id=pad_id,
                        judge=judge if reencoder is not None else None)
            for k in range(cfg.candidates)]
    texts = [to_texts(r.ids, data.kind, tokenizer, special) for r in runs]

    # rerank: the candidate whose re-encoded vector is closest to the condition
    start = time.perf_counter()
    vectors = [reencoder.encode(t) for t in texts] if reencoder is not None else None
    rerank_seconds = time.perf_counter() - start if vectors is not None else 0.0
    cos = cosines_to(vectors, data.cond) if vectors is not None else None
    chosen = rerank(cos) if cfg.candidates > 1 else torch.zeros(len(data), dtype=torch.long)
    rows = torch.arange(len(data))
    ids = torch.stack([r.ids for r in runs])[chosen, rows]  # [N, L]
    hyps = [texts[k][i] for i, k in enumerate(chosen.tolist())]
    committed_at = torch.stack([r.committed_at for r in runs])[chosen[: cfg.trajectories], rows[: cfg.trajectories]]
    row_lengths = (torch.stack([r.lengths for r in runs])[chosen, rows]
                   if all(r.lengths is not None for r in runs) else None)

    def score(pred_ids, outs, out_vectors):
        return compute_metrics(names, outs, data.refs, pred_ids=pred_ids, ref_ids=data.ref_ids,
                               pad_id=special.get("pad_id"), bos_id=special.get("bos_id"),
                               eos_id=special.get("eos_id"), sources=data.sources,
                               samples=[list(s) for s in zip(*texts)] if cfg.candidates > 1 else None,
                               out_vectors=out_vectors, cond_vectors=data.cond, given=cfg.given)

    out_vectors = torch.stack(vectors)[chosen, rows] if vectors is not None else None
    metrics = score(ids, hyps, out_vectors)

    # refinement with the encoder as judge, metrics after every round
    refinement, refined, refine_seconds, refine_calls, traj_ids = None, None, 0.0, 0, None
    if cfg.refine == "encoder":
        start = time.perf_counter()
        confidence = torch.stack([r.token_logp if r.token_logp is not None else torch.zeros_like(r.ids, dtype=torch.float)
                                  for r in runs])[chosen, rows]

        def encode(cand_ids: torch.Tensor) -> torch.Tensor:
            return reencoder.encode(to_texts(cand_ids, data.kind, tokenizer, special))

        history = refine(model, data.cond.to(device), ids, row_lengths if row_lengths is not None
                         else torch.full((len(data),), data.length), confidence, encode,
                         rounds=cfg.refine_steps, candidates=cfg.refine_candidates,
                         sampling=refine_sampling(Sampling.of(cfg), cfg.refine_temperature), noise=noise,
                         seed=cfg.seed, batch_size=cfg.batch_size, eos_id=special.get("eos_id"),
                         autocast=precision.autocast)
        refine_seconds = time.perf_counter() - start
        refinement = rounds_summary(history)
        refine_calls = sum(r["forward_passes"] for r in refinement)
        before = hyps
        for summary, h in zip(refinement, history):
            outs = to_texts(h.ids, data.kind, tokenizer, special)
            summary["metrics"] = score(h.ids, outs, reencoder.encode(outs) if "encoder_cosine" in names else None)
        traj_ids = ids[: cfg.trajectories].clone()
        ids, hyps = history[-1].ids, to_texts(history[-1].ids, data.kind, tokenizer, special)
        metrics = refinement[-1]["metrics"]
        refined = (before, history[-1].cosine)

    seconds = sum(r.seconds for r in runs)
    peak, peak_kind = peak_memory(device)
    result = {
        "setting": label(changes),
        "changes": changes,
        "settings": {**dataclasses.asdict(Sampling.of(cfg)), "seed": cfg.seed, "candidates": cfg.candidates,
                     "candidate_samplers": list(cfg.candidate_samplers), "metrics": names, "length": str(rule),
                     "refine": cfg.refine, **({"refine_steps": cfg.refine_steps,
                                               "refine_candidates": cfg.refine_candidates,
                                               "refine_temperature": cfg.refine_temperature}
                                              if cfg.refine else {})},
        "metrics": metrics,
        "speed": {
            "forward_passes": sum(r.calls for r in runs) + refine_calls,
            "forward_passes_per_sequence": float(sum(r.passes_per_row.float().mean() for r in runs)),
            "decode_seconds": round(seconds, 4),
            "rerank_seconds": round(rerank_seconds, 4),
            "refine_seconds": round(refine_seconds, 4),
            "sequences_per_s": len(data) / max(seconds + refine_seconds
                                               + (rerank_seconds if cfg.candidates > 1 else 0), 1e-9),
            "tokens_per_s": sum(r.tokens for r in runs) / max(seconds, 1e-9),
            "peak_memory_mb": round(peak, 1),
            "peak_memory_kind": peak_kind,
        },
    }
    if row_lengths is not None and rule.mode != "max":
        ref_len = reference_lengths(data.ref_ids, pad_id, data.length)
        result["length"] = {"rule": str(rule), "mean_decoded": float(row_lengths.float().mean()),
                            "mean_reference": float(ref_len.float().mean()),
                            "exact_share": 100.0 * float((row_lengths == ref_len).float().mean()),
                            "beam": runs[0].beam}
    if refinement is not None:
        result["refinement"] = refinement
    if cfg.candidates > 1:
        first = score(runs[0].ids, texts[0], vectors[0] if vectors is not None else None)
        base = refinement[0]["metrics"] if refinement is not None else metrics
        result["candidates"] = {
            "n": cfg.candidates,
            "samplers": [candidate_sampling(cfg, k).sampler for k in range(cfg.candidates)],
            "chosen_share": [float((chosen == k).float().mean()) for k in range(cfg.candidates)],
            "cosine_first": float(cos[0].mean()) if cos is not None else None,
            "cosine_chosen": float(cos[chosen, rows].mean()) if cos is not None else None,
            "first": first,
            "reranked": base,
            "gain": {m: base[m] - first[m] for m in base},
        }
    return Setting(result, hyps, ids, committed_at, texts if cfg.candidates > 1 else None,
                   chosen if cfg.candidates > 1 else None, cos, row_lengths, refined, traj_ids)


# --------------------------------------------------------------------------------------------
# output files
# --------------------------------------------------------------------------------------------
def sample_rows(data: EvalData, s: Setting) -> list[dict]:
    rows = []
    for i, (row_id, ref, hyp) in enumerate(zip(data.row_ids, data.refs, s.hyps)):
        row = {"id": row_id, "reference": ref, "output": hyp}
        if data.sources is not None:
            row["source"] = data.sources[i]
        if s.refined is not None:
            row["cosine"] = round(float(s.refined[1][i]), 4)
            row["before_refinement"] = s.refined[0][i]
        elif s.cos is not None:
            row["cosine"] = round(float(s.cos[s.chosen[i] if s.chosen is not None else 0, i]), 4)
        if s.candidates is not None:
            row["candidates"] = [c[i] for c in s.candidates]
            row["chosen"] = int(s.chosen[i])
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def trajectories(data: EvalData, s: Setting, tokenizer, special: dict) -> list[tuple[str, object]]:
    """(title, TokenTrajectory) of the first rows of a setting."""
    eos, pad = (None, None) if data.kind == "windows" else (special.get("eos_id"), special.get("pad_id"))
    ids = s.ids if s.traj_ids is None else s.traj_ids  # the outputs as first decoded (before refinement)
    shown = []
    for i in range(s.committed_at.shape[0]):
        n = int(s.lengths[i]) if s.lengths is not None else s.committed_at.shape[1]
        row = ids[i]
        shown.append((f"{data.row_ids[i]}: {data.refs[i]}"[:110],
                      trajectory_of(row[:n], s.committed_at[i, :n], tokenizer, eos, pad)))
    return shown


def print_table(report: dict) -> None:
    click.echo(f"eval {report['run']} [{report['checkpoint']}, {report['weights']} weights] on {report['split']} "
               f"({report['task']}): {report['n']} {report['unit']}")
    for r in report["results"]:
        speed = r["speed"]
        scores = ", ".join(f"{k} {v:.2f}" for k, v in r["metrics"].items())
        click.echo(f"  {r['setting']}: {scores} | {speed['forward_passes_per_sequence']:.1f} passes/seq, "
                   f"{speed['sequences_per_s']:.1f} {report['unit']}/s")
        for x in r.get("refinement") or []:
            click.echo(f"    refinement round {x['round']}: cosine {x['cosine']:.4f}, "
                       + ", ".join(f"{k} {v:.2f}" for k, v in x["metrics"].items()))
    if report.get("copy_source"):
        click.echo("  copying the source (floor): " + ", ".join(f"{k} {v:.2f}" for k, v in report["copy_source"].items()))
    v = report.get("validation")
    if v:
        click.echo(f"  validation masked accuracy (comparable with Xiao 2026's 81.3%): best {v['best']:.2f}%, "
                   f"last {v['last']:.2f}%")


def write_report_files(out: Path, report: dict, data: EvalData, settings: list[Setting], tokenizer,
                       special: dict) -> None:
    """samples, trajectories, plots and report.md beside report.json."""
    from sgdd.reporting import plots, write_markdown

    many = len(settings) > 1
    for k, (s, result) in enumerate(zip(settings, report["results"]), start=1):
        name = f"samples-{k}.jsonl" if many else "samples.jsonl"
        write_jsonl(out / name, sample_rows(data, s))
        result["samples"] = name
    shown = trajectories(data, settings[0], tokenizer, special)
    text = "\n\n".join(render_text(traj, title) for title, traj in shown)
    if shown:
        (out / "trajectories.txt").write_text(text + "\n")
    metric = next(iter(report["results"][0]["metrics"]), None)
    pictures = {
        f"{metric} vs steps": plots.quality_vs_steps(report["results"], metric, out / "quality_vs_steps.png"),
        f"{metric} vs speed": plots.quality_vs_speed(report["results"], metric, out / "quality_vs_speed.png",
                                                     data.unit),
        "denoising trajectories": plots.trajectory_figure(shown[:3], out / "trajectory.png"),
    }
    report["plots_available"] = plots.plots_available()
    report["files"] = sorted(p.name for p in pictures.values() if p is not None)
    write_markdown(report, out, pictures, text, sample_rows(data, settings[0]))


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def run(cfg: EvalConfig) -> Path:
    """Decode ``cfg.split`` of the cache with the run's checkpoint, score it, write the report."""
    t0 = time.perf_counter()
    default_threads()
    grid = expand_sweep(cfg)  # every setting checked before anything is loaded
    run_dir = Path(cfg.run) if cfg.run else latest_run()
    ckpt = checkpoint_dir(run_dir, cfg.checkpoint)
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    model, meta = load_checkpoint(ckpt, device)

    cache = open_cache(cfg.shards or meta["cache"])
    split_name = cfg.split or default_split(cache)
    split = cache.split(split_name)
    check_fit(model, meta, cache, split)
    check_identity(meta, encoder_identity(cache, split_name), cache.dir, f"run {run_dir}", cfg.allow_foreign_cache)
    kind = cache_kind(split)
    for _, setting in grid:
        metrics_for(setting, kind)  # refuse a metric the task cannot feed before decoding
    special = {**{k: cache.encoder_info.get(k) for k in SPECIAL_KEYS}, **meta.get("special_ids", {})}
    tokenizer = cache.tokenizer()
    data = load_data(split, model, meta, special, tokenizer, cfg.max_samples, cfg.max_tokens)
    given = meta.get("given", 0) if cfg.given is None else cfg.given  # null: as the run was trained
    if given and (kind != "windows" or given >= data.length):
        raise SgddError(f"given={given} needs an MTP eval (a windows split) with blocks longer than that; "
                        f"this is a {TASKS[kind]} eval of {data.length}-token rows")
    cfg = dataclasses.replace(cfg, given=given)
    grid = [(changes, dataclasses.replace(s, given=given)) for changes, s in grid]
    for _, setting in grid:  # enough steps for the blocks of every setting; a length rule and refinement that fit
        share_steps(setting.steps, len(Sampling.of(setting).blocks(data.length)))
        if kind == "windows" and (setting.length not in (None, "max") or setting.refine):
            raise SgddError(f"--length {setting.length} and --refine need a sentence or pair split; "
                            "an MTP head decodes blocks of a fixed length")
        resolve_length(setting.length, model)
    needs_vectors = any(s.candidates > 1 or s.refine or "vectors" in get_metric(m).needs
                        for _, s in grid for m in metrics_for(s, kind))
    reencoder = ReEncoder(cache.encoder_info, device, precision, cfg.batch_size) if needs_vectors else None
    noise, noise_source = training_noise(meta, run_dir)

    seed_everything(cfg.seed)
    settings = [evaluate_setting(s, changes, model, data, special, tokenizer, device, precision, reencoder, noise)
                for changes, s in grid]

    out = Path(cfg.out) if cfg.out else run_dir / f"eval-{split_name}"
    out.mkdir(parents=True, exist_ok=True)
    first = settings[0].result
    report = {
        "run": str(run_dir),
        "checkpoint": cfg.checkpoint,
        "weights": meta["weights"],
        "cache": str(cache.dir),
        "split": split_name,
        "kind": kind,
        "task": TASKS[kind],
        "unit": data.unit,
        "n": len(data),
        "dropped": data.dropped,
        "device": str(device),
        "precision": precision.name,
        "batch_size": cfg.batch_size,
        # the first setting, at the top level
        "metrics": first["metrics"],
        "settings": first["settings"],
        "forward_passes": first["speed"]["forward_passes"],
        "forward_passes_per_sequence": first["speed"]["forward_passes_per_sequence"],
        "decode_seconds": first["speed"]["decode_seconds"],
        "sentences_per_s": first["speed"]["sequences_per_s"],
        "results": [s.result for s in settings],
        "copy_source": copy_source_floor(data),
        "time_input": {"schedule": noise.name, "kappa": noise.kappa if noise.name == "polynomial" else None,
                       "from": noise_source},
        "validation": validation_accuracy(run_dir, meta.get("step")),
        "wall_seconds": None,
    }
    resolved = dataclasses.replace(cfg, run=str(run_dir), shards=str(cache.dir), split=split_name, out=str(out))
    save_yaml(resolved, out / "eval-config.yaml")
    write_report_files(out, report, data, settings, tokenizer, special)
    report["wall_seconds"] = round(time.perf_counter() - t0, 4)
    write_json_atomic(out / "report.json", report)
    print_table(report)
    return out
