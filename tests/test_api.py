"""The Python API: load_run on a run directory and on a saved run, decode, invert, save_pretrained
(a saved run decodes identically once moved and its cache deleted), push offline, the stages."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sgdd
from sgdd.cache import open_cache
from sgdd.cache.views import sentence_view
from sgdd.errors import SgddError
from tests.helpers import SENTENCES
from tests.helpers_eval import collect_tiny
from tests.train.helpers import one_thread, tiny_cfg  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder_dir) -> Path:
    """runs/quickstart: a tiny decoder trained for a few steps by the real Stage 2 through the API."""
    root = tmp_path_factory.mktemp("api")
    cache = collect_tiny(root, tiny_encoder_dir)
    cfg = tiny_cfg(cache, root / "runs" / "quickstart", **{"optim.max_steps": 6, "ema_decay": 0.5})
    torch.set_num_threads(1)
    assert sgdd.train(cfg) == root / "runs" / "quickstart"
    return root


def vectors_of(cache_dir: Path, n: int = 5) -> torch.Tensor:
    cache = open_cache(cache_dir)
    return sentence_view(cache.split("train"), 16, cache.encoder_info["pad_id"]).vectors[:n]


def test_import_is_cheap_and_lazy():
    code = "import sys, sgdd; print('torch' in sys.modules, sorted(sgdd.__all__)[:3])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.startswith("False"), out
    assert callable(sgdd.load_run) and sgdd.open_cache.__module__ == "sgdd.cache.reader"
    with pytest.raises(AttributeError):
        sgdd.not_a_name  # noqa: B018


def test_readme_example_runs(trained, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "runs/quickstart" in b][:1]
    monkeypatch.chdir(trained)
    exec(compile(block.replace("the cat sat on the mat.", SENTENCES[0]), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("['") and printed.count("'") >= 2  # a list of one decoded string


def test_run_decodes_like_sgdd_eval_decoding(trained):
    run = sgdd.load_run(trained / "runs" / "quickstart", device="cpu", precision="fp32")
    assert run.kind == "sentence" and run.meta["weights"] == "ema" and run.checkpoint_dir.name == "best"
    z = vectors_of(trained / "cache")
    from sgdd.decoding.maskgit import decode, tokens_to_text

    ids = decode(run.model, z, steps=4, generator=torch.Generator().manual_seed(3))
    assert run.decode(z, steps=4, seed=3) == tokens_to_text(ids, run.tokenizer, run.special_ids)
    assert torch.equal(run.decode_ids(z, steps=4, seed=3), ids)
    assert len(run.decode(z[0], steps=2)) == 1  # one vector [D]
    with pytest.raises(SgddError, match="unknown decoding setting"):
        run.decode(z, stepz=4)
    with pytest.raises(SgddError, match=r"takes \[N, "):
        run.decode(torch.zeros(2, 3))


def test_invert_matches_sgdd_invert(trained):
    from sgdd.stages.evaluate.config import EvalConfig
    from sgdd.stages.evaluate import invert

    run = sgdd.load_run(trained / "runs" / "quickstart", device="cpu", precision="fp32")
    texts = [SENTENCES[2], SENTENCES[4]]
    got = run.invert(texts, steps=4)
    cli = invert.run(EvalConfig(run=str(trained / "runs" / "quickstart"), steps=4, device="cpu", precision="fp32"),
                     texts)
    assert got == [r["output"] for r in cli] and len(got) == 2
    (detail,) = run.invert(texts[0], steps=4, details=True)
    assert detail["output"] == got[0] and -1 <= detail["cosine"] <= 1


def test_saved_run_moved_without_its_cache_decodes_identically(trained, tmp_path):
    src = tmp_path / "copy"
    shutil.copytree(trained, src)  # a private copy whose cache we may delete
    (src / "runs/quickstart/eval-validation").mkdir()
    (src / "runs/quickstart/eval-validation/report.json").write_text(
        '{"split": "validation", "task": "reconstruction", "n": 3, "unit": "sentences", "weights": "ema", '
        '"checkpoint": "best", "settings": {"sampler": "maskgit_plus", "steps": 4}, "metrics": {"bleu": 12.5}}')
    z = vectors_of(src / "cache")
    run = sgdd.load_run(src / "runs/quickstart", device="cpu", precision="fp32")
    before_ids, before = run.decode_ids(z, steps=4, seed=1), run.decode(z, steps=4, seed=1)
    inverted = run.invert([SENTENCES[1]], steps=4)

    saved = run.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == ["README.md", "config.yaml", "encoder", "model.json",
                                                        "model.safetensors", "report.json"]
    card = (saved / "README.md").read_text()
    assert "library_name: sgdd" in card and "| bleu | 12.5 |" in card and "`train`: 32 rows" in card
    assert not (saved / "encoder" / "embeddings.safetensors").exists()
    moved = shutil.move(str(saved), str(tmp_path / "elsewhere" / "decoder"))
    shutil.rmtree(src)  # the run and its cache are gone

    again = sgdd.load_run(moved, device="cpu", precision="fp32")
    assert torch.equal(again.decode_ids(z, steps=4, seed=1), before_ids)
    assert again.decode(z, steps=4, seed=1) == before
    assert again.invert([SENTENCES[1]], steps=4) == inverted
    for name, p in again.model.state_dict().items():
        assert torch.equal(p, run.model.state_dict()[name]), name


def test_a_run_without_encoder_files_falls_back_to_its_cache_and_says_when_it_is_gone(trained, tmp_path):
    src = tmp_path / "copy"
    shutil.copytree(trained, src)
    shutil.rmtree(src / "runs/quickstart/encoder")  # a run trained before runs carried them
    z = vectors_of(src / "cache")
    run = sgdd.load_run(src / "runs/quickstart", device="cpu", precision="fp32", shards=str(src / "cache"))
    assert run.decode(z, steps=2) == sgdd.load_run(trained / "runs/quickstart", device="cpu",
                                                   precision="fp32").decode(z, steps=2)
    assert sgdd.load_run(src / "runs/quickstart", device="cpu").assets.dir == trained / "cache" / "encoder"  # model.json's
    shutil.rmtree(src / "cache")
    with pytest.raises(SgddError, match="carries no encoder/ folder and its cache .* is gone"):
        sgdd.load_run(src / "runs/quickstart", device="cpu", shards=str(src / "cache"))


def test_push_offline_fails_at_once_and_a_missing_hub_id_is_one_line(trained, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = sgdd.load_run(trained / "runs/quickstart", device="cpu")
    with pytest.raises(SgddError, match="Hub is offline"):
        run.push_to_hub("someone/tiny-sgdd")
    with pytest.raises(SgddError) as e:
        sgdd.load_run("someone/not-here")
    assert "cannot be downloaded from the Hub" in str(e.value) and "\n" not in str(e.value)


def test_stage_entry_points_take_config_objects_and_dicts(trained, tmp_path):
    out = sgdd.evaluate(sgdd.EvalConfig(run=str(trained / "runs/quickstart"), split="train", steps=2, max_samples=4,
                                        device="cpu", precision="fp32", metrics=["exact_match"], out=str(tmp_path / "e")))
    assert (out / "report.json").is_file()
    with pytest.raises(SgddError, match="unknown config key"):
        sgdd.train({"shards": "x"}, **{"optim.no_such": 1})
    with pytest.raises(SgddError, match="expected a TrainConfig"):
        sgdd.train(sgdd.EvalConfig())


def test_cli_export_and_push(trained, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sgdd.cli import cli

    r = CliRunner().invoke(cli, ["export", str(trained / "runs/quickstart"), str(tmp_path / "out"), "--checkpoint", "last"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out/model.safetensors").is_file()
    assert sgdd.load_run(tmp_path / "out").meta["saved_from"].endswith("checkpoints/last")
    r = CliRunner().invoke(cli, ["invert", "--run", str(tmp_path / "out"), "--steps", "2", "--device", "cpu", SENTENCES[0]])
    assert r.exit_code == 0 and "reconstruction:" in r.output, r.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(cli, ["push", str(trained / "runs/quickstart"), "someone/x"])
    assert r.exit_code == 1 and r.output.strip() == "Error: cannot push to someone/x: the Hugging Face Hub is offline " \
                                                    "(HF_HUB_OFFLINE is set)"
    r = CliRunner().invoke(cli, ["export", str(tmp_path / "nothing"), str(tmp_path / "o2")])
    assert r.exit_code == 1 and "neither a local run directory nor a Hub id" in r.output
