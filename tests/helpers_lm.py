"""A tiny causal LM (Llama architecture, hidden size 32) built in-process for LLM-mode tests."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers import SENTENCES, build_tokenizer

DOCUMENTS = [" ".join(SENTENCES[i : i + 4]) for i in range(0, len(SENTENCES), 4)]  # 8 documents, ~45 tokens each


def build_causal_lm_dir(path: Path, tied: bool = False, layers: int = 2, hidden: int = 32, heads: int = 4,
                        kv_heads: int = 2, intermediate: int = 64) -> Path:
    """A LlamaForCausalLM (by default with hidden size 32) and the tiny word-level tokenizer, saved
    as a Hugging Face model directory (config.json names LlamaForCausalLM, so it is detected as one)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256, tie_word_embeddings=tied,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init: clear argmax winners, no near-ties
        model.get_output_embeddings().weight.mul_(20.0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
