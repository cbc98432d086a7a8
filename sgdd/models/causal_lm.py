"""The frozen base causal LM of Stage 1's LLM mode (the MTP head's data, EAGLE-style).

One forward pass per batch of token windows gives both what the cache stores per position:
the hidden state of the chosen layer and the model's greedy next-token prediction (the argmax
of the LM head over the final hidden state). Only Stage 1 imports this module.

Layers: ``layer=-1`` is the final hidden state *after* the model's final norm, i.e. exactly
the input of the LM head; ``layer=L`` (0 <= L <= n_layers) is ``hidden_states[L]`` as
transformers returns it (0 = the token embeddings, L = the output of block L; in
transformers >= 5 the last entry is also taken after the final norm); other negative values
count from the end of that list.
"""

from __future__ import annotations

import torch

from sgdd.errors import SgddError
from sgdd.models.encoder import ResolvedModel, hub_root, loading, model_fingerprint, resolve_model
from sgdd.runtime import Precision

LOGIT_ROWS = 1024  # positions per LM-head matmul when taking the argmax (bounds the [P, V] logits: 0.1 GB in bf16 at V = 49k)


class FrozenCausalLM:
    """A Hugging Face causal LM (or a GGUF file, dequantized) in eval mode, gradients off."""

    def __init__(self, name: str, device: torch.device, precision: Precision, gguf_file: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name, self.device, self.precision = name, device, precision
        self.resolved: ResolvedModel = resolve_model(name, gguf_file)
        kw = {"gguf_file": self.resolved.gguf_file} if self.resolved.gguf_file else {}
        with loading(name, " (GGUF files need `pip install gguf accelerate`)"):
            self.tokenizer = AutoTokenizer.from_pretrained(self.resolved.where, **kw)
            self.model = AutoModelForCausalLM.from_pretrained(self.resolved.where, dtype=torch.float32, **kw)
        self.model.eval().requires_grad_(False).to(device)
        self.base = self.model.base_model  # the transformer without its LM head
        self.head = self.model.get_output_embeddings()
        if self.head is None:
            raise SgddError(f"model {name!r} has no output layer (LM head)")

    # -- identity ------------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        return model_fingerprint(self.name, hub_root(self.resolved), self.model.config.model_type,
                                 self.resolved.gguf_file)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def special_ids(self) -> dict:
        """eos = the model's end token; pad = its pad token, else eos (padding is never attended
        to, and in windows every position is real); bos = its bos token, else eos (the token a
        causal LM conventionally starts from). mask None: the cache adds a row for it."""
        tok = self.tokenizer
        eos = tok.eos_token_id
        if eos is None:
            raise SgddError(f"tokenizer of {self.name!r} has no end-of-sequence token")
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        bos = tok.bos_token_id if tok.bos_token_id is not None else eos
        return {"pad_id": pad, "mask_id": None, "bos_id": bos, "eos_id": eos}

    def input_embeddings(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight.detach().float().cpu()

    def output_weight(self) -> torch.Tensor:
        """The LM head [V, H] (a copy of the embeddings when they are tied)."""
        return self.head.weight.detach().float().cpu()

    @property
    def tied(self) -> bool:
        return self.head.weight.data_ptr() == self.model.get_input_embeddings().weight.data_ptr()

    def check_layer(self, layer: int) -> None:
        n = self.num_layers + 1  # hidden_states: embeddings + one per block
        if not -n <= layer < n:
            raise SgddError(f"--layer {layer} out of range: the model has {self.num_layers} layers "
                            f"(0 = embeddings, {self.num_layers} = last block, -1 = the LM head's input)")

    # -- forward -------------------------------------------------------------------------------
    def _pad_right(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        S = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), S), self.special_ids()["pad_id"], dtype=torch.long)
        attn = torch.zeros((len(ids), S), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.tensor(x)
            attn[i, : len(x)] = 1
        return input_ids.to(self.device), attn.to(self.device)

    @torch.inference_mode()
    def forward(self, ids: list[list[int]], layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """Token windows -> hidden states of ``layer`` [B, S, H] (float32, zero beyond each
        window's length) and greedy next-token ids [B, S] (int64; -1 beyond the length).
        S = the longest window of the batch. Right padding: real positions never see it."""
        input_ids, attn = self._pad_right(ids)
        with self.precision.autocast():
            out = self.base(input_ids=input_ids, attention_mask=attn, output_hidden_states=layer != -1)
            last = out.last_hidden_state  # [B, S, H] after the final norm: the LM head's input
            nxt = torch.cat([self.head(chunk).argmax(-1) for chunk in last.reshape(-1, last.shape[-1]).split(LOGIT_ROWS)])
        nxt = nxt.view(attn.shape).masked_fill(attn == 0, -1)  # [B, S]
        hidden = last if layer == -1 else out.hidden_states[layer]
        hidden = hidden.float() * attn.unsqueeze(-1)
        return hidden.cpu(), nxt.cpu()

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations (new tokens only, ending at the first EOS if one comes)."""
        eos = self.special_ids()["eos_id"]
        pad = self.special_ids()["pad_id"]
        S = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), S), pad, dtype=torch.long)
        attn = torch.zeros((len(prompts), S), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
            input_ids[i, S - len(p):] = torch.tensor(p)
            attn[i, S - len(p):] = 1
        with self.precision.autocast():
            out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attn.to(self.device),
                                      max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      pad_token_id=pad, eos_token_id=eos, temperature=None, top_p=None, top_k=None)
        conts = []
        for row in out[:, S:].tolist():
            conts.append(row[: row.index(eos) + 1] if eos in row else row)
        return conts
