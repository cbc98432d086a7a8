"""The conditional masked-diffusion decoder: one bidirectional transformer over a block of
(partly) masked tokens, conditioned on a vector z. The same model is the sentence decoder
(z = a sentence vector) and the MTP head (z = a base-LM hidden state h_l).

How z enters (``DecoderConfig.conditioning``)::

    cross    z -> cond_tokens memory slots; every block cross-attends to them (SGDD's default)
    adaln    AdaLN-Zero: c = embed(z) + embed(t); every block gets shift/scale/gate vectors from
             SiLU(c) through a zero-initialised linear map, so each block starts as the identity
             and the condition (and time) steer the whole residual stream through its norms
    prefix   z -> cond_tokens extra tokens placed before the block; plain self-attention over
             both; no cross-attention

``condition(z, drop)`` computes once per sequence what the blocks need (keys/values, the
conditioning vector, or the prefix tokens); ``forward(x_t, t, kv=...)`` reuses it at every
decoding step. Rows with ``drop`` True use the learned null vector instead of z (CFG).

Token embeddings are initialised from the encoder's (or base LM's) input embeddings stored in the
cache. The output layer is tied to them, or (``tie_output: false``) a separate matrix that can be
initialised from the base model's LM head. When the embedding size differs from ``d_model``, a
linear map goes in and another comes out (factorised embeddings), so a tie still holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sgdd.config import doc
from sgdd.errors import SgddError
from sgdd.models import fewrows

CONDITIONINGS = ("cross", "adaln", "prefix")
INIT_BODIES = ("none", "encoder")
VOCABS = ("full", "corpus")
LENGTH_INPUTS = ("raw", "standardized")


@dataclass
class DecoderConfig:
    n_layers: int = doc(6, "Transformer blocks.")
    d_model: int | None = doc(512, "Hidden size; null = the cache's hidden size (the base model's, for an MTP head).")
    n_heads: int = doc(8, "Attention heads (d_model must be divisible by it).")
    mlp_ratio: float = doc(4.0, "MLP hidden size as a multiple of d_model.")
    max_len: int = doc(64, "Tokens per generated sentence (sentence view; the next-block view uses block_length).")
    conditioning: str = doc(
        "adaln",
        "How the condition vector enters: adaln (AdaLN-Zero: per-block shift/scale/gate from condition + time, "
        "gates start at 0; the default: it learned the condition far better than cross-attention in the "
        "ablations of RESULTS.md), cross (cross-attention to cond_tokens memory slots in every block, the seed's "
        "choice) or prefix (cond_tokens extra tokens prepended to the self-attention). With init_body encoder: "
        "adaln (AdaLN-Zero on the body's norms, no time input) or prefix.",
    )
    cond_tokens: int = doc(4, "Memory slots (cross) or prefix tokens (prefix) the condition is projected to; adaln uses none.")
    tie_output: bool = doc(
        True,
        "Output layer tied to the input embeddings; false = a separate output matrix, initialised from "
        "the base model's LM head when the cache has one (lm_head.safetensors).",
    )
    dropout: float = doc(0.0, "Dropout in attention and MLP outputs.")
    cond_drop: float = doc(0.0, "Share of training samples whose condition is replaced by the learned null, so that "
                           "classifier-free guidance (eval cfg_scale) has an unconditional model; 0 = no guidance "
                           "(the seed used 0.1).")
    rope_theta: float = doc(10000.0, "RoPE base.")
    init_body: str = doc(
        "none",
        "none (a transformer trained from scratch, sized by the fields above) or encoder (the frozen encoder's "
        "own pretrained layers, stored in the cache by `sgdd collect`, become the decoder's body: its first "
        "n_layers layers, its hidden size and heads; the condition enters as cond_tokens prefix tokens "
        "(conditioning prefix) or as AdaLN-Zero shifts and scales of the body's norms (conditioning adaln), "
        "both from a small zero-initialised MLP; there is no time input).",
    )
    vocab: str = doc(
        "full",
        "Output vocabulary: full (every token of the tokenizer) or corpus (only the target tokens of the training "
        "and validation splits, an MTP head's labels among them, and the special tokens: a smaller vocabulary "
        "projection, so faster training; the decoder then never writes another token).",
    )
    length_head: bool = doc(False, "Predict each sentence's token count from the condition (a small MLP); decoding "
                            "then generates exactly that many positions instead of max_len padded ones.")
    length_input: str = doc(
        "raw",
        "What the length head reads: raw (the condition as the cache stores it) or standardized (each dimension "
        "shifted and scaled by the training split's mean and standard deviation, saved with the weights: a "
        "normalised sentence vector's dimensions are ~0.05 wide around a shared mean). Standardized finds the "
        "exact length more often but decoded no better at the quickstart's budget (RESULTS.md 0i).",
    )

    def problems(self) -> list[str]:
        """Every problem of this config, one short sentence each."""
        p: list[str] = []
        if self.d_model is None:  # the cache's hidden size: checked when the decoder is built
            if self.n_heads < 1:
                p.append(f"model.n_heads must be positive, got {self.n_heads}")
        elif self.n_heads < 1 or self.d_model % self.n_heads:
            p.append(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        elif (self.d_model // self.n_heads) % 2:
            p.append(f"model head size d_model/n_heads = {self.d_model // self.n_heads} must be even for RoPE")
        for name in ("n_layers", "max_len", "cond_tokens"):
            if getattr(self, name) < 1:
                p.append(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.conditioning not in CONDITIONINGS:
            p.append(f"model.conditioning {self.conditioning!r} unknown (valid: {', '.join(CONDITIONINGS)})")
        if not 0 <= self.cond_drop < 1:
            p.append(f"model.cond_drop must be in [0, 1), got {self.cond_drop}")
        if not 0 <= self.dropout < 1:
            p.append(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.length_input not in LENGTH_INPUTS:
            p.append(f"model.length_input {self.length_input!r} unknown (valid: {', '.join(LENGTH_INPUTS)})")
        if self.vocab not in VOCABS:
            p.append(f"model.vocab {self.vocab!r} unknown (valid: {', '.join(VOCABS)})")
        if self.init_body not in INIT_BODIES:
            p.append(f"model.init_body {self.init_body!r} unknown (valid: {', '.join(INIT_BODIES)})")
        elif self.init_body == "encoder" and self.conditioning not in ("prefix", "adaln"):
            p.append(f"model.init_body encoder takes the condition as prefix tokens or AdaLN modulation of its norms: "
                     f"set model.conditioning prefix or adaln (got {self.conditioning!r})")
        return p
ADALN_CHUNKS = 6  # shift, scale, gate for attention; shift, scale, gate for the MLP


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    ang = torch.outer(torch.arange(length, dtype=torch.float32), inv)  # [L, hd/2]
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :hd/2], x[..., hd/2:]) of x [B, H, L, hd] by position."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


ROW_BUCKET = 128  # see Decoder.logits


def project_logits(head: nn.Module, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   mask_id: int) -> torch.Tensor:
    """``head(hidden) @ weight^T + bias`` [..., V] with the mask token ruled out (-inf). A row
    selection [M, d] is computed padded to a multiple of ``ROW_BUCKET`` rows (see ``Decoder.logits``)."""
    rows = hidden.shape[0] if hidden.dim() == 2 else None
    if rows is not None and rows % ROW_BUCKET:
        hidden = F.pad(hidden, (0, 0, 0, ROW_BUCKET - rows % ROW_BUCKET))
    out = fewrows.linear(head(hidden), weight, bias)  # F.linear, or W @ x^T for a few rows on CPU
    out[..., mask_id] = float("-inf")
    return out if rows is None else out[:rows]


class OutputVocab:
    """The output vocabulary of a decoder: every token, or (``model.vocab: corpus``) the sorted
    token ids ``out_vocab`` [V'] of the training and validation splits and the special tokens.
    Restricted, the projection computes V' logits instead of V and the loss scores targets by
    their index in ``out_vocab``; ``logits`` still returns [..., V] (-inf outside), so decoding is
    unchanged. The ids are a buffer (saved with the weights); ``model.json`` records their number."""

    vocab_size: int
    mask_id: int
    out_vocab: torch.Tensor | None

    def _init_output(self, out_vocab: int | None) -> None:
        """The output bias (of the restricted size), and the ids' buffer (set by ``set_vocab`` or
        loaded with the weights)."""
        self.out_bias = nn.Parameter(torch.zeros(out_vocab or self.vocab_size))
        if out_vocab is None:
            self.out_vocab = None
        else:
            self.register_buffer("out_vocab", torch.zeros(out_vocab, dtype=torch.long))

    def set_vocab(self, ids: torch.Tensor) -> None:
        """The restricted vocabulary's token ids (sorted, unique, the mask token among them)."""
        if self.out_vocab is None or ids.shape != self.out_vocab.shape:
            raise ValueError(f"this decoder was built for {None if self.out_vocab is None else len(self.out_vocab)} "
                             f"output tokens, not {len(ids)}")
        with torch.no_grad():
            self.out_vocab.copy_(ids)
        self.out_index(torch.tensor([self.mask_id]))  # raises unless the mask token is among them

    @property
    def out_mask_id(self) -> int:
        """The mask token's index among the output logits (never predicted)."""
        return self.mask_id if self.out_vocab is None else int(torch.searchsorted(self.out_vocab, self.mask_id))

    def out_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [...] -> their indices among the output logits; a one-line error for an id
        outside the output vocabulary."""
        if self.out_vocab is None:
            return ids
        index = torch.searchsorted(self.out_vocab, ids).clamp_(max=len(self.out_vocab) - 1)
        inside = self.out_vocab[index] == ids
        if not bool(inside.all()):
            bad = ids[~inside].unique()
            raise SgddError(f"{len(bad)} token ids (e.g. {int(bad[0])}) are outside the decoder's output vocabulary "
                            f"(model.vocab corpus: the {len(self.out_vocab)} tokens of the splits it was built from)")
        return index

    def restrict(self, weight: torch.Tensor) -> torch.Tensor:
        """The output matrix's rows of the output vocabulary: [V, E] -> [V', E]."""
        return weight if self.out_vocab is None else weight[self.out_vocab]

    def out_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., V'] logits over the output vocabulary (the mask token's -inf)."""
        head, weight, bias = self.projection
        return project_logits(head, hidden, weight, bias, self.out_mask_id)

    def widen(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [..., V'] -> [..., V] over every token id, -inf outside the output vocabulary."""
        if self.out_vocab is None:
            return logits
        out = logits.new_full((*logits.shape[:-1], self.vocab_size), float("-inf"))
        out[..., self.out_vocab] = logits
        return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v over [B, H, L, hd]. On CPU the explicit form is ~3x faster than
    the fused kernel for the short sequences (<= 64 tokens) this decoder sees; elsewhere use SDPA."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)  # [B, H, L, K]
    return F.dropout(weights, dropout) @ v if dropout else weights @ v


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000, as diffusion models do) -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, L, d] * (1 + scale [B, d]) + shift [B, d]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Standardizer(nn.Module):
    """z [B, D] -> (z - mean) / std per dimension, with statistics set once by :meth:`fit`
    (buffers, saved with the weights)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, vectors: torch.Tensor) -> None:
        """The statistics of ``vectors`` [N, D]; a dimension that hardly varies is divided by a
        thousandth of the mean spread instead of by ~0."""
        if vectors.ndim != 2 or vectors.shape[1] != self.mean.shape[0] or vectors.shape[0] < 2:
            raise SgddError(f"standardizing needs at least 2 vectors of {self.mean.shape[0]} dimensions, "
                            f"got shape {tuple(vectors.shape)}")
        v = vectors.double()
        std = v.std(0)
        self.mean.copy_(v.mean(0))
        self.std.copy_(std.clamp_min(1e-3 * float(std.mean()) + 1e-12))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean.to(z.dtype)) / self.std.to(z.dtype)


def length_head(cfg: "DecoderConfig", cond_dim: int) -> "LengthHead | None":
    """``model.length_head`` and ``model.length_input`` as a module (None without a head)."""
    if not cfg.length_head:
        return None
    return LengthHead(cond_dim, cfg.max_len, standardized=cfg.length_input == "standardized")


class LengthHead(nn.Module):
    """Condition z [B, Dz] -> logits [B, max_len + 1] over the number of tokens of the sentence,
    special start and end tokens included (Mask-Predict predicts the length the same way)."""

    def __init__(self, cond_dim: int, max_len: int, hidden: int = 256, standardized: bool = False):
        super().__init__()
        self.norm = Standardizer(cond_dim) if standardized else None  # model.length_input
        self.net = nn.Sequential(nn.Linear(cond_dim, hidden), nn.GELU(), nn.Linear(hidden, max_len + 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z if self.norm is None else self.norm(z))


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # 3x[B,H,L,hd]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = attention(q, k, v, self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class CrossAttention(nn.Module):
    """Attends from the tokens to the condition's memory slots. Keys and values depend only on the
    condition, so ``kv`` is computed once per sequence and reused at every decoding step."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d, d, bias=False)
        self.kv_proj = nn.Linear(d, 2 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, K, D = memory.shape
        k, v = self.kv_proj(memory).view(B, K, 2, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        return k, v  # [B, H, K, hd] each

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, L, D = x.shape
        q = self.q(x).view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2)
        y = attention(q, *kv, self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """Pre-norm transformer block. ``cross``: self-attention, cross-attention, MLP. ``adaln``:
    self-attention and MLP whose norms are modulated and whose outputs are gated by the
    condition. ``prefix``: self-attention and MLP only (the condition is in the sequence)."""

    def __init__(self, cfg: DecoderConfig, d: int):
        super().__init__()
        hidden = int(cfg.mlp_ratio * d)
        self.mode = cfg.conditioning
        affine = self.mode != "adaln"  # AdaLN supplies the scale and shift
        self.norm1, self.norm3 = nn.LayerNorm(d, elementwise_affine=affine), nn.LayerNorm(d, elementwise_affine=affine)
        self.attn = SelfAttention(d, cfg.n_heads, cfg.dropout)
        if self.mode == "cross":
            self.norm2 = nn.LayerNorm(d)
            self.cross = CrossAttention(d, cfg.n_heads, cfg.dropout)
        if self.mode == "adaln":
            self.ada = nn.Linear(d, ADALN_CHUNKS * d)  # zero-initialised by the Decoder
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.drop = nn.Dropout(cfg.dropout)

    def residual_outputs(self) -> list[nn.Linear]:
        """The linear maps that write into the residual stream (scaled by depth at init)."""
        return [self.attn.out] + ([self.cross.out] if self.mode == "cross" else []) + [self.mlp[2]]

    def forward(self, x, cos, sin, cond):
        if self.mode == "adaln":
            # cond: SiLU(c) [B, d] -> six [B, d] vectors
            shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).chunk(ADALN_CHUNKS, dim=-1)
            x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin)
            return x + gate2[:, None] * self.drop(self.mlp(modulate(self.norm3(x), shift2, scale2)))
        x = x + self.attn(self.norm1(x), cos, sin)
        if self.mode == "cross":
            x = x + self.cross(self.norm2(x), cond)
        return x + self.drop(self.mlp(self.norm3(x)))


