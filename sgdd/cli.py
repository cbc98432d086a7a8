"""The `sgdd` command line: collect, train, eval, run, speculate, cache {info,verify}.

Every stage option is generated from its config dataclass, so `--help`, YAML files and
error messages describe the same fields. `--config FILE` loads a YAML file first; options
given on the command line override it.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import typing
from pathlib import Path
from typing import Any, Callable

import click

from sgdd.config import apply_overrides, load_yaml, parse_set
from sgdd.errors import SgddError
from sgdd.models.fewrows import ONE_ROW_FORMS
from sgdd.pipeline.run import RunConfig
from sgdd.stages.collect.config import CollectConfig
from sgdd.stages.evaluate.config import EvalConfig
from sgdd.stages.speculate import SpeculateConfig
from sgdd.stages.train.config import TrainConfig


# ------------------------------------------------------------------------------------------------
# options generated from config dataclasses
# ------------------------------------------------------------------------------------------------
def _leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += _leaf_fields(tp, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f, tp))
    return out


def _base_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) else tp


def _default_of(cls: type, dotted: str) -> Any:
    obj: Any = cls()
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# Enumerated fields -> their valid values (tests/test_cli_conventions.py checks them against the
# registries, which are not imported here so that `sgdd --help` stays fast).
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
CHOICES: dict[tuple[type, str], list[str]] = {
    (CollectConfig, "model_kind"): ["auto", "encoder", "causal_lm"],
    (CollectConfig, "pooling"): ["mean", "cls"],
    (CollectConfig, "dtype"): ["bf16", "fp16", "fp32"],
    (CollectConfig, "precision"): PRECISIONS,
    (TrainConfig, "model.conditioning"): ["cross", "adaln", "prefix"],
    (TrainConfig, "model.init_body"): ["none", "encoder"],
    (TrainConfig, "model.vocab"): ["full", "corpus"],
    (TrainConfig, "diffusion.schedule"): ["linear", "cosine", "polynomial", "loglinear"],
    (TrainConfig, "diffusion.loss_weight"): ["elbo", "ones", "path", "cart"],
    (TrainConfig, "precision"): PRECISIONS,
    (TrainConfig, "view"): ["auto", "sentence", "next_block"],
    (TrainConfig, "block_tail"): ["skip", "ignore"],
    (TrainConfig, "report_to"): ["tensorboard", "wandb"],
    (EvalConfig, "checkpoint"): ["best", "last"],
    (EvalConfig, "sampler"): ["maskgit_plus", "random", "entropy", "topk_margin", "llada", "threshold"],
    (EvalConfig, "candidate_samplers"): ["maskgit_plus", "random", "entropy", "topk_margin", "llada", "threshold"],
    (EvalConfig, "schedule"): ["cosine", "linear", "square", "cubic", "sqrt"],
    (EvalConfig, "precision"): PRECISIONS,
    (SpeculateConfig, "one_row"): ["auto", *ONE_ROW_FORMS],
}
# Fields whose option is named otherwise than the field: a flattened name that would mean different
# things in different commands, or a clearer name (--cache for the field `shards`, which names a
# cache directory). The old spelling still works, hidden from --help; config keys do not change.
RENAMED: dict[tuple[type, str], str] = {
    (TrainConfig, "shards"): "cache",
    (EvalConfig, "shards"): "cache",
    (TrainConfig, "diffusion.schedule"): "noise-schedule",
    (EvalConfig, "schedule"): "unmask-schedule",
    (EvalConfig, "block_length"): "decode-block-length",
}
NULL_WORDS = ("null", "none")


class _Null:
    """An option value that sets a field to None (``--d-model null``)."""

    def __repr__(self) -> str:
        return "null"


NULL = _Null()


class Nullable(click.ParamType):
    """``inner`` (a click type) or the word null/none."""

    def __init__(self, inner: click.ParamType):
        self.inner = inner
        self.name = f"{inner.name}|null"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in NULL_WORDS:
            return NULL
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, param: Any, ctx: Any = None) -> str:
        inner = self.inner.get_metavar(param, ctx) if isinstance(self.inner, click.Choice) else self.inner.name.upper()
        return f"{inner}|null" if inner else "VALUE|null"


def _option_type(cls: type, dotted: str, base: Any, optional: bool) -> click.ParamType:
    choices = CHOICES.get((cls, dotted))
    inner = click.Choice(choices) if choices else click.types.convert_type(base)
    return Nullable(inner) if optional else inner


def config_options(cls: type, skip: tuple[str, ...] = ()) -> Callable:
    """Add one click option per leaf field of ``cls``; the command receives ``overrides``:
    a dict of dotted keys for the options given. Enumerated fields take a click.Choice, optional
    ones also accept null, and the fields in ``RENAMED`` get their own name (the old one hidden)."""
    fields = [x for x in _leaf_fields(cls) if x[0] not in skip]
    by_param: dict[str, str] = {}
    aliases: dict[str, str] = {}  # hidden old spelling's parameter -> the renamed parameter

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            for alias, param in aliases.items():
                old = kwargs.pop(alias)
                if old is not None and kwargs.get(param) is None:
                    kwargs[param] = old
            overrides = {}
            for param, dotted in by_param.items():
                value = kwargs.pop(param)
                if value is None or value == ():
                    continue
                if value is NULL:
                    value = None
                overrides[dotted] = list(value) if isinstance(value, tuple) else value
            return fn(overrides=overrides, **kwargs)

        for dotted, f, tp in reversed(fields):
            base = _base_type(tp)
            optional = base is not tp
            name = RENAMED.get((cls, dotted), f.name.replace("_", "-"))
            default = _default_of(cls, dotted)
            help_text = f"{f.metadata.get('help', '')} [default: {'null' if default is None else default}]"
            if base is bool:
                decl, kw = f"--{name}/--no-{name}", {"default": None}
            elif typing.get_origin(base) is list:
                name = name[:-1] if name.endswith("s") else name
                choices = CHOICES.get((cls, dotted))
                decl, kw = f"--{name}", {"multiple": True, "type": click.Choice(choices) if choices else str}
                help_text += " (repeat the option for several)"
            else:
                decl, kw = f"--{name}", {"default": None, "type": _option_type(cls, dotted, base, optional)}
            param = name.replace("-", "_")
            by_param[param] = dotted
            if (cls, dotted) in RENAMED:
                old = f.name.replace("_", "-")
                aliases[f"{old.replace('-', '_')}_alias"] = param
                wrapper = click.option(f"--{old}", f"{old.replace('-', '_')}_alias", hidden=True,
                                       **{k: v for k, v in kw.items() if k != "multiple"})(wrapper)
            wrapper = click.option(decl, param, help=help_text, **kw)(wrapper)
        return wrapper

    return decorator


def _build(cls: type, config: str | None, overrides: dict, sets: tuple[str, ...] = ()) -> Any:
    cfg = load_yaml(config, cls) if config else cls()
    return apply_overrides(cfg, {**overrides, **parse_set(sets)})


def _config_option(fn: Callable) -> Callable:
    return click.option("--config", "config", type=click.Path(dir_okay=False),
                        help="YAML file with the stage's config, or a `sgdd run` file (its section for this "
                             "stage is used); options override it.")(fn)


def _set_option(fn: Callable) -> Callable:
    return click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                        help="Override any config key by its dotted name (e.g. model.d_model=256).")(fn)


def user_errors(fn: Callable) -> Callable:
    """Turn SgddError into one line on stderr and exit status 1 (never a traceback); so too an
    OSError no stage turned into one (a full disk met while appending a log line, ...)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SgddError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from None

    return wrapper


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="sgdd")
@click.option("-v", "--verbose", count=True, help="More messages (debug; also transformers' load warnings).")
@click.option("-q", "--quiet", count=True, help="Only warnings and errors (no progress summaries).")
def cli(verbose: int, quiet: int) -> None:
    """sgdd: train conditional masked-diffusion text decoders from a precomputed embedding cache.

    \b
    Stage 1  sgdd collect   run a frozen encoder once, write the cache
    Stage 2  sgdd train     train the decoder from the cache only
    Stage 3  sgdd eval      MaskGIT-family decoding, metrics, report.md and plots
             sgdd invert    encode a text, decode it, show the reconstruction and its trajectory
             sgdd run       all three from one YAML file
             sgdd export    save a run as a self-contained folder (sgdd push: to the Hub)
             sgdd speculate greedy generation with an MTP head as drafter, timed against greedy
    """
    from sgdd.log import setup

    setup(verbose - quiet)


