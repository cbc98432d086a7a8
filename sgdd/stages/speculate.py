"""`sgdd speculate`: greedy generation of the base causal LM with a trained MTP head as drafter,
measured against plain greedy generation of the same prompts in the same process.

The base model is the one the run's cache was collected from (model path and GGUF file from the
cache's collect config, or ``--model``), checked against the cache's weight and tokenizer
fingerprints. For every prompt: plain greedy (:func:`sgdd.decoding.speculate.greedy`), then the
draft-verify loop (:func:`sgdd.decoding.speculate.speculate`); the two outputs must be equal
token for token, or the command fails (after writing the report, which names the first
difference). Writes into ``--out``:

- ``report.json``  acceptance_length (mean tokens per verification pass) and its histogram,
                   tokens/s of both loops, speedup (greedy wall clock / speculative wall clock),
                   identical_to_greedy, and where everything came from
- ``report.md``    the same as a table, with ``acceptance.png`` (matplotlib, if installed)
- ``samples.jsonl`` one line per prompt: prompt, continuation, tokens per pass
- ``speculate-config.yaml`` the resolved config

The module holds the command's config (``SpeculateConfig``) and its entry ``run``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from sgdd.cache import format as fmt
from sgdd.io import write_json_atomic
from sgdd.cache.reader import Cache, open_cache
from sgdd.decoding.samplers import Sampling
from sgdd.decoding.speculate import (BaseLM, Generation, HeadDrafter, LookupDrafter, draft_vocabulary, greedy,
                                     speculate)
from sgdd.config import doc, save_yaml
from sgdd.errors import SgddError
from sgdd.log import progress
from sgdd.runtime import default_threads, pick_device, pick_precision, seed_everything
from sgdd.stages.evaluate.resolve import checkpoint_dir, latest_run, load_checkpoint, run_config

FINGERPRINT_KEYS = ("weights_sha256", "tokenizer_sha256", "model_type")
PROMPT_FIELDS = ("prompt", "text")  # a jsonl prompt file: the first of these fields a line has


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
@dataclass
class SpeculateConfig:
    """`sgdd speculate`: the MTP run, the prompts, how the head drafts, where the report goes."""

    run: str | None = doc(None, "MTP run directory (a next_block run); default the newest run under runs/.")
    checkpoint: str = doc("best", "Checkpoint of the run: best or last.")
    prompts: str | None = doc(None, "Prompt file: .txt (one prompt a line) or .jsonl (field 'prompt' or 'text').")
    max_prompts: int | None = doc(None, "Use only the first N prompts.")
    prompt_tokens: int = doc(256, "Keep the first N tokens of each prompt.")
    max_new_tokens: int = doc(128, "Tokens generated per prompt (fewer when the end token comes).")
    draft_passes: int = doc(1, "Denoising passes of the head per draft (1 = every drafted position at once).")
    sampler: str = doc("maskgit_plus", "Sampler of the draft (sgdd.decoding.samplers.SAMPLERS).")
    schedule: str = doc("cosine", "Unmasking schedule of the draft passes.")
    tau: float = doc(0.9, "threshold sampler: commit every position whose probability reaches tau.")
    model: str | None = doc(None, "The base model, when it is no longer where the cache's collect found it "
                            "(its weights and tokenizer must still match the cache's fingerprints).")
    out: str | None = doc(None, "Output directory; default <run>/speculate.")
    device: str = doc("auto", "auto, cpu, cuda or cuda:N.")
    precision: str = doc("fp32", "Precision of both loops: fp32; bf16 or fp16: the linear layers of the base model "
                         "and the head hold their weights in it and compute in it, everything else stays fp32, and "
                         "on CPU a verification computes each row as a greedy step does, bit for bit; auto: bf16 where the "
                         "CPU computes it natively and faster, bf16 on a GPU that supports it, else fp32.")
    seed: int = doc(0, "Seed of the drafter's generator (random samplers).")
    draft_min_prob: float = doc(0.0, "Leave out every draft token whose probability under the head is below P, and "
                                "the tokens after it (0 = always draft the whole block). Fewer drafted tokens make "
                                "the verification cheaper; the output is the base model's greedy output either way.")
    draft_width: str = doc("1", "Candidates per drafted position: K for each of the L-1 positions, or K1,K2,... for "
                           "the first ones (positions after the last are not drafted). Beside each token of the "
                           "head's best draft, the next K-1 candidates of its position are verified in the same "
                           "forward, as a tree (each token sees only its ancestors). E.g. 2,1,1. Other than all "
                           "ones, needs --draft-passes 1.")
    one_row: str = doc("auto", "How the base model computes one row (a greedy step) on CPU, in both loops: linear "
                       "(F.linear, a matrix-vector product), padded (the row twice as W @ x^T, a matrix product "
                       "the BLAS spreads over its threads) or auto (times both at start and keeps the faster; "
                       "the report names the choice).")
    draft_nodes: int | None = doc(None, "A draft tree shaped anew for each pass: the N token paths most probable "
                                  "under the head's one pass (a path's probability: the product of its tokens'), "
                                  "all verified in one forward; null = the chain, or the --draft-width tree. "
                                  "Needs --draft-passes 1 and no --draft-width.")
    lookup: int = doc(0, "Prompt lookup beside the head: also draft the up to N tokens that followed the latest "
                      "earlier occurrence, in the prompt and the output so far, of the last lookup_ngram tokens (else "
                      "fewer, down to one), merged with the head's draft as a tree, the lookup's tokens first; "
                      "--draft-nodes then caps the nodes of both together. 0 = off. Costs no model work; the output "
                      "is the base model's greedy output either way.")
    lookup_ngram: int = doc(3, "Prompt lookup: the longest run of last tokens it looks for.")
    lookup_min_ngram: int = doc(1, "Prompt lookup: the shortest run of last tokens it takes; a match of one token is "
                                "a weaker draft than the head's (RESULTS.md 3h).")
    draft_head: bool = doc(True, "Draft with the run's MTP head; --no-draft-head drafts by prompt lookup alone "
                           "(needs --lookup), to compare the two.")
    draft_vocab: int | None = doc(4096, "Draft only the N tokens most frequent among the run's training labels (the "
                                  "base model's next tokens in its cache's training split); null = the whole "
                                  "vocabulary. The output is the base model's greedy output either way. A draft "
                                  "over fewer rows of the output matrix is cheaper (on SmolLM2, 14 instead of 37 ms "
                                  "on one AVX2 core, at the same acceptance: RESULTS.md 3b; 4,096 drafted what "
                                  "7,052 did there, a millisecond faster: 3d); it loses the drafts of tokens "
                                  "outside the N.")


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def read_prompts(path: str | None, limit: int | None) -> list[str]:
    if path is None:
        raise SgddError("give a prompt file: --prompts FILE (.txt, one prompt a line, or .jsonl)")
    p = Path(path)
    if not p.is_file():
        raise SgddError(f"prompt file {p} does not exist")
    prompts = []
    for n, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise SgddError(f"{p} line {n} is not JSON") from None
            field = next((f for f in PROMPT_FIELDS if isinstance(row, dict) and f in row), None)
            if field is None:
                raise SgddError(f"{p} line {n} has no field {' or '.join(PROMPT_FIELDS)}")
            line = row[field]
        prompts.append(line)
    if not prompts:
        raise SgddError(f"prompt file {p} holds no prompt")
    return prompts[:limit] if limit is not None else prompts


def collect_source(cache: Cache) -> tuple[dict, dict]:
    """(collect config, settings) of the cache's first split."""
    manifest = cache.split(cache.splits[0], verify=False).manifest
    if manifest.get("kind") != "windows":
        raise SgddError(f"cache {cache.dir} is a {manifest.get('kind')} cache; speculate needs an LLM windows cache")
    return manifest.get("collect_config") or {}, manifest["settings"]


