"""`sgdd invert`: encode a text with the run's frozen encoder, decode the vector with the run's
decoder, show the reconstruction and how it was denoised. The quickest way to see what a model does.

The vector is rounded to the dtype the cache stores its vectors in, so the decoder sees what it
was trained on. With ``out`` set, writes ``invert.json``, ``trajectories.txt`` and
``trajectory.png`` there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import torch

from sgdd.cache import format as fmt
from sgdd.cache.identity import check_identity, encoder_identity
from sgdd.cache.reader import Cache, open_cache
from sgdd.decoding.lengths import resolve_length
from sgdd.decoding.maskgit import special_token_ids
from sgdd.decoding.refine import refine, refine_sampling
from sgdd.decoding.rerank import ReEncoder, cosines_to, rerank
from sgdd.decoding.samplers import Sampling
from sgdd.decoding.trajectory import render_text, trajectory_of
from sgdd.models.checkpoint import MODEL_META, special_ids
from sgdd.models.portable import RunAssets, find_assets
from sgdd.errors import SgddError
from sgdd.io import write_json_atomic
from sgdd.runtime import default_threads, pick_device, pick_precision
from sgdd.stages.evaluate.config import EvalConfig
from sgdd.stages.evaluate.data import EvalData, to_texts
from sgdd.stages.evaluate.batches import candidate_sampling, decode_lengths, decode_rows
from sgdd.stages.evaluate.resolve import (check_encoder_fit, existing_checkpoint, latest_run,
                                          load_checkpoint, training_noise)


def vector_split(cache: Cache) -> str | None:
    """The first split that stores sentence vectors (None when none does)."""
    return next((name for name, m in cache.manifests().items() if "vectors" in m.get("arrays", {})), None)


def stored_dtype(cache: Cache) -> str | None:
    """The dtype the cache's sentence vectors are stored in (None when no split has any); the
    split is opened, so its manifest is checked against the Zarr metadata first."""
    name = vector_split(cache)
    return None if name is None else cache.split(name, verify=False).manifest["arrays"]["vectors"]["dtype"]


def as_stored(vectors: torch.Tensor, dtype: str | None) -> torch.Tensor:
    """Round float32 vectors [N, D] through the cache's stored dtype."""
    if dtype is None:
        return vectors
    return fmt.from_storage(fmt.to_storage(vectors, dtype), dtype).float()


def load_for_invert(run_dir: Path, checkpoint: str, shards: str | None, device: torch.device,
                    allow_foreign: bool = False):
    """The run's decoder, its meta and its encoder files; refuses an MTP head, encoder files that
    do not fit the model, or a cache of another encoder than the run's (unless ``allow_foreign``).
    ``run_dir`` may also be a saved run (``sgdd export``)."""
    ckpt = run_dir if (run_dir / MODEL_META).is_file() else existing_checkpoint(run_dir, checkpoint)
    model, meta = load_checkpoint(ckpt, device)
    assets = checked_assets(model, meta, find_assets([ckpt, run_dir], meta, shards), run_dir)
    if assets.cache_dir is not None:  # read from a cache: it must hold the run's encoder
        cache = open_cache(assets.cache_dir)
        check_identity(meta, encoder_identity(cache, vector_split(cache)), cache.dir, f"run {run_dir}", allow_foreign)
    return model, meta, assets


def checked_assets(model, meta: dict, assets: RunAssets, where: Path) -> RunAssets:
    if meta.get("view") == "next_block":
        raise SgddError(f"{where} is an MTP head (next_block view); sgdd invert needs a sentence decoder")
    problems = check_encoder_fit(model, meta, assets)
    if assets.encoder_info.get("hidden_size") not in (None, model.cond_dim):
        problems.append(f"its encoder gives {assets.encoder_info['hidden_size']}-d vectors, the model takes {model.cond_dim}")
    if problems:
        raise SgddError(f"the encoder files in {assets.dir} do not fit the model: " + "; ".join(problems))
    return assets


