"""CLI conventions: --set on every stage command, click.Choice for enumerated options (matching
the registries), null for optional fields, unambiguous option names (old spellings hidden but
working), -v/-q logging, progress bars hidden off a terminal with a one-line summary."""

import logging

import pytest
from click.testing import CliRunner

from sgdd.cli import CHOICES, cli
from sgdd.stages.evaluate.config import EvalConfig
from sgdd.stages.train.config import TrainConfig
from sgdd.log import progress, quiet_transformers, setup


def test_choices_match_the_registries():
    from sgdd.decoding.schedules import UNMASK_SCHEDULES
    from sgdd.decoding.samplers import SAMPLERS
    from sgdd.models.decoder import CONDITIONINGS, INIT_BODIES, VOCABS
    from sgdd.models.diffusion import LOSS_WEIGHTS, SCHEDULES
    from sgdd.stages.train.trackers import TRACKERS

    assert CHOICES[(TrainConfig, "diffusion.schedule")] == list(SCHEDULES)
    assert CHOICES[(TrainConfig, "diffusion.loss_weight")] == list(LOSS_WEIGHTS)
    assert CHOICES[(TrainConfig, "report_to")] == list(TRACKERS)
    assert CHOICES[(TrainConfig, "model.conditioning")] == list(CONDITIONINGS)
    assert CHOICES[(TrainConfig, "model.init_body")] == list(INIT_BODIES)
    assert CHOICES[(TrainConfig, "model.vocab")] == list(VOCABS)
    assert CHOICES[(EvalConfig, "sampler")] == CHOICES[(EvalConfig, "candidate_samplers")] == list(SAMPLERS)
    assert CHOICES[(EvalConfig, "schedule")] == list(UNMASK_SCHEDULES)
    for (cls, dotted), values in CHOICES.items():  # every default is one of the choices
        obj = cls()
        for part in dotted.split("."):
            obj = getattr(obj, part)
        assert all(v in values for v in (obj if isinstance(obj, list) else [obj])), (cls.__name__, dotted)


@pytest.mark.parametrize("command", ["collect", "train", "eval", "invert", "run"])
def test_every_stage_command_takes_set(command):
    r = CliRunner().invoke(cli, [command, "--help"])
    assert r.exit_code == 0 and "--set KEY=VALUE" in r.output


def test_a_bad_choice_is_a_usage_error_listing_the_choices(tmp_path):
    r = CliRunner().invoke(cli, ["eval", "--run", str(tmp_path), "--sampler", "beam"])
    assert r.exit_code == 2 and "'beam' is not one of" in r.output and "maskgit_plus" in r.output
    r = CliRunner().invoke(cli, ["train", "--noise-schedule", "cosinus"])
    assert r.exit_code == 2 and "loglinear" in r.output


def captured(monkeypatch, command: str):
    """The config a stage command would run with (the stage itself replaced)."""
    seen = {}
    module = {"train": "train", "eval": "evaluate", "collect": "collect"}[command]
    import importlib

    stage = importlib.import_module(f"sgdd.stages.{module}")
    monkeypatch.setattr(stage, "run", lambda cfg, *a: seen.setdefault("cfg", cfg) and "out")
    return seen