def load_base(cache: Cache, cfg: SpeculateConfig, device: torch.device, precision):
    """The cache's base causal LM, checked against its fingerprints."""
    from sgdd.models.causal_lm import FrozenCausalLM

    collected, settings = collect_source(cache)
    name = cfg.model or collected.get("model") or settings["encoder"]["model"]
    lm = FrozenCausalLM(name, device, precision, collected.get("gguf_file"))
    ours, theirs = lm.fingerprint(), settings["encoder"]
    differ = [k for k in FINGERPRINT_KEYS if theirs.get(k) is not None and ours.get(k) != theirs[k]]
    if differ:
        raise SgddError(f"model {name!r} is not the one cache {cache.dir} was collected with "
                        f"(different {', '.join(differ)}); pass --model with that model")
    return lm, settings


# --------------------------------------------------------------------------------------------
# the measurement
# --------------------------------------------------------------------------------------------
def training_labels(run_dir: Path, cache: Cache) -> list[list[int]]:
    """The base model's next tokens (``output_ids``) of every window of the run's training split."""
    split = run_config(run_dir).get("train_split", "train")
    if split not in cache.splits:
        raise SgddError(f"the run's training split {split!r} is not in cache {cache.dir}; "
                        "a draft vocabulary is counted on it (or pass --draft-vocab null)")
    return cache.split(split, verify=False).column("output_ids")


