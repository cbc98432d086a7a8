"""The config of `sgdd speculate` (kept apart from the stage so the CLI imports it cheaply)."""

from __future__ import annotations

from dataclasses import dataclass

from sgdd.config import doc


@dataclass
class SpeculateConfig:
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
    precision: str = doc("fp32", "Compute precision of both loops: fp32, bf16, fp16 (auto: bf16 on CPU).")
    seed: int = doc(0, "Seed of the drafter's generator (random samplers).")
