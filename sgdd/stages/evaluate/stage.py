"""The entry of ``sgdd eval``: resolve, load, decode every setting, write the report."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from sgdd.io import write_json_atomic
from sgdd.models.checkpoint import special_ids
from sgdd.cache.identity import check_identity, encoder_identity
from sgdd.cache.reader import open_cache
from sgdd.cache.views import KIND_TASK, cache_kind
from sgdd.config import save_yaml
from sgdd.decoding.lengths import resolve_length
from sgdd.decoding.rerank import ReEncoder
from sgdd.decoding.samplers import Sampling
from sgdd.decoding.schedules import share_steps
from sgdd.errors import SgddError
from sgdd.metrics import get_metric
from sgdd.runtime import default_threads, pick_device, pick_precision, seed_everything
from sgdd.stages.evaluate.config import EvalConfig
from sgdd.stages.evaluate.data import load_eval_data
from sgdd.stages.evaluate.report import print_table, write_report_files
from sgdd.stages.evaluate.resolve import (check_fit, default_split, existing_checkpoint, latest_run,
                                          load_checkpoint, training_noise, validation_accuracy)
from sgdd.stages.evaluate.score import copy_source_floor, evaluate_setting, metrics_for
from sgdd.stages.evaluate.sweep import expand_sweep

def run(cfg: EvalConfig) -> Path:
    """Decode ``cfg.split`` of the cache with the run's checkpoint, score it, write the report."""
    t0 = time.perf_counter()
    default_threads()
    grid = expand_sweep(cfg)  # every setting checked before anything is loaded
    run_dir = Path(cfg.run) if cfg.run else latest_run()
    ckpt = existing_checkpoint(run_dir, cfg.checkpoint)
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
    special = special_ids(cache.encoder_info, meta)
    tokenizer = cache.tokenizer()
    if cfg.consistent_labels is not None and kind != "windows":
        raise SgddError(f"consistent_labels applies to an MTP eval (a windows split); this is a {KIND_TASK[kind]} eval")
    data = load_eval_data(split, model, meta, special, tokenizer, cfg.max_samples, cfg.max_tokens, cfg.consistent_labels)
    given = meta.get("given", 0) if cfg.given is None else cfg.given  # null: as the run was trained
    if given and (kind != "windows" or given >= data.length):
        raise SgddError(f"given={given} needs an MTP eval (a windows split) with blocks longer than that; "
                        f"this is a {KIND_TASK[kind]} eval of {data.length}-token rows")
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
        "task": KIND_TASK[kind],
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