def draft_widths(spec: str, positions: int) -> tuple[int, ...]:
    """'2' -> (2,) * positions; '2,1,1' -> (2, 1, 1) (at most ``positions`` widths, each >= 1)."""
    parts = str(spec).split(",")
    if not all(p.strip().isdigit() and int(p) >= 1 for p in parts) or len(parts) > positions:
        raise SgddError(f"--draft-width {spec!r}: give K or K1,K2,... with 1 to {positions} positive integers "
                        f"(this head drafts {positions} positions)")
    widths = tuple(int(p) for p in parts)
    return widths * positions if len(widths) == 1 else widths


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def summary(greedy_runs: list[Generation], spec_runs: list[Generation], block_length: int) -> dict:
    passes = [n for g in spec_runs for n in g.accepted]
    tokens = sum(len(g.tokens) for g in greedy_runs)
    g_sec, s_sec = sum(g.seconds for g in greedy_runs), sum(g.seconds for g in spec_runs)
    hist = Counter(passes)
    return {
        "acceptance_length": sum(passes) / max(len(passes), 1),
        "acceptance_histogram": {str(k): hist.get(k, 0)  # beyond L where prompt lookup drafts more
                                 for k in range(1, max(block_length, max(passes, default=0)) + 1)},
        "verification_passes": len(passes),
        "drafted_per_pass": sum(n for g in spec_runs for n in g.drafted) / max(len(passes), 1),
        "tokens": tokens,
        "greedy": {"seconds": g_sec, "tokens_per_s": tokens / max(g_sec, 1e-9),
                   "forward_passes": sum(g.forwards for g in greedy_runs)},
        "speculative": {"seconds": s_sec, "tokens_per_s": tokens / max(s_sec, 1e-9),
                        "forward_passes": sum(g.forwards for g in spec_runs),
                        "draft_seconds": sum(g.draft_seconds for g in spec_runs)},
        "speedup": g_sec / max(s_sec, 1e-9),
    }