def test_null_old_spellings_and_set(monkeypatch):
    seen = captured(monkeypatch, "train")
    r = CliRunner().invoke(cli, ["train", "--d-model", "null", "--val-split", "None", "--noise-schedule", "cosine",
                                 "--set", "optim.lr=0.01"])
    assert r.exit_code == 0, r.output
    cfg = seen["cfg"]
    assert cfg.model.d_model is None and cfg.val_split is None and cfg.diffusion.schedule == "cosine"
    assert cfg.optim.lr == 0.01
    seen.clear()
    r = CliRunner().invoke(cli, ["train", "--schedule", "loglinear"])  # the old spelling, hidden
    assert r.exit_code == 0 and seen["cfg"].diffusion.schedule == "loglinear"
    assert "--schedule " not in CliRunner().invoke(cli, ["train", "--help"]).output
    seen.clear()
    r = CliRunner().invoke(cli, ["train", "--cache", "cache/a"])  # --cache names the field `shards`
    assert r.exit_code == 0 and seen["cfg"].shards == "cache/a"
    seen.clear()
    r = CliRunner().invoke(cli, ["train", "--shards", "cache/b"])  # the old spelling, hidden
    assert r.exit_code == 0 and seen["cfg"].shards == "cache/b"
    assert "--shards" not in CliRunner().invoke(cli, ["train", "--help"]).output

    seen = captured(monkeypatch, "eval")
    r = CliRunner().invoke(cli, ["eval", "--unmask-schedule", "sqrt", "--decode-block-length", "4", "--set", "steps=3"])
    assert r.exit_code == 0, r.output
    assert (seen["cfg"].schedule, seen["cfg"].block_length, seen["cfg"].steps) == ("sqrt", 4, 3)
    seen.clear()
    r = CliRunner().invoke(cli, ["eval", "--schedule", "linear", "--block-length", "2", "--block-length", "2"])
    assert r.exit_code == 0 and (seen["cfg"].schedule, seen["cfg"].block_length) == ("linear", 2)
    for option in ("--cache", "--shards"):
        seen.clear()
        r = CliRunner().invoke(cli, ["eval", option, "cache/e"])
        assert r.exit_code == 0 and seen["cfg"].shards == "cache/e"
    assert "--shards" not in CliRunner().invoke(cli, ["eval", "--help"]).output

    seen = captured(monkeypatch, "collect")
    r = CliRunner().invoke(cli, ["collect", "--dtype", "bf16", "--set", "shard_size=5", "--max-samples", "null"])
    assert r.exit_code == 0, r.output
    assert (seen["cfg"].dtype, seen["cfg"].shard_size, seen["cfg"].max_samples) == ("bf16", 5, None)
    r = CliRunner().invoke(cli, ["collect", "--dtype", "int8"])
    assert r.exit_code == 2 and "'int8' is not one of" in r.output


def test_verbosity_and_rank_filter(capsys, monkeypatch):
    try:
        setup(0)
        log = logging.getLogger("sgdd.test")
        log.info("shown")
        log.debug("hidden")
        setup(-1)
        log.info("quiet hides this")
        log.warning("but not this")
        setup(0)
        monkeypatch.setenv("RANK", "1")
        log.info("rank 1 info")
        log.warning("rank 1 warning")
    finally:
        setup(0)
    err = capsys.readouterr().err
    assert "sgdd test: shown" in err and "hidden" not in err and "quiet hides" not in err
    assert "sgdd test: warning: but not this" in err
    assert "rank 1 info" not in err and "sgdd test: warning: [rank 1] rank 1 warning" in err


def test_progress_off_a_terminal_is_one_summary_line(capsys):
    setup(0)
    bar = progress(total=5, desc="decode", unit="seq", logger="eval")
    for _ in range(5):
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 1 and err.startswith("sgdd eval: decode: 5 seqs in ")
    hidden = progress(total=2, desc="x", main=False)
    hidden.update(2)
    hidden.close()
    assert capsys.readouterr().err == ""  # ranks > 0 say nothing


def test_transformers_logging_is_restored_after_a_quiet_load():
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_info()
    try:
        with quiet_transformers():
            assert hf_logging.get_verbosity() == hf_logging.ERROR
        assert hf_logging.get_verbosity() == hf_logging.INFO
    finally:
        hf_logging.set_verbosity(before)


def test_cli_verbosity_flags(monkeypatch):
    seen = captured(monkeypatch, "train")
    assert CliRunner().invoke(cli, ["-q", "train"]).exit_code == 0
    assert not logging.getLogger("sgdd").isEnabledFor(logging.INFO)
    assert CliRunner().invoke(cli, ["-v", "train"]).exit_code == 0
    assert logging.getLogger("sgdd").isEnabledFor(logging.DEBUG)
    setup(0)
    assert seen