def invert_texts(model, meta: dict, assets: RunAssets, texts: list[str], cfg: EvalConfig, device: torch.device,
                 precision, encoder: ReEncoder | None = None, run_dir: Path | None = None) -> list[dict]:
    """Encode ``texts`` with the encoder the run's encoder files name, decode each vector
    (``cfg.candidates`` times, at the lengths ``cfg.length`` asks for) and keep the candidate
    closest to it; with ``cfg.refine`` improve it with the encoder as judge. Per text: the
    reconstruction, its cosine, the forward passes and the trajectory (``_traj``)."""
    if not texts or not all(t.strip() for t in texts):
        raise SgddError("give at least one non-empty text to invert")
    special = special_ids(assets.encoder_info, meta)
    tokenizer = assets.tokenizer()

    # 1. encode, as the cache would have stored the vectors
    encoder = encoder or ReEncoder(assets.encoder_info, device, precision)
    vectors = as_stored(encoder.encode(texts), assets.vectors_dtype)  # [N, D]
    L = model.cfg.max_len
    pad = special.get("pad_id") or 0
    # oracle: the input's own token count (start and end tokens included), at most max_len
    own = [tokenizer(t)["input_ids"][:L] for t in texts]
    ref_ids = torch.full((len(texts), L), pad, dtype=torch.long)
    for i, row in enumerate(own):
        ref_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    data = EvalData("sentences", vectors, ref_ids, [f"text-{i + 1}" for i in range(len(texts))], list(texts), None, 0, L)
    rule = resolve_length(cfg.length, model)
    lengths = decode_lengths(model, data, rule, pad, len(texts), device, precision)
    noise, _ = training_noise(meta, run_dir or Path("."))

    def judge(cand_ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return cosines_to([encoder.encode(to_texts(cand_ids, "sentences", tokenizer, special))], vectors[rows])[0]

    # 2. decode (N candidates) and keep the one closest to the text's vector
    runs = [decode_rows(model, data, candidate_sampling(cfg, k), cfg.seed + k, len(texts), device, precision,
                        keep=len(texts), desc="invert", noise=noise, lengths=lengths, pad_id=pad,
                        exempt=special_token_ids(special), judge=judge)
            for k in range(cfg.candidates)]
    outs = [to_texts(r.ids, "sentences", tokenizer, special) for r in runs]
    cos = cosines_to([encoder.encode(o) for o in outs], vectors)  # [K, N]
    chosen = rerank(cos)

    # 3. refinement with the encoder as judge
    refined = None
    if cfg.refine == "encoder":
        rows = torch.arange(len(texts))
        ids = torch.stack([r.ids for r in runs])[chosen, rows]
        history = refine(model, vectors.to(device), ids, torch.stack([r.lengths for r in runs])[chosen, rows],
                         torch.stack([r.token_logp for r in runs])[chosen, rows],
                         lambda x: encoder.encode(to_texts(x, "sentences", tokenizer, special)),
                         rounds=cfg.refine_steps, candidates=cfg.refine_candidates,
                         sampling=refine_sampling(Sampling.of(cfg), cfg.refine_temperature), noise=noise,
                         seed=cfg.seed, batch_size=cfg.batch_size, eos_id=special.get("eos_id"),
                         autocast=precision.autocast, order=cfg.refine_order)
        refined = (to_texts(history[-1].ids, "sentences", tokenizer, special), history)

    results = []
    for i, text in enumerate(texts):
        k = int(chosen[i])
        n = int(runs[k].lengths[i])
        traj = trajectory_of(runs[k].ids[i, :n], runs[k].committed_at[i, :n], tokenizer, special.get("eos_id"),
                             special.get("pad_id"))
        results.append({
            "text": text, "output": outs[k][i], "cosine": round(float(cos[k, i]), 4),
            "forward_passes": int(runs[k].passes_per_row[i]), "candidate": k,
            "candidates": [o[i] for o in outs] if cfg.candidates > 1 else None,
            "length": n, "trajectory": render_text(traj), "_traj": traj,
        })
        if refined is not None:
            results[-1].update({
                "decoded": outs[k][i], "output": refined[0][i],
                "cosine": round(float(refined[1][-1].cosine[i]), 4),
                "refinement": [round(float(h.cosine[i]), 4) for h in refined[1]],
            })
    return results


def run(cfg: EvalConfig, texts: list[str]) -> list[dict]:
    """Invert each of ``texts``; print and return, per text, the reconstruction, its cosine to the
    text's vector, the forward passes and the trajectory."""
    if not texts or not all(t.strip() for t in texts):
        raise SgddError("give at least one non-empty text to invert")
    default_threads()
    run_dir = Path(cfg.run) if cfg.run else latest_run()
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    model, meta, assets = load_for_invert(run_dir, cfg.checkpoint, cfg.shards, device, cfg.allow_foreign_cache)
    results = invert_texts(model, meta, assets, texts, cfg, device, precision, run_dir=run_dir)
    show(results, Sampling.of(cfg))
    if cfg.out:
        write(Path(cfg.out), results, dataclasses.asdict(Sampling.of(cfg)), str(run_dir))
    for r in results:
        r.pop("_traj")
    return results


def show(results: list[dict], sampling: Sampling) -> None:
    click.echo(f"sampler {sampling.sampler}, {sampling.steps} steps, schedule {sampling.schedule}")
    for r in results:
        click.echo("")
        click.echo(f"input:          {r['text']}")
        if r.get("refinement"):
            click.echo(f"decoded:        {r['decoded']}")
            click.echo("refined:        cosine by round " + " -> ".join(f"{c:.3f}" for c in r["refinement"]))
        click.echo(f"reconstruction: {r['output']}")
        extra = f", candidate {r['candidate'] + 1} of {len(r['candidates'])}" if r["candidates"] else ""
        click.echo(f"                cosine {r['cosine']:.3f} to the input's vector, "
                   f"{r['forward_passes']} forward passes{extra}")
        click.echo(r["trajectory"])


def write(out: Path, results: list[dict], sampling: dict, run_dir: str) -> None:
    from sgdd.reporting import trajectory_figure

    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in r.items() if k != "_traj"} for r in results]
    write_json_atomic(out / "invert.json", {"run": run_dir, "sampling": sampling, "results": rows})
    (out / "trajectories.txt").write_text("\n\n".join(f"{r['text']}\n{r['trajectory']}" for r in results) + "\n")
    trajectory_figure([(f"input: {r['text']}"[:110], r["_traj"]) for r in results], out / "trajectory.png")
