"""Speculative greedy decoding with the MTP head as drafter (draft, verify, roll back).

The base causal LM generates greedily with its KV cache. Before each verification pass it has
processed the sequence up to some token x_n, holds the hidden state h_n there and knows its own
next token b = argmax LM(h_n) (not yet processed). Then:

1. **draft**: the MTP head decodes a block of L tokens conditioned on h_n with b given at
   position 0, in ``draft_passes`` denoising passes of any sampler: drafts d_1 .. d_{L-1};
2. **verify**: one forward of the base model over [b, d_1, .., d_{L-1}] gives its greedy token
   g_j after each of them; d_{j+1} is accepted while d_{j+1} == g_j, left to right;
3. **roll back**: the KV cache keeps b and the a accepted drafts, the rest is cropped; the new
   "next token" is g_a, the base model's own token after the last accepted one.

One pass therefore adds a + 1 tokens (accepted drafts + the base model's own token), at most L
(more where a prompt lookup drafts further): the ``acceptance_length`` (Medusa's acceleration
rate, EAGLE's tau).

A draft may also be a tree (:class:`TreeDraft`, Medusa's tree attention): several candidate
tokens per position, each attending only to its own ancestors in the same verification forward
(a 4D attention mask, positions by depth). The walk from b follows, at each node, the child whose
token is the base model's greedy token there; the KV cache keeps b and the walked path.

Whatever the drafts, the output is the base model's greedy output, token for token; :func:`greedy`
is the reference loop (one token per forward, same KV cache and code path) it is compared with.

A drafter is any callable ``(h [H] float32, context) -> drafts``, where the context is the
prompt and the output so far, ending with b; :class:`HeadDrafter` wraps a trained head, and
:class:`LookupDrafter` adds prompt lookup (:func:`context_draft`) beside it or drafts by it
alone. :func:`speculate` and :func:`greedy` take a :class:`BaseLM` (the base model of a
:class:`sgdd.models.causal_lm.FrozenCausalLM`), so a notebook can call them directly.
"""

from __future__ import annotations

import heapq
import inspect
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from sgdd.decoding.maskgit import decode, first_pass_hidden
from sgdd.decoding.samplers import Sampling
from sgdd.models import fewrows
from sgdd.runtime import Precision


@dataclass(frozen=True)
class TreeDraft:
    """Draft tokens as a tree below the known token b: ``parents[i]`` is the index of node i's
    parent (-1: b itself); parents come before their children."""

    tokens: list[int]
    parents: list[int]

    @classmethod
    def chain(cls, tokens: Sequence[int]) -> "TreeDraft":
        return cls(list(tokens), list(range(-1, len(tokens) - 1)))

    @property
    def is_chain(self) -> bool:
        return self.parents == list(range(-1, len(self.tokens) - 1))

    def keep(self, ok: Sequence[bool]) -> "TreeDraft":
        """Only the nodes with ``ok`` whose ancestors are all kept (indices renumbered)."""
        new_index: dict[int, int] = {-1: -1}
        tokens, parents = [], []
        for i, (token, parent) in enumerate(zip(self.tokens, self.parents)):
            if ok[i] and parent in new_index:
                new_index[i] = len(tokens)
                tokens.append(token)
                parents.append(new_index[parent])
        return TreeDraft(tokens, parents)

    def attention(self) -> torch.Tensor:
        """[1 + n, 1 + n] bool: row j (b, then node j - 1) may see column k (itself and its ancestors)."""
        n = len(self.tokens)
        see = torch.eye(n + 1, dtype=torch.bool)
        see[:, 0] = True
        for i, parent in enumerate(self.parents):
            see[i + 1] |= see[parent + 1]
        return see

    def depths(self) -> list[int]:
        """Depth of b (0) and of every node."""
        depth = [0]
        for parent in self.parents:
            depth.append(depth[parent + 1] + 1)
        return depth

    def merged(self, other: "TreeDraft", nodes: int | None = None) -> "TreeDraft":
        """This tree with ``other``'s nodes added after its own, as a trie: a node whose path from b
        is here already is not added twice. ``other``'s nodes go in its order, each only while the
        tree holds fewer than ``nodes`` nodes (None: no cap) and only when its parent is in."""
        tokens, parents = list(self.tokens), list(self.parents)
        child = {(p, t): i for i, (t, p) in enumerate(zip(tokens, parents))}  # (parent, token) -> node
        here = {-1: -1}  # other's node -> this tree's
        for i, (token, parent) in enumerate(zip(other.tokens, other.parents)):
            if parent not in here:
                continue
            key = (here[parent], token)
            if key not in child:
                if nodes is not None and len(tokens) >= nodes:
                    continue
                child[key] = len(tokens)
                tokens.append(token)
                parents.append(here[parent])
            here[i] = child[key]
        return TreeDraft(tokens, parents)

    def walk(self, verdict: list[int]) -> list[int]:
        """The accepted nodes: from b, while a child of the last accepted node holds the base
        model's greedy token after it (``verdict`` [1 + n]: b's, then each node's)."""
        path, here = [], -1
        while True:
            child = next((i for i, (t, p) in enumerate(zip(self.tokens, self.parents))
                          if p == here and t == verdict[here + 1]), None)
            if child is None:
                return path
            path.append(child)
            here = child