@cli.command()
@_config_option
@_set_option
@config_options(CollectConfig)
@user_errors
def collect(config: str | None, sets: tuple[str, ...], overrides: dict) -> None:
    """Stage 1: encode a corpus with a frozen encoder (or causal LM) into cache/<dataset>/<split>/.

    A rerun of the same command resumes after the committed shards.

    \b
    Examples:
      sgdd collect --model sentence-transformers/all-MiniLM-L6-v2 --dataset wiki \\
          --data-dir ../shared/data/wiki --split train:20000 --split validation:500
      sgdd collect --model sentence-transformers/all-MiniLM-L6-v2 --dataset qqp --data-dir ../shared/data/qqp
      sgdd collect --model HuggingFaceTB/SmolLM2-135M-Instruct --dataset wiki --data-dir ../shared/data/wiki \\
          --split train:2000 --sample-size 512 --stride 256 --dtype bf16          # LLM mode: windows
      torchrun --nproc_per_node=4 -m sgdd.cli collect ...                        # one shard writer per rank
    """
    from sgdd.stages import collect as stage

    out = stage.run(_build(CollectConfig, config, overrides, sets))
    click.echo(f"cache written to {out}")


@cli.command()
@_config_option
@_set_option
@config_options(TrainConfig)
@user_errors
def train(config: str | None, sets: tuple[str, ...], overrides: dict) -> None:
    """Stage 2: train the diffusion decoder from a cache (the encoder is never loaded).

    \b
    Example:
      sgdd train --cache cache/wiki --config configs/cpu-small.yaml --max-steps 2000
    """
    from sgdd.stages import train as stage

    out = stage.run(_build(TrainConfig, config, overrides, sets))
    click.echo(f"run written to {out}")


