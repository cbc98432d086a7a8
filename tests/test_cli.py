"""The command line through click's CliRunner: the three stages end to end, help, bad input."""

import json

import pytest
import yaml
from click.testing import CliRunner

from sgdd.cli import cli
from tests.helpers import SENTENCES

TINY_TRAIN = ["--n-layers", "1", "--d-model", "32", "--n-heads", "2", "--max-len", "16", "--batch-size", "8",
              "--max-steps", "30", "--warmup-steps", "5", "--eval-every", "10", "--save-every", "10",
              "--eval-batches", "2", "--precision", "fp32"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


def test_collect_train_eval_end_to_end(tiny_encoder_dir, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("collect", "--model", tiny_encoder_dir, "--dataset", corpus, "--split", "train",
               "--out", "cache/tiny", "--shard-size", "10", "--precision", "fp32")
    assert r.exit_code == 0, r.output
    assert "cache written to cache/tiny" in r.output

    r = invoke("cache", "info", "cache/tiny")
    assert r.exit_code == 0 and "train: 32 rows, 4 shards" in r.output
    r = invoke("cache", "verify", "cache/tiny")
    assert r.exit_code == 0 and r.output.startswith("ok: 1 splits, 32 rows")

    r = invoke("train", "--cache", "cache/tiny", *TINY_TRAIN)
    assert r.exit_code == 0, r.output
    run_dir = tmp_path / "runs" / "tiny"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["d_model"] == 32 and saved["optim"]["max_steps"] == 30 and saved["shards"] == "cache/tiny"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 30

    # defaults: the latest run, and (no test/validation split here) an explicit split
    r = invoke("eval", "--split", "train", "--steps", "4", "--metric", "bleu", "--metric", "exact_match",
               "--metric", "token_accuracy", "--max-samples", "8")
    assert r.exit_code == 0, r.output
    report = json.loads((run_dir / "eval-train" / "report.json").read_text())
    assert set(report["metrics"]) == {"bleu", "exact_match", "token_accuracy"}
    assert report["n"] == 8 and report["forward_passes_per_sequence"] == 4
    samples = (run_dir / "eval-train" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 8 and {"id", "reference", "output"} <= set(json.loads(samples[0]))


def test_run_command_links_the_stages(tiny_encoder_dir, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {
        "collect": {"model": str(tiny_encoder_dir), "dataset": str(corpus), "splits": ["train"], "out": "cache/c",
                    "precision": "fp32"},
        "train": {"out": "runs/r", "val_split": None, "precision": "fp32",
                  "model": {"n_layers": 1, "d_model": 32, "n_heads": 2, "max_len": 16},
                  "optim": {"max_steps": 6, "batch_size": 8, "warmup_steps": 2}},
        "eval": {"split": "train", "steps": 2, "max_samples": 4},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    r = invoke("run", "run.yaml", "--set", "train.optim.max_steps=4")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs/r/eval-train/report.json").is_file()
    assert "wall time per stage: collect" in r.output
    assert yaml.safe_load((tmp_path / "runs/r/config.yaml").read_text())["optim"]["max_steps"] == 4
    r = invoke("run", "run.yaml", "--set", "train.optim.max_steps=4")  # rerun: resumes, nothing refused
    assert r.exit_code == 0, r.output

    # a linked key the file sets itself must name the path `sgdd run` passes on, or nothing is trained
    config["train"]["shards"] = "elsewhere"
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**config, "train": {**config["train"], "out": "runs/o"}}))
    r = CliRunner().invoke(cli, ["run", "other.yaml"])
    last = r.output.strip().splitlines()[-1]  # the one-line error, after collect's log lines
    assert r.exit_code == 1 and last.startswith("Error: train.shards is 'elsewhere'") and "cache/c" in last
    assert not (tmp_path / "runs/o").exists()
    r = CliRunner().invoke(cli, ["run", "run.yaml", "--set", "eval.run=runs/x"])
    assert r.exit_code == 1 and "eval.run is 'runs/x'" in r.output and "runs/r" in r.output
    config["train"]["shards"] = str(tmp_path / "cache/c")  # the same cache, spelled otherwise: agrees
    config["eval"]["run"] = "runs/r"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    r = invoke("run", "run.yaml", "--set", "train.optim.max_steps=4")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("command", [[], ["collect"], ["train"], ["eval"], ["run"], ["cache", "info"]])
def test_help_explains_every_option(command):
    r = invoke(*command, "--help")
    assert r.exit_code == 0
    if command == ["train"]:
        for option in ("--cache", "--d-model", "--noise-schedule", "--loss-weight", "--grad-accum", "--resume", "--set"):
            assert option in r.output
        assert "[default: 64]" in r.output  # max_len / batch_size defaults are shown


@pytest.mark.parametrize("args, message", [
    (["collect", "--dataset", "wikk"], "did you mean 'wiki'"),
    (["collect", "--model", "no/such-model", "--dataset", "{corpus}"], "Hub cannot be reached"),
    (["collect", "--dataset", "wiki", "--data-dir", "{tmp}"], "holds none of"),
    (["collect", "--dataset", "{corpus}", "--set", "pooling=max"], "pooling must be mean or cls"),
    (["train", "--shards", "{tmp}/nothing"], "does not exist"),
    (["train", "--shards", "{tmp}", "--d-model", "30"], "divisible"),
    (["eval", "--steps", "0"], "steps must be at least 1"),
    (["eval", "--run", "{tmp}"], "has no checkpoint"),
    (["eval", "--metric", "rouge"], "metric 'rouge' unknown"),
    (["cache", "verify", "{tmp}"], "holds no collected split"),
])
def test_bad_input_gives_one_line_and_exit_1(args, message, corpus, tmp_path, offline_hub):
    args = [a.format(corpus=corpus, tmp=tmp_path) for a in args]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    error_lines = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1


def test_output_path_that_is_a_file_loses_nothing(tiny_encoder_dir, corpus, tmp_path):
    target = tmp_path / "taken"
    target.write_text("precious")
    r = CliRunner().invoke(cli, ["collect", "--model", str(tiny_encoder_dir), "--dataset", str(corpus),
                                 "--split", "train", "--out", str(target)])
    assert r.exit_code == 1 and "not a directory" in r.output
    assert target.read_text() == "precious"


def test_main_turns_ctrl_c_into_one_line_and_status_130(monkeypatch, capsys, tmp_path):
    import sgdd.cache.hf
    from sgdd.cli import main

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(sgdd.cache.hf, "write_dataset_card", interrupted)
    monkeypatch.setattr("sys.argv", ["sgdd", "cache", "card", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted; committed work is kept" in err and "Aborted!" not in err


def test_main_keeps_clicks_exit_statuses(monkeypatch, capsys):
    from sgdd.cli import main

    for argv, code in ((["sgdd", "--version"], 0), (["sgdd", "train", "--no-such-option"], 2)):
        monkeypatch.setattr("sys.argv", argv)
        with pytest.raises(SystemExit) as exit_:
            main()
        assert exit_.value.code == code
    assert "No such option" in capsys.readouterr().err