class Decoder(OutputVocab, nn.Module):
    """x_t [B, L] token ids (some = mask_id), t [B], condition z [B, Dz] -> hidden [B, L, d].

    ``logits(hidden)`` maps any selection of hidden states to vocabulary logits, so callers
    project only the positions they need (the masked ones).
    """

    def __init__(self, cfg: DecoderConfig, vocab_size: int, cond_dim: int, embed_dim: int, mask_id: int,
                 out_vocab: int | None = None):
        super().__init__()
        if cfg.d_model is None:
            raise ValueError("DecoderConfig.d_model must be resolved (the cache's hidden size) before building")
        self.cfg, self.vocab_size, self.cond_dim, self.mask_id = cfg, vocab_size, cond_dim, mask_id
        d, mode = cfg.d_model, cfg.conditioning
        self.tok_emb = nn.Embedding(vocab_size, embed_dim)
        self.emb_in = nn.Linear(embed_dim, d, bias=False) if embed_dim != d else nn.Identity()
        # Absolute positions: RoPE alone is relative, so a fully masked input (every token and
        # every value identical) would give every position the same hidden state and prediction.
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        slots = 1 if mode == "adaln" else cfg.cond_tokens
        self.cond_proj = nn.Linear(cond_dim, slots * d)
        self.null_cond = nn.Parameter(torch.zeros(cond_dim))  # learned "no condition" vector (CFG)
        self.blocks = nn.ModuleList(Block(cfg, d) for _ in range(cfg.n_layers))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=mode != "adaln")
        if mode == "adaln":
            self.ada_out = nn.Linear(d, 2 * d)  # final shift and scale (zero-initialised)
        self.emb_out = nn.Linear(d, embed_dim, bias=False) if embed_dim != d else nn.Identity()
        if not cfg.tie_output:
            self.out_emb = nn.Parameter(torch.empty(vocab_size, embed_dim))
        self._init_output(out_vocab)  # out_bias, and the restricted vocabulary's ids (model.vocab corpus)
        self.length_head = length_head(cfg, cond_dim)
        prefix = cfg.cond_tokens if mode == "prefix" else 0
        cos, sin = rope_tables(prefix + cfg.max_len, d // cfg.n_heads, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        self.apply(self._init)
        if not self.cfg.tie_output:
            nn.init.normal_(self.out_emb, std=0.02)
        for block in self.blocks:  # scale residual outputs by depth (GPT-2)
            for lin in block.residual_outputs():
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * self.cfg.n_layers))
        if self.cfg.conditioning == "adaln":  # AdaLN-Zero: every block starts as the identity
            for lin in [b.ada for b in self.blocks] + [self.ada_out]:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def output_weight(self) -> torch.Tensor:
        """The output matrix [V, E]: the token embeddings (tied) or a separate one."""
        return self.tok_emb.weight if self.cfg.tie_output else self.out_emb

    def load_embeddings(self, weight: torch.Tensor) -> None:
        """Initialise the token embeddings from the encoder's input embeddings [V, E]."""
        if tuple(weight.shape) != tuple(self.tok_emb.weight.shape):
            raise ValueError(f"embeddings of shape {tuple(weight.shape)} do not fit {tuple(self.tok_emb.weight.shape)}")
        with torch.no_grad():
            self.tok_emb.weight.copy_(weight.float())

    def load_output(self, weight: torch.Tensor) -> None:
        """Initialise the separate output matrix from an LM head [V', E] (V' <= V: rows past V',
        such as an appended mask token, stay zero)."""
        if self.cfg.tie_output:
            raise ValueError("the output layer is tied to the embeddings (tie_output); nothing to load")
        V, E = self.out_emb.shape
        if weight.ndim != 2 or weight.shape[1] != E or weight.shape[0] > V:
            raise ValueError(f"LM head of shape {tuple(weight.shape)} does not fit the output layer {(V, E)}")
        with torch.no_grad():
            self.out_emb.zero_()
            self.out_emb[: weight.shape[0]].copy_(weight.float())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- condition -----------------------------------------------------------------------------
    def condition(self, z: torch.Tensor, drop: torch.Tensor | None = None):
        """What the blocks need from condition z [B, Dz], computed once per sequence; rows with
        ``drop`` True use the learned null vector instead (unconditional). Opaque to callers:
        cross -> per-layer (k, v) list; adaln -> the condition embedding [B, d];
        prefix -> the prefix tokens [B, K, d]."""
        z = z.to(self.null_cond.dtype)
        if drop is not None:
            z = torch.where(drop[:, None], self.null_cond.expand_as(z), z)
        cond = self.cond_proj(z)  # [B, slots * d]
        if self.cfg.conditioning == "adaln":
            return cond  # [B, d]
        memory = cond.view(z.shape[0], self.cfg.cond_tokens, self.cfg.d_model)  # [B, K, d]
        if self.cfg.conditioning == "prefix":
            return memory
        return [block.cross.kv(memory) for block in self.blocks]

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None = None,
                drop: torch.Tensor | None = None, kv=None) -> torch.Tensor:
        B, L = x_t.shape
        if L > self.cfg.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.cfg.max_len}")
        if kv is None:
            kv = self.condition(z, drop)
        h = self.emb_in(self.tok_emb(x_t)) + self.pos_emb.weight[:L]  # [B, L, d]
        temb = self.time_mlp(timestep_embedding(t, self.cfg.d_model).to(h.dtype))  # [B, d]
        mode = self.cfg.conditioning
        if mode == "adaln":
            return self._forward_adaln(h, temb, kv)
        h = h + temb[:, None]
        if mode == "prefix":
            K = kv.shape[1]
            h = torch.cat([kv.to(h.dtype), h], dim=1)  # [B, K + L, d]
            cos, sin = self.rope_cos[: K + L], self.rope_sin[: K + L]
            for block in self.blocks:
                h = block(h, cos, sin, None)
            return self.norm_out(h[:, K:])  # [B, L, d]
        cos, sin = self.rope_cos[:L], self.rope_sin[:L]
        for block, layer_kv in zip(self.blocks, kv):
            h = block(h, cos, sin, layer_kv)
        return self.norm_out(h)  # [B, L, d]

    def _forward_adaln(self, h: torch.Tensor, temb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = F.silu(cond.to(temb.dtype) + temb)  # [B, d]
        L = h.shape[1]
        cos, sin = self.rope_cos[:L], self.rope_sin[:L]
        for block in self.blocks:
            h = block(h, cos, sin, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return modulate(self.norm_out(h), shift, scale)  # [B, L, d]

    def length_logits(self, z: torch.Tensor) -> torch.Tensor:
        """[B, Dz] -> [B, max_len + 1] logits over the sentence's token count (special tokens included)."""
        if self.length_head is None:
            raise SgddError("this decoder has no length head (model.length_head false)")
        return self.length_head(z.to(self.null_cond.dtype))

    @property
    def projection(self) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """(the map before the output matrix, the output matrix [V', E], its bias [V']) over the
        output vocabulary: ``logits`` is ``map(hidden) @ W^T + b`` with the mask token
        (``out_mask_id``) ruled out."""
        return self.emb_out, self.restrict(self.output_weight), self.out_bias

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., V] through the output matrix; the mask token is never predicted.

        A selection of rows [M, d] (the masked positions) is padded to a multiple of
        ``ROW_BUCKET`` rows: M changes at every step, and oneDNN compiles and caches a kernel
        per matrix shape, which in bf16 grew a training process by gigabytes (and cost a
        compile per new shape). Bucketing keeps the shapes to a handful.
        """
        return self.widen(self.out_logits(hidden))
