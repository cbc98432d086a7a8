"""The config of Stage 3 (``sgdd eval``, ``sgdd invert``): which run and split, how to decode, what to
score and where to write."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from sgdd.config import PRECISIONS, doc
from sgdd.decoding.lengths import length_problems
from sgdd.decoding.refine import REMASK_ORDERS
from sgdd.decoding.samplers import SAMPLERS, Sampling
from sgdd.metrics import METRICS
from sgdd.stages.evaluate.sweep import sweep_problems


@dataclass
class EvalConfig(Sampling):
    """`sgdd eval` (and `sgdd invert`): what to decode and how; the decoding settings are the
    inherited fields of :class:`sgdd.decoding.samplers.Sampling`."""

    RUN_SECTION: ClassVar[str] = "eval"  # its section of a `sgdd run` file

    run: str | None = doc(None, "Run directory; default the most recently modified one under runs/.")
    shards: str | None = doc(None, "Cache directory; default the one the run was trained on.")
    allow_foreign_cache: bool = doc(False, "Use a cache whose encoder identity (weights, tokenizer, pooling, "
                                    "layer, stored dtype, precision) differs from the one the run was trained on.")
    split: str | None = doc(None, "Split to decode; default test if the cache has it, else validation.")
    checkpoint: str = doc("best", "Checkpoint to load: best or last.")
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
    consistent_labels: bool | None = doc(None, "MTP head: score a block only up to its first label that leaves the "
                                         "base model's greedy chain (labels a verifier would produce); "
                                         "null = as the run was trained.")
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
                                    "number of tokens (up to half of them; which ones: refine_order).")
    refine_order: str = doc("confidence", "Which tokens a refinement candidate remasks: confidence = the least "
                                          "confident when committed; usefulness = those whose deletion raises the "
                                          "cosine most (every one-token deletion re-encoded); both = alternately.")
    refine_temperature: float = doc(0.7, "Sampling temperature of the re-decoded tokens in refinement (0 = greedy; "
                                         "the seed makes it reproducible).")
    batch_size: int = doc(128, "Sequences decoded together.")
    precision: str = doc("auto", "auto, fp32, bf16, fp16.")
    device: str = doc("auto", "auto, cpu, cuda or cuda:N.")
    seed: int = doc(0, "Seed for sampling.")
    out: str | None = doc(None, "Report directory; default <run>/eval-<split>.")

    def problems(self) -> list[str]:
        """Every problem of this config, one short sentence each."""
        p = super().problems()
        if self.checkpoint not in ("best", "last"):
            p.append(f"checkpoint must be best or last, got {self.checkpoint!r}")
        for m in self.metrics:
            if m not in METRICS:
                p.append(f"metric {m!r} unknown (valid: {', '.join(METRICS)})")
        if self.candidates < 1:
            p.append(f"candidates must be at least 1, got {self.candidates}")
        unknown = [s for s in self.candidate_samplers if s not in SAMPLERS]
        for name in unknown:
            p.append(f"candidate sampler {name!r} unknown (valid: {', '.join(SAMPLERS)})")
        used = {self.candidate_samplers[k % len(self.candidate_samplers)] for k in range(self.candidates)} \
            if self.candidate_samplers else {self.sampler}
        if self.candidates > 1 and not unknown and len(used) == 1 and self.sampler in SAMPLERS \
                and Sampling.of(dataclasses.replace(self, sampler=used.pop())).deterministic:
            p.append(f"candidates={self.candidates} would decode identical candidates: set temperature > 0, "
                     "alg_temp > 0, sampler random, or several candidate samplers")
        if self.trajectories < 0:
            p.append(f"trajectories must be >= 0, got {self.trajectories}")
        p += sweep_problems(self)
        if self.batch_size < 1:
            p.append(f"batch_size must be positive, got {self.batch_size}")
        if self.max_samples is not None and self.max_samples < 1:
            p.append(f"max_samples must be positive, got {self.max_samples}")
        if self.max_tokens is not None and self.max_tokens < 1:
            p.append(f"max_tokens must be positive, got {self.max_tokens}")
        if self.given is not None and self.given < 0:
            p.append(f"given must be >= 0, got {self.given}")
        p += length_problems(self.length)
        if self.refine not in (None, "encoder"):
            p.append(f"refine {self.refine!r} unknown (valid: encoder, or null for none)")
        if self.refine_steps < 1:
            p.append(f"refine_steps must be at least 1, got {self.refine_steps}")
        if self.refine_candidates < 1:
            p.append(f"refine_candidates must be at least 1, got {self.refine_candidates}")
        if self.refine_order not in REMASK_ORDERS:
            p.append(f"refine_order {self.refine_order!r} unknown (valid: {', '.join(REMASK_ORDERS)})")
        if self.refine_temperature < 0:
            p.append(f"refine_temperature must be >= 0, got {self.refine_temperature}")
        if self.precision not in PRECISIONS:
            p.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        return p