Drafter = Callable[[torch.Tensor, list[int]], "list[int] | TreeDraft"]


def context_draft(context: Sequence[int], tokens: int, longest: int = 3, shortest: int = 1) -> list[int]:
    """Prompt lookup (Saxena 2023; LLMA, Yang et al. 2023): the up to ``tokens`` tokens that followed
    the latest earlier occurrence of the context's last n tokens, for the largest n from
    ``longest`` down to ``shortest`` that occurs before; [] if none does. Text that repeats itself
    or its prompt (a small model's greedy output often loops) is then drafted at no model cost."""
    last = context[-1] if context else None
    for n in range(min(longest, len(context) - 1), shortest - 1, -1):
        key = list(context[-n:])
        for end in range(len(context) - 2, n - 2, -1):  # the last token of an earlier occurrence
            if context[end] == last and list(context[end - n + 1 : end + 1]) == key:
                return list(context[end + 1 : end + 1 + tokens])
    return []


class LookupDrafter:
    """Prompt lookup beside another drafter: the chain :func:`context_draft` finds (``tokens`` long
    at most, from a match of ``longest`` down to ``shortest`` tokens) first, then ``inner``'s draft
    merged into it as a tree (:meth:`TreeDraft.merged`), at most ``nodes`` nodes in all (None: no
    cap). ``inner`` None: the lookup alone. Where the chain fills the cap, ``inner`` is not asked
    (none of its nodes could enter)."""

    def __init__(self, inner: "Drafter | None", tokens: int, longest: int = 3, nodes: int | None = None,
                 shortest: int = 1):
        if tokens < 1 or not 1 <= shortest <= longest or (nodes is not None and nodes < 1):
            raise ValueError(f"prompt lookup needs tokens and nodes >= 1 and 1 <= shortest <= longest, got tokens "
                             f"{tokens}, nodes {nodes}, shortest {shortest}, longest {longest}")
        self.inner, self.tokens, self.longest, self.nodes, self.shortest = inner, tokens, longest, nodes, shortest

    def __call__(self, h: torch.Tensor, context: list[int]) -> TreeDraft:
        found = context_draft(context, self.tokens, self.longest, self.shortest)
        tree = TreeDraft.chain(found[: self.nodes] if self.nodes is not None else found)
        if self.inner is None or (self.nodes is not None and len(tree.tokens) == self.nodes):
            return tree
        other = self.inner(h, context)
        return tree.merged(other if isinstance(other, TreeDraft) else TreeDraft.chain(other), self.nodes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BaseLM:
    """One sequence through a causal LM with a KV cache: ``start`` (the prompt), ``extend``
    (new tokens), ``rollback`` (crop the cache). ``lm``: a FrozenCausalLM (its ``base``
    transformer, LM ``head``, ``device``, ``precision``). ``layer``: the hidden state the MTP
    head was trained on (-1 = the LM head's input, as the cache stored it); ``stored_dtype``:
    the cache's dtype of it, so the head sees h rounded as in training. On CPU the model's linear
    layers compute a verification's few rows as W @ x^T in fp32 (:mod:`sgdd.models.fewrows`;
    ``few_rows=False`` leaves the model as it is) and a greedy step's one row in the form
    ``one_row`` names: ``auto`` times both forms on a short prompt and keeps the faster
    (``one_row_ms``). In bf16 (``lm.precision``) the linear layers hold bf16 weights
    (:func:`weights_in_precision`); ``auto`` is then the padded form and the model attends with
    :func:`sgdd.models.fewrows.rowwise_attention`, so that a verification computes every row
    bit for bit as the greedy step would. Both loops use the same layers."""

    def __init__(self, lm, layer: int = -1, stored_dtype: torch.dtype = torch.float32, few_rows: bool = True,
                 one_row: str = "auto"):
        self.lm, self.layer, self.stored_dtype = lm, layer, stored_dtype
        self.device: torch.device = lm.device
        self.precision: Precision = lm.precision
        self.cache = None
        self.forwards = 0
        # transformers >= 5.x names the argument ``cache`` (``past_key_values`` is deprecated there)
        params = inspect.signature(lm.base.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.one_row, self.one_row_ms = "linear", {}
        if one_row != "auto" and one_row not in fewrows.ONE_ROW_FORMS:
            raise ValueError(f"unknown one-row form {one_row!r} (use auto, {', '.join(fewrows.ONE_ROW_FORMS)})")
        low = weights_in_precision(lm.model, self.precision)
        if low and self.device.type == "cpu":
            fewrows.use_rowwise_attention(lm.model)
        if few_rows and self.device.type == "cpu":
            fewrows.use_few_rows(lm.model)
            if one_row == "auto" and low:
                fewrows.set_one_row(lm.model, "padded")  # the form whose rows match a verification's
                self.one_row = "padded"
            elif one_row == "auto":
                self.one_row, self.one_row_ms = self._fastest_one_row()
            else:
                fewrows.set_one_row(lm.model, one_row)
                self.one_row = one_row

    def _fastest_one_row(self, prompt_tokens: int = 32) -> tuple[str, dict[str, float]]:
        """:func:`sgdd.models.fewrows.fastest_one_row` over one greedy step after a short prompt."""
        self.start([i % self.lm.model.config.vocab_size for i in range(1, prompt_tokens + 1)], hidden=False)

        def step() -> None:
            self.extend([1], hidden=False)
            self.rollback(prompt_tokens)

        found = fewrows.fastest_one_row(self.lm.model, step)
        self.cache, self.forwards = None, 0
        return found

    @property
    def length(self) -> int:
        """Tokens in the KV cache."""
        return 0 if self.cache is None else self.cache.get_seq_length()

    @torch.inference_mode()
    def _forward(self, ids: list[int], hidden: bool, tree: TreeDraft | None = None,
                 last_only: bool = False) -> tuple[list[int], torch.Tensor | None]:
        x = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, n]
        want_layer = hidden and self.layer != -1
        extra = {}
        if tree is not None:  # ids = [b, *tree.tokens]: positions by depth, each sees its ancestors
            past = self.length
            see = torch.ones(len(ids), past + len(ids), dtype=torch.bool)
            see[:, past:] = tree.attention()
            mask = see  # SDPA takes it as it is (True: attend); eager attention adds a float mask
            if getattr(self.lm.model.config, "_attn_implementation", None) not in ("sdpa", fewrows.ROWWISE_ATTENTION):
                dtype = self.lm.base.dtype
                mask = torch.zeros(see.shape, dtype=dtype).masked_fill_(~see, torch.finfo(dtype).min)
            extra = {"attention_mask": mask[None, None].to(self.device),
                     "position_ids": torch.tensor([[past + d for d in tree.depths()]], device=self.device)}
        out = self.lm.base(input_ids=x, **{self._cache_arg: self.cache}, use_cache=True,
                           output_hidden_states=want_layer, **extra)
        rows = slice(-1, None) if last_only else slice(None)  # a prompt needs its last row only
        last = out.last_hidden_state[0, rows]  # [n, H] after the final norm: the LM head's input
        greedy = self.lm.head(last).argmax(-1)  # [n]
        self.forwards += 1  # (the DynamicCache grew in place)
        h = None
        if hidden:
            h = (out.hidden_states[self.layer][0, rows] if want_layer else last).to(self.stored_dtype).float()  # [n, H]
        return greedy.tolist(), h

    def start(self, prompt: list[int], hidden: bool = True) -> tuple[int, torch.Tensor | None]:
        """A new sequence: process the prompt -> (its next token, h at its last position [H])."""
        if not prompt:
            raise ValueError("an empty prompt")
        from transformers import DynamicCache

        self.cache = DynamicCache()
        greedy, h = self._forward(prompt, hidden, last_only=True)
        return greedy[-1], None if h is None else h[-1]

    def extend(self, ids: list[int], hidden: bool = True, tree: TreeDraft | None = None) -> tuple[list[int], torch.Tensor | None]:
        """Process ``ids`` after the cached tokens -> (greedy token after each [n], hidden [n, H]).
        With ``tree`` (ids = [b, *tree.tokens]) each draft token sees only b and its ancestors."""
        return self._forward(ids, hidden, tree)

    @torch.inference_mode()
    def keep(self, start: int, offsets: list[int]) -> None:
        """Keep the first ``start`` cached tokens and those at ``start + offsets`` (increasing),
        in that order: what a tree verification walked. The kept entries move up in place, then
        the rest is cropped (a plain prefix is only a crop)."""
        if offsets != list(range(len(offsets))):
            src = torch.tensor([start + o for o in offsets], device=self.device)
            layers = getattr(self.cache, "layers", None)  # transformers 5: one DynamicLayer per layer
            stores = ([layer.keys for layer in layers] + [layer.values for layer in layers] if layers is not None
                      else [*self.cache.key_cache, *self.cache.value_cache])  # transformers 4
            for t in stores:  # [B, heads, S, d]
                t[..., start : start + len(offsets), :] = t.index_select(-2, src)
        self.rollback(start + len(offsets))

    def rollback(self, keep: int) -> None:
        """Keep the first ``keep`` cached tokens. ``crop(-n)`` drops the last n tokens in every
        transformers version that has DynamicCache.crop (4.x: negative = tokens to remove;
        5.x: only negative values are accepted)."""
        drop = self.length - keep
        assert drop >= 0, (self.length, keep)
        if drop:
            self.cache.crop(-drop)
        assert self.length == keep


def weights_in_precision(model: torch.nn.Module, precision: Precision) -> bool:
    """Give an inference-only model's linear layers weights in ``precision``'s dtype, in place
    (:func:`sgdd.models.fewrows.use_low_precision_weights`; a model converted before stays as it
    is) -> whether its weights are in a lower precision than fp32. No autocast then: no weight is
    cast at every call (a verification pass or a draft is a few rows, and reading the weights is
    most of its cost), and activations, norms and attention stay fp32."""
    if precision.autocast_dtype is None:
        return False
    fewrows.use_low_precision_weights(model, precision.autocast_dtype)
    return True


def _finish(tokens: list[int], max_new_tokens: int, eos_id: int | None) -> list[int]:
    """Cut at ``max_new_tokens`` and after the first end token."""
    tokens = tokens[:max_new_tokens]
    if eos_id is not None and eos_id in tokens:
        tokens = tokens[: tokens.index(eos_id) + 1]
    return tokens


@dataclass
class Generation:
    """One prompt's continuation."""

    tokens: list[int]  # new tokens (ending at the first end token, if one came)
    seconds: float  # wall clock, prompt included
    forwards: int  # base-model forward passes (the prompt's included)
    accepted: list[int] = field(default_factory=list)  # speculative: tokens added by each verification pass
    drafted: list[int] = field(default_factory=list)  # speculative: drafts each verification pass checked
    draft_seconds: float = 0.0  # speculative: time spent in the drafter


def greedy(lm: BaseLM, prompt: list[int], max_new_tokens: int, eos_id: int | None = None) -> Generation:
    """Plain greedy decoding with the KV cache: one forward per new token."""
    _sync(lm.device)
    start, forwards = time.perf_counter(), lm.forwards
    token, _ = lm.start(prompt, hidden=False)
    out = [token]
    while len(out) < max_new_tokens and token != eos_id:
        token = lm.extend([token], hidden=False)[0][-1]
        out.append(token)
    _sync(lm.device)
    return Generation(_finish(out, max_new_tokens, eos_id), time.perf_counter() - start, lm.forwards - forwards)


def speculate(lm: BaseLM, drafter: Drafter, prompt: list[int], max_new_tokens: int,
              eos_id: int | None = None, vocab_size: int | None = None) -> Generation:
    """Greedy decoding of ``prompt`` with ``drafter``'s drafts verified by ``lm`` (module docstring).
    Drafts from ``vocab_size`` on (e.g. the head's mask token) end the draft there."""
    _sync(lm.device)
    start, forwards, drafting = time.perf_counter(), lm.forwards, 0.0
    token, h = lm.start(prompt)
    out, accepted, drafted = [token], [], []
    while len(out) < max_new_tokens and token != eos_id:
        t0 = time.perf_counter()
        tree = drafter(h, prompt + out)
        _sync(lm.device)
        drafting += time.perf_counter() - t0
        tree = tree if isinstance(tree, TreeDraft) else TreeDraft.chain(tree)
        if vocab_size is not None:
            tree = tree.keep([0 <= d < vocab_size for d in tree.tokens])
        before = lm.length
        verdict, hidden = lm.extend([token] + tree.tokens, tree=None if tree.is_chain else tree)  # [1 + D], [1 + D, H]
        path = tree.walk(verdict)
        lm.keep(before + 1, path)  # b and the accepted drafts stay
        last = path[-1] + 1 if path else 0
        drafts = [tree.tokens[i] for i in path]
        out += drafts + [verdict[last]]
        accepted.append(len(path) + 1)
        drafted.append(len(tree.tokens))
        token, h = verdict[last], hidden[last]
        if eos_id is not None and eos_id in drafts:
            break
    _sync(lm.device)
    return Generation(_finish(out, max_new_tokens, eos_id), time.perf_counter() - start, lm.forwards - forwards,
                      accepted, drafted, drafting)


class _DraftView:
    """The head as :func:`decode` sees it, except for its vocabulary projection:

    - the few open rows of a draft (at most L - 1) are not padded to the decoder's row bucket
      (128 rows: 40x the work of a 3-token draft at a 49k vocabulary), so that the projection
      runs as W @ x^T on CPU (:func:`sgdd.models.fewrows.linear`);
    - with ``vocab`` (token ids [N]; default every token the head can write), only those rows of
      the output matrix are computed and every other token gets -inf. A one-layer head's draft is
      mostly the read of its output matrix (49k x 576 floats for SmolLM2), so a draft over the N
      tokens the head was trained to predict costs a fraction of one over the whole vocabulary;
    - ``draft_logits`` gives the N columns alone, for drafts that need only their argmax or top k.

    Everything else is the head's own."""

    def __init__(self, model, vocab: torch.Tensor | None = None):
        self._model = model
        self._head, weight, bias = model.projection  # over the head's output vocabulary (model.vocab)
        if vocab is None:  # every token the head can write
            vocab = torch.arange(model.vocab_size) if model.out_vocab is None else model.out_vocab
            rows = None
        else:
            rows = model.out_index(vocab)  # [N] the tokens' rows in it
        self.vocab = vocab.to(weight.device)
        self._weight = (weight if rows is None else weight[rows]).detach().contiguous()  # [N, E]
        self._bias = (bias if rows is None else bias[rows]).detach().contiguous()  # [N]
        mask = self.vocab == model.mask_id
        if bool(mask.any()):  # never drafted
            self._bias = self._bias.masked_fill(mask, float("-inf"))

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        return self._model(*args, **kwargs)

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., N] logits over the draft vocabulary ``self.vocab`` only (the mask -inf)."""
        return fewrows.linear(self._head(hidden), self._weight, self._bias)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., V] (what :func:`decode` reads), -inf outside the draft vocabulary."""
        part = self.draft_logits(hidden)  # [..., N]
        out = part.new_full((*part.shape[:-1], self._model.vocab_size), float("-inf"))
        out[..., self.vocab] = part
        return out


