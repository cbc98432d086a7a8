"""A decoder whose body is the frozen encoder's own pretrained transformer (``model.init_body:
encoder``): the masked-diffusion decoder starts from what the encoder already knows about text.

How the condition z [B, Dz] enters (``model.conditioning``)::

    prefix   z ──MLP──► K prefix vectors [B, K, H], placed before the word embeddings of x_t;
             the body attends over both and the prefix positions are dropped from its output
    adaln    z ──MLP──► a shift and a scale per LayerNorm of the body (two per layer): each norm's
             output y becomes y * (1 + scale) + shift (AdaLN-Zero on a post-norm encoder)

    logits = LayerNorm(GELU(W h)) @ word_embeddings^T + b      (tied, as in BERT's MLM head)

Either way the MLP's last layer starts at zero, so at step 0 the body computes exactly its
pretrained function on the masked sentence. There is no time input: the share of mask tokens in
the input tells the model how far decoding is (MDLM drops it as well).

Stage 2 never loads the encoder: ``sgdd collect`` stores its weights (``encoder/body.safetensors``)
and its Hugging Face config (``encoder/body.json``) in the cache, and the body is rebuilt from the
config with ``transformers.AutoModel.from_config`` — no download, no remote code.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sgdd.models.decoder import DecoderConfig, OutputVocab, length_head
from sgdd.errors import SgddError

BODY_PREFIX = "body."  # state-dict prefix of the pretrained weights (their own learning rate)


def build_body(config: dict, n_layers: int, dropout: float = 0.0) -> nn.Module:
    """The encoder architecture described by ``config`` (a Hugging Face config dict), randomly
    initialised, cut to its first ``n_layers`` layers, with dropout ``dropout`` (model.dropout)."""
    from transformers import AutoConfig, AutoModel

    config = dict(config)
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise SgddError("the stored encoder config (body.json) has no model_type")
    available = int(config.get("num_hidden_layers", 0))
    if not 1 <= n_layers <= available:
        raise SgddError(f"model.n_layers={n_layers}: the encoder has {available} layers to start the body from")
    config["num_hidden_layers"] = n_layers
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if key in config:
            config[key] = dropout
    hf_config = AutoConfig.for_model(model_type, **config)
    return AutoModel.from_config(hf_config, add_pooling_layer=False) if _has_pooler(model_type) \
        else AutoModel.from_config(hf_config)


def _has_pooler(model_type: str) -> bool:
    return model_type in ("bert", "roberta", "xlm-roberta", "camembert", "electra", "mpnet")


def body_state(encoder_state: dict[str, torch.Tensor], body: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's weights that ``body`` (possibly fewer layers, no pooler) has, by name."""
    wanted = body.state_dict()
    missing = [k for k in wanted if k not in encoder_state]
    if missing:
        raise SgddError(f"the cache's encoder weights lack {len(missing)} of the body's tensors (e.g. {missing[0]})")
    return {k: encoder_state[k] for k in wanted}


class Modulation:
    """The shifts and scales [B, 2 * norms, H] of the forward pass in progress (AdaLN), shared by
    the decoder and its modulated norms (a deep copy, e.g. the EMA model, gets its own)."""

    value: torch.Tensor | None = None


class ModulatedLayerNorm(nn.LayerNorm):
    """A pretrained LayerNorm (same parameters, same state-dict keys) whose output y becomes
    y * (1 + scale) + shift, with norm ``index``'s shift and scale of the current condition."""

    def __init__(self, norm: nn.LayerNorm, modulation: Modulation, index: int):
        super().__init__(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                         bias=norm.bias is not None)
        self.load_state_dict(norm.state_dict())
        self.modulation, self.index = modulation, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # [B, L, H]
        mod = self.modulation.value
        shift, scale = mod[:, 2 * self.index], mod[:, 2 * self.index + 1]  # [B, H] each
        return y * (1 + scale[:, None].to(y.dtype)) + shift[:, None].to(y.dtype)


