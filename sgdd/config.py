"""The config engine: nested dataclasses <-> YAML with strict keys, dotted overrides, and checks.

Every field carries its documentation in a ``metadata={"help": ...}`` entry (:func:`doc`) so that
``--help`` texts, YAML files and error messages speak of the same thing. A config class checks
itself: its ``problems()`` method returns every cross-field problem as one short sentence, and
:func:`from_dict` / :func:`validate` raise them together in one error. A stage config names the
section it reads from a `sgdd run` file in ``RUN_SECTION``.

This module sits at the bottom of the package: it imports nothing from sgdd but the error type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from sgdd.errors import SgddError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RUN_FILE_SECTIONS = ("collect", "train", "eval")


def doc(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help text (lists and dicts get a default factory)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def yaml_scalar(raw: str) -> Any:
    """A command-line value read as YAML (``3``, ``true``, ``null``, ``[a, b]``), with YAML 1.1's
    one surprise undone: ``1e-4`` (no dot) is a float, not a string."""
    value = yaml.safe_load(raw)
    return number_or_str(value)


def number_or_str(value: Any) -> Any:
    """``"1e-4"`` -> ``1e-4``; any other value unchanged (YAML 1.1 reads a dotless exponent as text)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def problems_of(cfg: Any) -> list[str]:
    """Every problem the config reports about itself (none for a class without ``problems()``)."""
    check = getattr(cfg, "problems", None)
    return check() if check else []


def validate(cfg: Any) -> None:
    problems = problems_of(cfg)
    if problems:
        raise SgddError(f"invalid {type(cfg).__name__}: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# dict / YAML conversion with strict keys
# --------------------------------------------------------------------------------------------
def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the few safe cases (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = coerce(value, arg, where, trial)
            if not trial:
                return out
        problems.append(f"{where}: expected {tp}, got {value!r}")
        return value
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return tp()
        return _from_dict(tp, value, where, problems)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {value!r}")
            return value
        (item,) = typing.get_args(tp)
        return [coerce(v, item, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        value = number_or_str(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            problems.append(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def _from_dict(cls: type, data: dict, where: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            problems.append(f"{where + '.' if where else ''}{key}: unknown key (valid: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = coerce(data[f.name], hints[f.name], f"{where + '.' if where else ''}{f.name}", problems)
    return cls(**kwargs)


def from_dict(cls: type, data: dict | None) -> Any:
    """Build ``cls`` from a plain dict; every unknown key and wrong type is listed in one error."""
    problems: list[str] = []
    cfg = _from_dict(cls, data or {}, "", problems)
    if problems:
        raise SgddError(f"invalid {cls.__name__}: " + "; ".join(problems))
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def load_yaml(path: str | Path, cls: type) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SgddError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SgddError(f"config file {path} is not valid YAML: {e}".replace("\n", " ")) from None
    if data is not None and not isinstance(data, dict):
        raise SgddError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    section = getattr(cls, "RUN_SECTION", None)
    if section and data and set(data) <= set(RUN_FILE_SECTIONS):  # a `sgdd run` file: this stage's part
        data = run_section(data, section)
    return from_dict(cls, data)


def run_section(data: dict, section: str) -> dict:
    """One stage's section of a `sgdd run` file, linked to the stage before it as `sgdd run` links
    them: train reads the collected cache (collect.out), eval the trained run (train.out)."""
    out = dict(data.get(section) or {})
    before = {"train": ("shards", "collect"), "eval": ("run", "train")}.get(section)
    if before and out.get(before[0]) is None and (data.get(before[1]) or {}).get("out"):
        out[before[0]] = data[before[1]]["out"]
    return out


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of ``cfg`` with dotted keys (``model.d_model``) replaced."""
    data = to_dict(cfg)
    for key, value in overrides.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise SgddError(f"unknown config key {key!r}")
            node = node[p]
        if last not in node:
            raise SgddError(f"unknown config key {key!r}")
        node[last] = value
    return from_dict(type(cfg), data)


def diff_dicts(old: dict, new: dict, ignore: frozenset[str] = frozenset(), prefix: str = "") -> list[str]:
    """``key: old -> new`` for every differing leaf of two nested dicts (dotted keys in ``ignore``
    are left out): how refusals list what changed."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_dicts(a, b, ignore, f"{prefix}{key}.")
        elif a != b and f"{prefix}{key}" not in ignore:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def parse_set(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as YAML scalars (``3``, ``1e-4``, ``true``)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SgddError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml_scalar(raw)
        except yaml.YAMLError as e:  # e.g. a !!python/object tag: never constructed
            reason = str(e).splitlines()[0]
            raise SgddError(f"--set {item!r}: the value is not a plain YAML scalar or list ({reason})") from None
        out[key.strip()] = value
    return out
