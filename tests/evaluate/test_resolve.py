"""What eval reads from the run besides the weights: the training schedule and the validation accuracy."""

import json

import pytest

from sgdd.stages.evaluate.resolve import training_noise, validation_accuracy


def test_the_schedule_comes_from_the_checkpoint_then_config_yaml_then_linear(tmp_path):
    (tmp_path / "config.yaml").write_text("diffusion:\n  schedule: polynomial\n  kappa: 3.0\n")
    schedule, source = training_noise({"diffusion": {"schedule": "cosine", "kappa": None}}, tmp_path)
    assert (schedule.name, source) == ("cosine", "checkpoint")
    schedule, source = training_noise({}, tmp_path)
    assert (schedule.name, schedule.kappa, source) == ("polynomial", 3.0, "config.yaml")
    schedule, source = training_noise({}, tmp_path / "missing")
    assert (schedule.name, source) == ("linear", "default")


def test_validation_accuracy_best_last_and_at_the_checkpoint(tmp_path):
    rows = [{"step": 10, "loss": 3.0}, {"step": 100, "val_acc": 0.42, "val_loss": 2.0},
            {"step": 200, "val_acc": 0.61}, {"step": 300, "val_acc": 0.55}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    v = validation_accuracy(tmp_path, step=100)
    assert v["best"] == pytest.approx(61.0) and v["best_step"] == 200
    assert v["last"] == pytest.approx(55.0) and v["last_step"] == 300
    assert v["checkpoint"] == pytest.approx(42.0) and "Xiao 2026" in v["label"]
    assert validation_accuracy(tmp_path / "none") is None