class BodyDecoder(OutputVocab, nn.Module):
    """The decoder interface of :class:`sgdd.models.decoder.Decoder` over a pretrained encoder body:
    ``condition(z, drop)``, ``forward(x_t, t, z, drop, kv)``, ``logits(hidden)``,
    ``length_logits(z)``."""

    def __init__(self, cfg: DecoderConfig, vocab_size: int, cond_dim: int, embed_dim: int, mask_id: int,
                 body_config: dict, out_vocab: int | None = None):
        super().__init__()
        self.cfg, self.vocab_size, self.cond_dim, self.mask_id = cfg, vocab_size, cond_dim, mask_id
        self.body_config = body_config
        self.body = build_body(body_config, cfg.n_layers, cfg.dropout)
        H = self.body.config.hidden_size
        if cfg.d_model is not None and cfg.d_model != H:
            raise SgddError(f"model.d_model={cfg.d_model}: a body from the encoder has its hidden size {H} "
                            "(set model.d_model null)")
        emb = self.body.get_input_embeddings()
        if tuple(emb.weight.shape) != (vocab_size, embed_dim):
            raise SgddError(f"the encoder's word embeddings {tuple(emb.weight.shape)} do not fit the cache's "
                            f"vocabulary ({vocab_size}, {embed_dim})")
        # the LayerNorms inside the layers (not the embeddings'): AdaLN modulates their outputs
        names = [name for name, m in self.body.named_modules()
                 if isinstance(m, nn.LayerNorm) and not name.startswith("embeddings")]
        self.modulation = Modulation()
        if cfg.conditioning == "adaln":
            for i, name in enumerate(names):
                parent, _, leaf = name.rpartition(".")
                norm = self.body.get_submodule(name)
                setattr(self.body.get_submodule(parent), leaf, ModulatedLayerNorm(norm, self.modulation, i))
        self.n_norms = len(names)
        out = cfg.cond_tokens * H if cfg.conditioning == "prefix" else 2 * len(names) * H
        mlp = nn.Sequential(nn.Linear(cond_dim, H), nn.GELU(), nn.Linear(H, out))
        nn.init.zeros_(mlp[2].weight)  # step 0: the body computes its pretrained function
        nn.init.zeros_(mlp[2].bias)
        if cfg.conditioning == "prefix":
            self.prefix_mlp = mlp  # z -> K prefix vectors
        else:
            self.ada_mlp = mlp  # z -> a shift and a scale per norm
        self.null_cond = nn.Parameter(torch.zeros(cond_dim))  # learned "no condition" vector (CFG)
        self.head = nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.LayerNorm(H, eps=1e-12))
        self._init_output(out_vocab)  # out_bias, and the restricted vocabulary's ids (model.vocab corpus)
        self.length_head = length_head(cfg, cond_dim)

    @property
    def tok_emb(self) -> nn.Embedding:
        return self.body.get_input_embeddings()

    @property
    def output_weight(self) -> torch.Tensor:
        return self.tok_emb.weight

    def load_encoder(self, encoder_state: dict[str, torch.Tensor]) -> None:
        """Start the body from the encoder's pretrained weights (the cache's body.safetensors)."""
        self.body.load_state_dict({k: v.float() for k, v in body_state(encoder_state, self.body).items()})

    def load_embeddings(self, weight: torch.Tensor) -> None:
        """The body's embeddings are the encoder's already (:meth:`load_encoder`)."""
        with torch.no_grad():
            self.tok_emb.weight.copy_(weight.float())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def condition(self, z: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """What the body needs from conditions z [B, Dz] (the null condition where ``drop``):
        prefix -> the prefix vectors [B, K, H]; adaln -> shift and scale per norm [B, 2 * norms, H]."""
        z = z.to(self.null_cond.dtype)
        if drop is not None:
            z = torch.where(drop[:, None], self.null_cond.expand_as(z), z)
        rows = self.cfg.cond_tokens if self.cfg.conditioning == "prefix" else 2 * self.n_norms
        mlp = self.prefix_mlp if self.cfg.conditioning == "prefix" else self.ada_mlp
        return mlp(z).view(z.shape[0], rows, -1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | None = None, z: torch.Tensor | None = None,
                drop: torch.Tensor | None = None, kv=None) -> torch.Tensor:
        """x_t [B, L] -> hidden [B, L, H]; ``t`` is accepted for the common interface and unused."""
        B, L = x_t.shape
        if L > self.cfg.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.cfg.max_len}")
        cond = self.condition(z, drop) if kv is None else kv
        self._fit_attention(x_t.device)
        words = self.tok_emb(x_t)  # [B, L, H]
        if self.cfg.conditioning == "adaln":
            self.modulation.value = cond  # read by the modulated norms during this forward
            try:
                return self.body(inputs_embeds=words).last_hidden_state  # [B, L, H]
            finally:
                self.modulation.value = None
        inputs = torch.cat([cond.to(words.dtype), words], dim=1)  # [B, K + L, H]
        out = self.body(inputs_embeds=inputs)  # every position is real: no attention mask
        return out.last_hidden_state[:, cond.shape[1]:]  # [B, L, H]

    def _fit_attention(self, device: torch.device) -> None:
        """The body's attention kernel for ``device``: on a CPU the explicit one ("eager"), whose
        backward at these lengths (<= 64 positions) is several times faster than the fused SDPA
        kernel's (BENCHMARKS.md, section 0); elsewhere SDPA. Chosen at the first forward on a device."""
        wanted = "eager" if device.type == "cpu" else "sdpa"
        if self.body.config._attn_implementation != wanted:
            self.body.set_attn_implementation(wanted)

    @property
    def projection(self) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """(the head before the word embeddings, the tied embeddings [V', H], the bias [V']) over the
        output vocabulary."""
        return self.head, self.restrict(self.output_weight), self.out_bias

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., V] through the head and the tied word embeddings; the mask token is
        never predicted."""
        return self.widen(self.out_logits(hidden))

    def length_logits(self, z: torch.Tensor) -> torch.Tensor:
        """[B, Dz] -> [B, max_len + 1] logits over the sentence's token count (special tokens included)."""
        if self.length_head is None:
            raise SgddError("this decoder has no length head (model.length_head false)")
        return self.length_head(z.to(self.null_cond.dtype))