def acceptance_plot(report: dict, path: Path) -> Path | None:
    from sgdd.reporting import plots

    if not plots.plots_available():
        return None
    plt = plots._pyplot()
    hist = report["acceptance_histogram"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar([int(k) for k in hist], list(hist.values()), color="#4c72b0")
    ax.set_xlabel("tokens per verification pass")
    ax.set_ylabel("passes")
    ax.set_title(f"acceptance length, mean {report['acceptance_length']:.2f}")
    ax.set_xticks([int(k) for k in hist])
    return plots._save(fig, path)


def write_markdown(report: dict, out: Path, picture: Path | None) -> None:
    g, s = report["greedy"], report["speculative"]
    lines = [
        f"# sgdd speculate: {Path(report['run']).name}",
        "",
        f"- run `{report['run']}`, checkpoint `{report['checkpoint']}` ({report['weights']} weights), "
        f"block {report['block_length']} (drafts {report['block_length'] - 1} tokens a pass), "
        f"{report['draft_passes']} draft pass(es), sampler {report['sampling']['sampler']}, drafts from "
        + (f"the {report['draft_vocab']} most frequent training labels" if report.get("draft_vocab") else "the whole vocabulary")
        + (f", a tree of {report['draft_widths']} candidates per position"
           if report.get("draft_widths", [1] * (report["block_length"] - 1)) != [1] * (report["block_length"] - 1) else "")
        + (f", a tree of the {report['draft_nodes']} most probable paths" if report.get("draft_nodes") else "")
        + (f", tokens of probability < {report['draft_min_prob']} left out" if report.get("draft_min_prob") else "")
        + (f"; prompt lookup of up to {report['lookup']} tokens (last {report['lookup_ngram']} tokens down to "
           f"{report.get('lookup_min_ngram', 1)})"
           + ("" if report.get("draft_head", True) else " alone, without the head") if report.get("lookup") else ""),
        f"- base model `{report['model']}`" + (f" ({report['gguf_file']})" if report.get("gguf_file") else "")
        + f", hidden state layer {report['layer']} stored as {report['hidden_dtype']}",
        f"- {report['prompts']} prompts, up to {report['max_new_tokens']} new tokens each; device {report['device']}, "
        f"precision {report['precision']}, {report['threads']} threads, one-row form {report['one_row']}"
        + (" (" + ", ".join(f"{k} {v:.1f} ms" for k, v in report["one_row_ms"].items()) + " a step)"
           if report.get("one_row_ms") else ""),
        f"- identical to greedy: **{report['identical_to_greedy']}**",
        "",
        "| loop | tokens | seconds | tokens/s | base forwards |",
        "|---|---:|---:|---:|---:|",
        f"| greedy | {report['tokens']} | {g['seconds']:.2f} | {g['tokens_per_s']:.1f} | {g['forward_passes']} |",
        f"| speculative | {report['tokens']} | {s['seconds']:.2f} | {s['tokens_per_s']:.1f} | {s['forward_passes']} |",
        "",
        f"Acceptance length {report['acceptance_length']:.3f} tokens per verification pass "
        f"({report['verification_passes']} passes, {report['drafted_per_pass']:.2f} drafted tokens verified per pass); "
        f"speed-up **{report['speedup']:.3f}x** (wall clock); "
        f"drafting took {s['draft_seconds']:.2f} s of the speculative loop.",
        "",
        "| tokens per pass | " + " | ".join(report["acceptance_histogram"]) + " |",
        "|---|" + "---:|" * len(report["acceptance_histogram"]),
        "| passes | " + " | ".join(str(v) for v in report["acceptance_histogram"].values()) + " |",
        "",
    ]
    if picture is not None:
        lines += [f"![acceptance length]({os.path.relpath(picture, out)})", ""]
    (out / "report.md").write_text("\n".join(lines))


def run(cfg: SpeculateConfig) -> Path:
    """Greedy and speculative generation of every prompt; write the report; fail on any difference."""
    default_threads()
    if cfg.max_new_tokens < 1 or cfg.draft_passes < 1 or cfg.prompt_tokens < 1:
        raise SgddError("max_new_tokens, draft_passes and prompt_tokens must be at least 1")
    if not 0.0 <= cfg.draft_min_prob <= 1.0:
        raise SgddError(f"draft_min_prob must lie in [0, 1], got {cfg.draft_min_prob}")
    if cfg.lookup < 0 or not 1 <= cfg.lookup_min_ngram <= cfg.lookup_ngram:
        raise SgddError(f"--lookup must be 0 (off) or more and 1 <= --lookup-min-ngram <= --lookup-ngram, got "
                        f"{cfg.lookup}, {cfg.lookup_min_ngram} and {cfg.lookup_ngram}")
    if not cfg.draft_head and not cfg.lookup:
        raise SgddError("--no-draft-head leaves nothing to draft: give --lookup N (prompt lookup)")
    if cfg.draft_vocab is not None and cfg.draft_vocab < 1:
        raise SgddError(f"draft_vocab must be at least 1 (or null for the whole vocabulary), got {cfg.draft_vocab}")
    sampling = Sampling(sampler=cfg.sampler, steps=cfg.draft_passes, schedule=cfg.schedule, tau=cfg.tau).check()
    texts = read_prompts(cfg.prompts, cfg.max_prompts)
    run_dir = Path(cfg.run) if cfg.run else latest_run()
    ckpt = checkpoint_dir(run_dir, cfg.checkpoint)
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    head, meta = load_checkpoint(ckpt, device)
    if meta.get("view") != "next_block":
        raise SgddError(f"{run_dir} is not an MTP head (view {meta.get('view')!r}); speculate needs a next_block run")
    block_length = int(meta.get("block_length") or head.cfg.max_len)
    if block_length < 2:
        raise SgddError(f"{run_dir} has blocks of {block_length} token: nothing to draft after the base model's own")
    widths = draft_widths(cfg.draft_width, block_length - 1)
    if widths != (1,) * (block_length - 1) and cfg.draft_passes != 1:
        raise SgddError(f"--draft-width {cfg.draft_width} drafts a tree, which needs --draft-passes 1 "
                        f"(got {cfg.draft_passes})")
    if cfg.draft_nodes is not None and (cfg.draft_nodes < 1 or cfg.draft_passes != 1
                                        or widths != (1,) * (block_length - 1)):
        raise SgddError(f"--draft-nodes {cfg.draft_nodes} needs a positive N, --draft-passes 1 (got "
                        f"{cfg.draft_passes}) and no --draft-width (got {cfg.draft_width})")
    cache = open_cache(meta["cache"])
    lm, settings = load_base(cache, cfg, device, precision)
    info = cache.encoder_info
    if head.cond_dim != lm.hidden_size:
        raise SgddError(f"the head takes {head.cond_dim}-d conditions, the base model's hidden size is {lm.hidden_size}")
    base_vocab = int(info.get("base_vocab_size") or info["vocab_size"] - 1)
    eos = lm.special_ids()["eos_id"]
    base = BaseLM(lm, settings.get("layer", -1), fmt.STORED_DTYPES[settings.get("dtype", "fp32")][1],
                  one_row=cfg.one_row)
    seed_everything(cfg.seed)
    vocab = None
    if cfg.draft_vocab is not None:
        vocab = draft_vocabulary(training_labels(run_dir, cache), cfg.draft_vocab, exclude=[head.mask_id])
    drafter = HeadDrafter(head, block_length, sampling, device, precision, cfg.seed, vocab, cfg.draft_min_prob,
                          widths, cfg.draft_nodes) if cfg.draft_head else None
    if cfg.lookup:
        drafter = LookupDrafter(drafter, cfg.lookup, cfg.lookup_ngram, cfg.draft_nodes, cfg.lookup_min_ngram)
    prompts = [lm.tokenizer(t)["input_ids"][: cfg.prompt_tokens] for t in texts]

    greedy(base, prompts[0], min(8, cfg.max_new_tokens), eos)  # warm-up (first calls allocate), not timed
    speculate(base, drafter, prompts[0], min(8, cfg.max_new_tokens), eos, base_vocab)
    greedy_runs, spec_runs, differences = [], [], []
    bar = progress(total=len(prompts), desc="speculate", unit="prompt", logger="speculate")
    for i, prompt in enumerate(prompts):
        g = greedy(base, prompt, cfg.max_new_tokens, eos)
        s = speculate(base, drafter, prompt, cfg.max_new_tokens, eos, base_vocab)
        greedy_runs.append(g)
        spec_runs.append(s)
        at = first_difference(g.tokens, s.tokens)
        if at is not None:
            differences.append({"prompt": i, "position": at})
        passes = [n for r in spec_runs for n in r.accepted]
        bar.set_postfix(acceptance=f"{sum(passes) / max(len(passes), 1):.2f}", refresh=False)
        bar.update()
    bar.close()

    out = Path(cfg.out) if cfg.out else run_dir / "speculate"
    out.mkdir(parents=True, exist_ok=True)
    collected, _ = collect_source(cache)
    report = {
        "run": str(run_dir), "checkpoint": cfg.checkpoint, "weights": meta["weights"], "cache": str(cache.dir),
        "model": lm.name, "gguf_file": collected.get("gguf_file"), "layer": base.layer,
        "hidden_dtype": settings.get("dtype"), "collect_precision": settings.get("precision"),
        "device": str(device), "precision": precision.name, "threads": torch.get_num_threads(),
        "one_row": base.one_row, "one_row_ms": base.one_row_ms,
        "prompts": len(prompts), "max_new_tokens": cfg.max_new_tokens, "block_length": block_length,
        "given": meta.get("given", 0), "consistent_labels": meta.get("consistent_labels"),
        "draft_passes": cfg.draft_passes, "draft_vocab": None if vocab is None else len(vocab),
        "draft_min_prob": cfg.draft_min_prob, "draft_widths": list(widths),
        "draft_nodes": cfg.draft_nodes, "draft_head": cfg.draft_head, "lookup": cfg.lookup,
        "lookup_ngram": cfg.lookup_ngram, "lookup_min_ngram": cfg.lookup_min_ngram,
        "sampling": dataclasses.asdict(sampling),
        "identical_to_greedy": not differences, "differences": differences[:20],
        **summary(greedy_runs, spec_runs, block_length),
    }
    picture = acceptance_plot(report, out / "acceptance.png")
    report["files"] = [picture.name] if picture is not None else []
    write_json_atomic(out / "report.json", report)
    write_markdown(report, out, picture)
    with open(out / "samples.jsonl", "w") as f:
        for text, g, s in zip(texts, greedy_runs, spec_runs):
            f.write(json.dumps({"prompt": text[:500], "output": lm.tokenizer.decode(g.tokens),
                                "tokens": len(g.tokens), "per_pass": s.accepted}, ensure_ascii=False) + "\n")
    save_yaml(dataclasses.replace(cfg, run=str(run_dir), out=str(out)), out / "speculate-config.yaml")
    click.echo(f"speculate {run_dir} on {len(prompts)} prompts: acceptance length {report['acceptance_length']:.2f}, "
               f"greedy {report['greedy']['tokens_per_s']:.1f} tok/s, speculative "
               f"{report['speculative']['tokens_per_s']:.1f} tok/s, speed-up {report['speedup']:.2f}x, "
               f"identical to greedy: {report['identical_to_greedy']}")
    if differences:
        d = differences[0]
        raise SgddError(f"speculative output differs from greedy on {len(differences)} of {len(prompts)} prompts "
                        f"(first: prompt {d['prompt']}, token {d['position']}); see {out / 'report.json'}")
    return out
