"""Suite 1c, ``collect --generate``: generating in batches of --batch-size prompts vs one chunk.

A windows collect with ``--generate`` continues every document greedily before it encodes the
windows. The document stream comes in chunks of 16 documents (the unit a resumed collect keeps);
the reference generates one chunk per call, as every --batch-size did before generation batches
spanned chunks. Both methods collect the same documents with the same settings and differ only in
--batch-size (16, the chunk, against ``batch``). Reported: generated tokens per second (the time
inside the model's generate calls) and the whole collect's seconds after the model is loaded.

Worker: ``python -m bench.generate '{"method": ..., "model": ..., "corpus": ..., "out": ...}'``
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from bench.common import Timer, alternate, summary

METHODS = ["chunk", "batched"]


def worker(args: dict) -> dict:
    from sgdd.cache import open_cache
    from sgdd.models.causal_lm import FrozenCausalLM
    from sgdd.stages import collect
    from sgdd.stages.collect.config import CollectConfig
    from sgdd.stages.collect.sources.rows import DOCUMENT_CHUNK

    timed = {"seconds": 0.0, "tokens": 0, "calls": 0}
    generate = FrozenCausalLM.generate

    def timed_generate(self, prompts, max_new_tokens):  # the generation alone, inside the collect
        with Timer() as t:
            conts = generate(self, prompts, max_new_tokens)
        timed["seconds"] += t.seconds
        timed["tokens"] += sum(map(len, conts))
        timed["calls"] += 1
        return conts

    FrozenCausalLM.generate = timed_generate
    out = Path(args["out"])
    shutil.rmtree(out, ignore_errors=True)
    batch = DOCUMENT_CHUNK if args["method"] == "chunk" else args["batch"]
    cfg = CollectConfig(model=args["model"], dataset=args["corpus"], out=str(out), model_kind="causal_lm",
                        generate=True, max_new_tokens=args["new_tokens"], sample_size=args["prompt_tokens"],
                        stride=args["prompt_tokens"], batch_size=batch, max_samples=args["windows"],
                        dtype="fp16", precision="fp32", min_words=1, max_words=100_000)
    collect.run(cfg)
    seconds = open_cache(str(out)).split("train").manifest["collect_seconds"]
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "generate_seconds": timed["seconds"], "generated": timed["tokens"],
            "generate_calls": timed["calls"], "batch_size": batch}


def run_suite(model: str, corpus: Path, workdir: Path, reps: int, batch: int, windows: int, new_tokens: int,
              prompt_tokens: int) -> dict:
    args = {"model": model, "corpus": str(corpus), "out": str(workdir / "generate-out"), "batch": batch,
            "windows": windows, "new_tokens": new_tokens, "prompt_tokens": prompt_tokens}
    raw = alternate("bench.generate", METHODS, args, reps)
    table = {m: {"collect_s": summary([r["seconds"] for r in runs]),
                 "generated_tokens_per_s": summary([r["generated"] / r["generate_seconds"] for r in runs]),
                 "batch_size": runs[0]["batch_size"], "generate_calls": runs[0]["generate_calls"],
                 "generated": runs[0]["generated"]} for m, runs in raw.items()}
    speed = lambda m: table[m]["generated_tokens_per_s"]["median"]  # noqa: E731
    return {"methods": table, "ratios": {
        "batched_vs_chunk_generated_tokens_per_s": speed("batched") / speed("chunk"),
        "batched_vs_chunk_collect_time": table["chunk"]["collect_s"]["median"] / table["batched"]["collect_s"]["median"]}}


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