class HeadDrafter:
    """A trained MTP head as drafter: a block of ``block_length`` tokens conditioned on h, the
    base model's own next token given at position 0, decoded in ``sampling.steps`` passes.
    ``vocab``: the token ids [N] the drafts may use (default all; see :func:`draft_vocabulary`).
    ``min_prob``: a draft token whose probability under the head (when it was committed) is below
    this is not sent, nor is anything after it; a verification over fewer tokens costs less (0:
    always the whole block). ``width``: candidates per drafted position, one number for all L - 1
    or one per position (the positions after the last are not drafted). Other than all ones, the
    draft is a :class:`TreeDraft` from one pass of the head: its best token at each position as a
    chain, and beside the chain's token the position's next ``width - 1`` candidates as leaves
    (all verified in one forward). ``nodes`` (instead of widths): a tree shaped anew for every
    draft, of the ``nodes`` token paths most probable under the head's one pass, a path's
    probability being the product of its tokens' (EAGLE-2's dynamic draft tree, Li et al. 2024,
    with the head's per-position probabilities in place of a drafter's conditional ones)."""

    def __init__(self, model, block_length: int, sampling: Sampling, device: torch.device, precision: Precision,
                 seed: int = 0, vocab: torch.Tensor | None = None, min_prob: float = 0.0,
                 width: int | Sequence[int] = 1, nodes: int | None = None):
        if not 0.0 <= min_prob <= 1.0:
            raise ValueError(f"min_prob must lie in [0, 1], got {min_prob}")
        widths = (width,) * (block_length - 1) if isinstance(width, int) else tuple(width)
        if not widths or len(widths) > block_length - 1 or min(widths) < 1:
            raise ValueError(f"draft widths {list(widths)}: give 1 to {block_length - 1} positive widths")
        tree = widths != (1,) * (block_length - 1)
        if tree and sampling.steps != 1:
            raise ValueError(f"a draft tree {list(widths)} needs one draft pass, not {sampling.steps}")
        if nodes is not None and (nodes < 1 or tree or sampling.steps != 1):
            raise ValueError(f"a tree of the {nodes} most probable paths needs nodes >= 1, one draft pass "
                             "and no widths")
        model = model.to(device).eval()
        weights_in_precision(model, precision)
        if device.type == "cpu":
            fewrows.use_few_rows(model)
        vocab = None if vocab is None else vocab.to(device)
        self.model, self.L, self.device, self.precision = _DraftView(model, vocab), block_length, device, precision
        self.sampling, self.min_prob, self.widths = sampling.check(), min_prob, widths if tree else None
        self.nodes = nodes
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, h: torch.Tensor, context: list[int]) -> list[int] | TreeDraft:
        z = h[None].to(self.device)  # [1, H]
        if self.widths is not None:
            return self._tree(z, context[-1])
        if self.nodes is not None:
            return self._likeliest_paths(z, context[-1])
        if self.one_greedy_pass:  # what decode's single greedy step commits, without its bookkeeping
            probs, ids = self._first_pass(z, context[-1]).max(-1)  # [L - 1] each
            drafts, sure = self.model.vocab[ids].tolist(), (probs >= self.min_prob).tolist()
        else:
            prefix = torch.tensor([context[-1:]], dtype=torch.long, device=self.device)  # [1, 1] the known token b
            out, trajectory = decode(self.model, z, generator=self.generator, length=self.L, prefix=prefix,
                                     sampling=self.sampling, return_trajectory=True)  # [1, L]
            drafts, sure = out[0, 1:].tolist(), (trajectory.token_logp[0, 1:].exp() >= self.min_prob).tolist()
        return drafts[: sure.index(False)] if False in sure else drafts

    @property
    def one_greedy_pass(self) -> bool:
        """One pass at temperature 0 with nothing that reweights the logits: every open position
        takes its most probable token, so the draft needs no more than the first pass's argmax."""
        s = self.sampling
        return s.steps == 1 and s.temperature == 0 and not s.repetition_penalty and not s.cfg_scale

    def _first_pass(self, z: torch.Tensor, known: int) -> torch.Tensor:
        """The head's first pass over [known, mask, ...] -> the probabilities [L - 1, N] of each
        open position over the draft vocabulary ``self.model.vocab``."""
        x = torch.full((1, self.L), self.model.mask_id, dtype=torch.long, device=self.device)  # [1, L]
        x[0, 0] = known
        logits = self.model.draft_logits(first_pass_hidden(self.model, z, x, self.L - 1))  # [L - 1, N]
        return logits.float().softmax(-1)

    def _tree(self, z: torch.Tensor, known: int) -> TreeDraft:
        probs, ids = self._first_pass(z, known).topk(max(self.widths), dim=-1)  # [L - 1, max width] each
        ids = self.model.vocab[ids]
        tokens, parents, sure, chain = [], [], [], -1
        for depth, width in enumerate(self.widths):
            tokens += ids[depth, :width].tolist()
            sure += (probs[depth, :width] >= self.min_prob).tolist()
            parents += [chain] * width
            chain = len(tokens) - width  # this depth's best token carries the chain on
        return TreeDraft(tokens, parents).keep(sure)

    def _likeliest_paths(self, z: torch.Tensor, known: int) -> TreeDraft:
        """The ``nodes`` most probable paths below b, best first. A path's probability is the product
        of its tokens' under the first pass, so a path never outscores its prefix: growing the tree
        from a heap of the chosen nodes' children takes every parent before its children."""
        first = self._first_pass(z, known)  # [L - 1, N]
        probs, ids = first.topk(min(self.nodes, first.shape[-1]), dim=-1)  # [L - 1, k] each
        probs, ids = probs.tolist(), self.model.vocab[ids].tolist()
        frontier = [(-probs[0][r], (r,)) for r in range(len(probs[0]))]
        heapq.heapify(frontier)
        index: dict[tuple[int, ...], int] = {(): -1}
        tokens, parents, sure = [], [], []
        while frontier and len(tokens) < self.nodes:
            neg, path = heapq.heappop(frontier)
            depth = len(path) - 1
            index[path] = len(tokens)
            tokens.append(ids[depth][path[-1]])
            parents.append(index[path[:-1]])
            sure.append(probs[depth][path[-1]] >= self.min_prob)
            if depth + 1 < len(probs):
                for r, p in enumerate(probs[depth + 1]):
                    heapq.heappush(frontier, (neg * p, path + (r,)))
        return TreeDraft(tokens, parents).keep(sure)


def draft_vocabulary(labels: Iterable[Sequence[int]], size: int, exclude: Sequence[int] = ()) -> torch.Tensor:
    """The ``size`` most frequent token ids of ``labels`` (sequences of ids; ties: the smaller id
    first), none of ``exclude`` -> sorted ids [<= size]. Drafting only these leaves the output
    unchanged (the verifier decides every token) and costs only the drafts of the other tokens."""
    if size < 1:
        raise ValueError(f"a draft vocabulary needs at least one token, got size {size}")
    counts: Counter[int] = Counter()
    for ids in labels:
        counts.update(ids)
    for token in exclude:
        counts.pop(token, None)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
    return torch.tensor(sorted(k for k, _ in top), dtype=torch.long)
