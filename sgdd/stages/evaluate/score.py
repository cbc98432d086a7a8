"""One setting of an eval: decode N candidates, rerank them, refine, score; the metrics a task
can feed."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from sgdd.cache.views import KIND_TASK
from sgdd.decoding.lengths import reference_lengths, resolve_length
from sgdd.decoding.maskgit import special_token_ids
from sgdd.decoding.refine import refine, refine_sampling, rounds_summary
from sgdd.decoding.rerank import ReEncoder, cosines_to, rerank
from sgdd.decoding.samplers import Sampling
from sgdd.errors import SgddError
from sgdd.metrics import compute_metrics, get_metric
from sgdd.models.diffusion import Schedule
from sgdd.runtime import Precision
from sgdd.stages.evaluate.config import EvalConfig
from sgdd.stages.evaluate.data import EvalData, to_texts
from sgdd.stages.evaluate.batches import candidate_sampling, decode_lengths, decode_rows, peak_memory
from sgdd.reporting.labels import label

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
                            f"this is a {KIND_TASK[kind]} eval of a {kind!r} split")
    return names


def copy_source_floor(data: EvalData) -> dict[str, float] | None:
    """Pairs: the scores of outputting the source sentence unchanged, the floor a paraphrase
    model has to beat (copying already shares most words with a paraphrase). None otherwise."""
    if data.sources is None:
        return None
    names = [n for n in ("bleu", "diffuseq_bleu") if get_metric(n).available()]
    return compute_metrics(names, data.sources, data.refs)


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
                        given=cfg.given, noise=noise, lengths=lengths, pad_id=pad_id, exempt=special_token_ids(special),
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
                         autocast=precision.autocast, order=cfg.refine_order)
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
                                               "refine_order": cfg.refine_order,
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