@cli.command(name="eval")
@_config_option
@_set_option
@config_options(EvalConfig)
@user_errors
def evaluate(config: str | None, sets: tuple[str, ...], overrides: dict) -> None:
    """Stage 3: decode a held-out split with a MaskGIT-family sampler, score it, write
    report.json, report.md and plots.

    \b
    Examples:
      sgdd eval --run runs/wiki --steps 16 --metric bleu --metric exact_match
      sgdd eval --run runs/wiki --sweep steps=4,8,16,32 --sweep sampler=maskgit_plus,threshold
      sgdd eval --run runs/wiki --candidates 4 --temperature 0.7 --metric bleu --metric encoder_cosine
    """
    from sgdd.stages import evaluate as stage

    out = stage.run(_build(EvalConfig, config, overrides, sets))
    click.echo(f"report written to {out}")


@cli.command()
@click.argument("texts", nargs=-1, required=True)
@_config_option
@_set_option
@config_options(EvalConfig, skip=("split", "metrics", "sweep", "trajectories", "max_samples", "batch_size"))
@user_errors
def invert(texts: tuple[str, ...], config: str | None, sets: tuple[str, ...], overrides: dict) -> None:
    """Encode TEXTS with the cache's frozen encoder, decode them, print each reconstruction and
    its denoising trajectory (which token was committed at which step). --out DIR also writes
    invert.json, trajectories.txt and trajectory.png there.

    \b
    Example:
      sgdd invert --run runs/quickstart "The river flows north through the old city."
    """
    from sgdd.stages.evaluate import invert as stage

    stage.run(_build(EvalConfig, config, overrides, sets), list(texts))


