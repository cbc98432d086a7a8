"""Suite 1, collect: sgdd vs an EAGLE-style and a vec2text-style collection, and the encoder's
pure forward throughput on the same batches (the ceiling).

Reference methods, re-implemented here from the peers' published scripts (nothing copied):

- ``eagle``: EAGLE's data generation (``ge_data`` scripts) runs the model on one sample at a
  time and writes one ``torch.save`` file per sample holding its tensors.
- ``vec2text``: vec2text precomputes embeddings with ``datasets.Dataset.map(batched=True)``
  adding an embedding column (inputs padded to a fixed length), then ``save_to_disk``.
- ``ceiling``: only the encoder's forward and mean pooling, over sgdd's own batches (pre-tokenised,
  sorted by length within each shard), so the gap to sgdd is what the pipeline adds.

Every method stores token ids and one fp16 sentence vector per sentence. Timing starts after
the model is loaded. Each method runs in its own process, alternating, so peak RSS is its own; sgdd
and the ceiling run next to each other in every repetition (the order is reversed in every other
one), so the share of the ceiling per repetition compares two runs seconds apart, not minutes.

Worker: ``python -m bench.collect '{"method": ..., "model": ..., "corpus": ..., "out": ...}'``
"""

from __future__ import annotations

import functools
import json
import shutil
import statistics
import sys
from pathlib import Path

from bench.common import Setup, Timer, alternate, dir_bytes, peak_rss_mib, summary

METHODS = ["sgdd", "ceiling", "eagle", "vec2text"]  # sgdd beside the ceiling: see above
BATCH = 128
SHARD_ROWS = 1024  # several shards, as in any real collect: reading and committing overlap the encoding


def max_tokens(quick: bool) -> int:
    """sgdd's --max-tokens: 512, or 64 for the tiny --quick encoder (it has 78 positions)."""
    return 64 if quick else 512


def _load(model_dir: str):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval().requires_grad_(False)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return tok, model


@functools.cache
def _precision():
    """The precision sgdd's ``auto`` picks on this machine (bf16 only where native), decided once,
    so that every method computes alike."""
    import torch

    from sgdd.runtime import pick_precision

    return pick_precision("auto", torch.device("cpu"))


def _mean_pool(model, ids, attn):
    import torch

    with torch.inference_mode(), _precision().autocast():
        h = model(input_ids=ids, attention_mask=attn).last_hidden_state.float()
    m = attn.unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


def m_sgdd(args: dict) -> dict:
    from sgdd.cache import open_cache
    from sgdd.stages.collect.config import CollectConfig
    from sgdd.stages import collect

    cfg = CollectConfig(model=args["model"], dataset=args["corpus"], out=args["out"], dtype="fp16",
                        batch_size=BATCH, min_words=1, max_words=10_000, max_tokens=args["max_tokens"],
                        shard_size=SHARD_ROWS)
    collect.run(cfg)
    split = open_cache(args["out"]).split("train")
    # collect_seconds: streaming, filtering, tokenising, encoding and committing shards (model loaded)
    return {"seconds": split.manifest["collect_seconds"], "tokens": sum(split.column("length")),
            "rows": split.num_rows, "bytes": dir_bytes(Path(args["out"]) / "train")}


def m_eagle(args: dict) -> dict:
    import torch

    tok, model = _load(args["model"])
    texts = Path(args["corpus"]).read_text().splitlines()
    out = Path(args["out"])
    out.mkdir(parents=True)
    tokens = 0
    with Timer() as t:
        for i, text in enumerate(texts):
            ids = torch.tensor([tok(text)["input_ids"]])
            vec = _mean_pool(model, ids, torch.ones_like(ids))
            torch.save({"input_ids": ids[0], "vector": vec[0].half()}, out / f"data_{i}.ckpt")
            tokens += ids.shape[1]
    return {"seconds": t.seconds, "tokens": tokens, "rows": len(texts), "bytes": dir_bytes(out)}


