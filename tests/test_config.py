"""Typed configs: strict keys, every problem in one message, YAML round trip, overrides."""

import pytest

from sgdd.config import apply_overrides, from_dict, load_yaml, parse_set, save_yaml
from sgdd.pipeline.run import RunConfig
from sgdd.stages.collect.config import CollectConfig
from sgdd.stages.evaluate.config import EvalConfig
from sgdd.stages.train.config import TrainConfig
from sgdd.errors import SgddError


def test_unknown_keys_and_wrong_types_are_all_listed():
    with pytest.raises(SgddError) as e:
        from_dict(TrainConfig, {"modle": {}, "model": {"d_model": "big", "layers": 3}, "seed": 1.5})
    msg = str(e.value)
    assert "modle: unknown key" in msg and "model.layers: unknown key" in msg
    assert "model.d_model: expected int" in msg and "seed: expected int" in msg


def test_bad_combinations_are_listed_together():
    with pytest.raises(SgddError) as e:
        from_dict(TrainConfig, {"model": {"d_model": 100, "n_heads": 3}, "diffusion": {"schedule": "zigzag"},
                                "optim": {"max_steps": 0}})
    msg = str(e.value)
    assert "divisible" in msg and "'zigzag' unknown (valid: linear, cosine" in msg and "optim.max_steps" in msg
    with pytest.raises(SgddError, match="steps must be at least 1.*metric 'rouge' unknown"):
        from_dict(EvalConfig, {"steps": 0, "metrics": ["bleu", "rouge"]})
    with pytest.raises(SgddError, match="pooling must be mean or cls"):
        from_dict(CollectConfig, {"pooling": "max"})


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = apply_overrides(RunConfig(), {"train.model.d_model": 256, "train.model.n_heads": 4,
                                        "collect.splits": ["train:10"], "train.val_split": None})
    save_yaml(cfg, tmp_path / "c.yaml")
    again = load_yaml(tmp_path / "c.yaml", RunConfig)
    assert again == cfg and again.train.model.d_model == 256 and again.train.val_split is None
    assert isinstance(from_dict(TrainConfig, {"optim": {"lr": 1}}).optim.lr, float)  # int -> float is safe
    with pytest.raises(SgddError, match="unknown config key 'train.model.width'"):
        apply_overrides(RunConfig(), {"train.model.width": 3})


def test_parse_set_reads_yaml_scalars():
    assert parse_set(["a=3", "b=1e-4", "c=true", "d=null", "e=text"]) == {"a": 3, "b": 1e-4, "c": True, "d": None, "e": "text"}
    with pytest.raises(SgddError, match="KEY=VALUE"):
        parse_set(["oops"])


def test_bad_yaml_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(SgddError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml", RunConfig)
    with pytest.raises(SgddError, match="not found"):
        load_yaml(tmp_path / "missing.yaml", RunConfig)


def test_shipped_configs_load():
    """Every file in configs/ loads: a `sgdd run` file (collect/train/eval sections), a collect
    config or a train config, with no unknown key."""
    from pathlib import Path

    import yaml

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(files) > 10
    for path in files:
        keys = set(yaml.safe_load(path.read_text()))
        kind = RunConfig if keys <= {"collect", "train", "eval"} else CollectConfig if "dataset" in keys else TrainConfig
        load_yaml(path, kind)