@cli.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@_set_option
@user_errors
def run(config_file: str, sets: tuple[str, ...]) -> None:
    """Run collect -> train -> eval from one YAML file (sections collect, train, eval).

    The cache written by collect is the one train reads, and eval evaluates that run; a
    train.shards, eval.shards or eval.run in the file must name those same paths.

    \b
    Example:
      sgdd run configs/quickstart.yaml --set train.optim.max_steps=100
    """
    from sgdd.pipeline.run import given_links, run_all

    cfg = _build(RunConfig, config_file, {}, sets)
    report = run_all(cfg, given_links(config_file, sets))
    click.echo(f"report written to {report}")


@cli.command()
@click.argument("run_path", metavar="RUN", type=click.Path())
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default=None,
              help="Which checkpoint of a run directory. [default: best, else last]")
@user_errors
def export(run_path: str, directory: str, checkpoint: str | None) -> None:
    """Save RUN (a run directory, a checkpoint or a saved run) to DIRECTORY as a self-contained
    folder: weights, config, tokenizer, encoder identity and a model card. It decodes without the
    cache (`sgdd.load_run(DIRECTORY)`, `sgdd invert --run DIRECTORY`).

    \b
    Example:
      sgdd export runs/quickstart export/quickstart
    """
    from sgdd.api import load_run

    out = load_run(run_path, checkpoint=checkpoint, device="cpu", precision="fp32").save_pretrained(directory)
    click.echo(f"saved to {out}")


@cli.command()
@click.argument("run_path", metavar="RUN", type=click.Path())
@click.argument("repo_id", metavar="ID")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default=None,
              help="Which checkpoint of a run directory. [default: best, else last]")
@click.option("--private/--public", default=None, help="Visibility of a repository created by the push.")
@user_errors
def push(run_path: str, repo_id: str, checkpoint: str | None, private: bool | None) -> None:
    """Upload RUN to the Hugging Face Hub repository ID (owner/name), as `sgdd export` saves it.

    \b
    Example:
      sgdd push runs/quickstart someone/sgdd-quickstart
    """
    from sgdd.api import load_run

    url = load_run(run_path, checkpoint=checkpoint, device="cpu", precision="fp32").push_to_hub(repo_id, private=private)
    click.echo(f"pushed to {url}")


@cli.command()
@_config_option
@config_options(SpeculateConfig)
@user_errors
def speculate(config: str | None, overrides: dict) -> None:
    """Greedy generation of the base causal LM with an MTP head as drafter (draft, verify in one
    forward, roll back the KV cache), against plain greedy generation of the same prompts: writes
    report.json / report.md (acceptance length, tokens/s, speed-up); exit 1 if the outputs differ.

    \b
    Example:
      sgdd speculate --run runs/mtp-smollm2-gen --prompts prompts.txt --max-new-tokens 128 --out runs/spec
    """
    from sgdd.stages import speculate as stage

    out = stage.run(_build(SpeculateConfig, config, overrides))
    click.echo(f"report written to {out}")


@cli.group()
def cache() -> None:
    """Inspect and check cache directories."""


@cache.command()
@click.argument("path", type=click.Path())
@user_errors
def info(path: str) -> None:
    """Splits, rows, arrays, size on disk and fingerprints of a cache."""
    from sgdd.cache.verify import cache_info

    click.echo(cache_info(Path(path)))


@cache.command()
@click.argument("path", type=click.Path())
@user_errors
def verify(path: str) -> None:
    """Check every shard's checksum, rows and shapes; exit 1 naming the first bad shard."""
    from sgdd.cache.verify import verify_cache

    click.echo(verify_cache(Path(path)))


@cache.command()
@click.argument("path", type=click.Path())
@user_errors
def card(path: str) -> None:
    """Write (or refresh) PATH/README.md, a dataset card listing every split's rows files, so that
    `datasets.load_dataset(PATH)` opens the cache (collect writes it; this adds it to older caches)."""
    from sgdd.cache.hf import write_dataset_card

    click.echo(f"dataset card written to {write_dataset_card(Path(path))}")


def main() -> None:
    # click's standalone mode would print "Aborted!" for Ctrl-C itself; its other handling is kept here
    try:
        code = cli.main(standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted; committed work is kept (collect continues when rerun, train with --resume)", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