def m_vec2text(args: dict) -> dict:
    import datasets
    import numpy as np
    import torch

    datasets.disable_progress_bars()
    tok, model = _load(args["model"])
    texts = Path(args["corpus"]).read_text().splitlines()
    max_len = max(len(x) for x in tok(texts)["input_ids"])  # fixed padding length, as vec2text does

    def embed(batch: dict) -> dict:
        enc = tok(batch["text"], padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        vec = _mean_pool(model, enc["input_ids"], enc["attention_mask"])
        return {"input_ids": enc["input_ids"].tolist(), "attention_mask": enc["attention_mask"].tolist(),
                "frozen_embeddings": vec.numpy().astype(np.float16)}

    with Timer() as t:
        ds = datasets.Dataset.from_dict({"text": texts}).map(embed, batched=True, batch_size=BATCH)
        ds.save_to_disk(args["out"])
    tokens = sum(sum(m) for m in ds["attention_mask"])
    del torch
    return {"seconds": t.seconds, "tokens": tokens, "rows": len(texts), "bytes": dir_bytes(Path(args["out"]))}


def same_batches(lengths: list[int], shard_rows: int = SHARD_ROWS) -> list[list[int]]:
    """The batches sgdd encodes: rows cut into shards of ``shard_rows``, each sorted by length into
    batches of BATCH (``length_batches``), so the ceiling pads exactly as much as sgdd does."""
    from sgdd.stages.collect.modes import length_batches

    out = []
    for s in range(0, len(lengths), shard_rows):
        out += [[s + i for i in idx] for idx in length_batches(lengths[s:s + shard_rows], BATCH)]
    return out


def padded_positions(lengths: list[int], batches: list[list[int]]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def m_ceiling(args: dict) -> dict:
    import torch

    tok, model = _load(args["model"])
    ids = tok(Path(args["corpus"]).read_text().splitlines())["input_ids"]
    lengths = [len(r) for r in ids]
    batches = []
    for idx in same_batches(lengths):
        rows = [ids[i] for i in idx]
        S = max(len(r) for r in rows)
        x = torch.full((len(rows), S), tok.pad_token_id)
        a = torch.zeros((len(rows), S), dtype=torch.long)
        for j, r in enumerate(rows):
            x[j, :len(r)] = torch.tensor(r)
            a[j, :len(r)] = 1
        batches.append((x, a))
    with Timer() as t:
        for x, a in batches:
            _mean_pool(model, x, a)
    # what a sort over the whole corpus (one shard) would pad, against these batches
    padding = {"shards": padded_positions(lengths, same_batches(lengths)),
               "one_sort": padded_positions(lengths, same_batches(lengths, len(lengths)))}
    return {"seconds": t.seconds, "tokens": sum(lengths), "rows": len(ids), "bytes": 0, "padded": padding}


def worker(args: dict) -> dict:
    out = Path(args["out"])
    if out.exists():
        shutil.rmtree(out)
    result = {"sgdd": m_sgdd, "eagle": m_eagle, "vec2text": m_vec2text, "ceiling": m_ceiling}[args["method"]](args)
    result["peak_rss_mib"] = peak_rss_mib()
    if not args.get("keep"):
        shutil.rmtree(out, ignore_errors=True)
    return result


def check_methods(methods: list[str]) -> None:
    """Refuses a method list that is not a subset of METHODS holding sgdd and the ceiling."""
    if not {"sgdd", "ceiling"} <= set(methods) <= set(METHODS):
        raise ValueError(f"collect methods {','.join(methods)}: a subset of {', '.join(METHODS)} holding sgdd and ceiling")


def run_suite(setup: Setup, reps: int, methods: list[str] | None = None) -> dict:
    """``methods``: a subset of METHODS (see ``check_methods``); default all. The ratios against a
    method left out are left out."""
    if methods is not None:
        check_methods(methods)
    methods = [m for m in METHODS if m in (methods or METHODS)]  # METHODS' order
    args = {"model": setup.model, "corpus": str(setup.corpus), "out": str(setup.workdir / "collect-out"),
            "max_tokens": max_tokens(setup.quick)}
    raw = alternate("bench.collect", methods, args, reps)
    table = {}
    for m, runs in raw.items():
        table[m] = {
            "tokens_per_s": summary([r["tokens"] / r["seconds"] for r in runs]),
            "bytes_per_token": runs[0]["bytes"] / runs[0]["tokens"],
            "peak_rss_mib": summary([r["peak_rss_mib"] for r in runs]),
            "rows": runs[0]["rows"],
            "tokens": runs[0]["tokens"],
        }
    sg = table["sgdd"]["tokens_per_s"]["median"]
    ratios = {
        "sgdd_share_of_ceiling": sg / table["ceiling"]["tokens_per_s"]["median"],
        # the same share within each repetition (its two runs minutes apart), median over repetitions:
        # less moved by the machine's speed drifting between repetitions
        "sgdd_share_of_ceiling_per_rep": statistics.median(
            (s["tokens"] / s["seconds"]) / (c["tokens"] / c["seconds"]) for s, c in zip(raw["sgdd"], raw["ceiling"])),
        # the positions the 1,024-row shards' batches compute, against one sort of the whole corpus
        "shard_batches_vs_one_sort_positions": (raw["ceiling"][0]["padded"]["shards"]
                                                / raw["ceiling"][0]["padded"]["one_sort"]),
    }
    for peer in ("eagle", "vec2text"):
        if peer in table:
            ratios[f"sgdd_vs_{peer}_tokens_per_s"] = sg / table[peer]["tokens_per_s"]["median"]
            ratios[f"sgdd_vs_{peer}_bytes_per_token"] = table["sgdd"]["bytes_per_token"] / table[peer]["bytes_per_token"]
    return {"methods": table, "ratios": ratios}


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
