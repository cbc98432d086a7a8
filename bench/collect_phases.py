"""Where `sgdd collect`'s time goes against the encoder-forward ceiling (``bench.collect``'s: the
same batches, already tokenized), both in ONE process: a ceiling run first to warm the kernels
(not counted), then ceiling and sgdd alternately, so that the two share the process's threads,
memory and oneDNN kernels, and differ only in what sgdd does beside the forward. For sgdd, the
phases of its shard loop:

- fill: from the start of the loop to the first shard's encode (reading and tokenizing that shard);
- encode: each shard's encode (forward, pooling, the vectors into the shard);
- gaps: between one shard's encode and the next (waiting for rows or for the previous commit);
- drain: after the last encode (its commit: Arrow/Zarr writes, fsync, sha256).

``python -m bench --only collect`` runs each method in its own process instead (for its peak
memory); there the share also carries the difference between two processes.

    python -m bench.collect_phases --n 3000 --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def run(method: str, corpus: str, model: str, out: str) -> dict:
    """One run of ``method`` (sgdd or ceiling) in this process; sgdd's shard loop is timed by phase."""
    from bench import collect as bc
    from sgdd.stages.collect import loop, modes

    marks: dict = {"encode": []}
    encode, write_shards = modes.SentenceMode.encode, loop.write_shards

    def timed_encode(self, rows, shard):
        began = time.perf_counter()
        out = encode(self, rows, shard)
        marks["encode"].append((began, time.perf_counter()))
        return out

    def timed_write_shards(*args, **kwargs):
        marks["start"] = time.perf_counter()
        out = write_shards(*args, **kwargs)
        marks["end"] = time.perf_counter()
        return out

    modes.SentenceMode.encode, loop.write_shards = timed_encode, timed_write_shards
    try:
        result = bc.worker({"method": method, "model": model, "corpus": corpus, "out": out,
                            "max_tokens": bc.max_tokens(False)})
    finally:  # the next run times with its own marks, not through this run's wrappers too
        modes.SentenceMode.encode, loop.write_shards = encode, write_shards
    row = {"method": method, "seconds": result["seconds"], "tokens_per_s": result["tokens"] / result["seconds"]}
    spans = marks["encode"]
    if spans:
        row |= {"fill_s": spans[0][0] - marks["start"], "encode_s": sum(b - a for a, b in spans),
                "gaps_s": sum(spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)),
                "drain_s": marks["end"] - spans[-1][1], "shards": len(spans)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="sentences in the corpus")
    ap.add_argument("--reps", type=int, default=3, help="pairs of runs (ceiling, then sgdd) after the warm-up")
    args = ap.parse_args()

    from bench.common import pick_model, write_corpus

    work = Path(tempfile.mkdtemp(prefix="sgdd-bench-phases-"))
    corpus = str(write_corpus(work / "corpus.txt", args.n, False))
    model = pick_model(work, False)
    run("ceiling", corpus, model, str(work / "warm-up"))
    shares = []
    for rep in range(args.reps):
        c, s = (run(method, corpus, model, str(work / method)) for method in ("ceiling", "sgdd"))
        shares.append(s["tokens_per_s"] / c["tokens_per_s"])
        print(f"rep {rep + 1}: ceiling {c['tokens_per_s']:.0f} tokens/s ({c['seconds']:.2f} s); sgdd "
              f"{s['tokens_per_s']:.0f} tokens/s ({s['seconds']:.2f} s), {shares[-1]:.1%} of it; sgdd's loop: "
              f"fill {s['fill_s']:.3f} s, encode {s['encode_s']:.2f} s over {s['shards']} shards, gaps "
              f"{s['gaps_s']:.3f} s, drain {s['drain_s']:.3f} s", flush=True)
    print(f"sgdd / ceiling, median of {args.reps}: {statistics.median(shares):.1%}")


if __name__ == "__main__":
    main()
