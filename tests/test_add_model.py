"""README "Add a model", followed as a user would: the README's own code and YAML, written to a
package and a config folder of one's own; then train (as a sweep), evaluate and report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

from gendisc.errors import ConfigError
from gendisc.eval import evaluate
from gendisc.report.cli import main as report
from gendisc.train import train
from gendisc.trusted import TRUSTED_ENV, UntrustedConfigError
from gendisc.utils.build import build
from gendisc.utils.config import PROJECT_ROOT
from tests.conftest import compose_config, shared_data_dir, single_thread_env


def readme_section(title: str) -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    start = text.index(f"### {title}\n")
    following = re.compile(r"^#{2,3} ", flags=re.M).search(text, start + 1)
    return text[start : following.start() if following else len(text)]


def code_blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def fresh_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``mylab`` package on sys.path (any earlier test's ``mylab`` forgotten)."""
    for name in [m for m in sys.modules if m == "mylab" or m.startswith("mylab.")]:
        monkeypatch.delitem(sys.modules, name)
    package = tmp_path / "code" / "mylab"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    return package


@pytest.fixture
def own_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """mylab/entmin.py and conf/model/entmin.yaml, exactly as the README shows them."""
    section = readme_section("Add a model")
    [python], [config] = code_blocks(section, "python"), code_blocks(section, "yaml")
    (fresh_package(tmp_path, monkeypatch) / "entmin.py").write_text(python)
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "entmin.yaml").write_text(config)
    return tmp_path / "code", tmp_path / "conf"


@pytest.mark.slow
def test_a_model_is_one_file_and_one_yaml(own_model, tmp_path, monkeypatch):
    code, conf = own_model
    sweep = tmp_path / "sweep"
    env = single_thread_env()
    env["PYTHONPATH"] = f"{code}:{env.get('PYTHONPATH', '')}"
    command = [
        sys.executable,
        "-m",
        "gendisc.train",
        "-m",
        f"hydra.searchpath=[file://{conf}]",
        "model=entmin",
        "model.weight=0,0.1",
        "trainer.max_epochs=2",
        f"hydra.sweep.dir={sweep}",
        f"paths.data_dir={shared_data_dir()}",
        "extras.print_config=false",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["class_names"] == [str(k) for k in range(10)]
        assert 0.2 < metrics["test/acc"] <= 1 and 0.5 < metrics["test/auroc"] <= 1
        assert len(metrics["test/confusion_matrix"]) == 10
    # gendisc-eval rebuilds it from its checkpoint once its code is trusted
    ckpt = sweep / "0" / "checkpoints" / "last.ckpt"
    eval_cfg = compose_config([f"ckpt_path={ckpt}"], tmp_path / "eval", config_name="eval")
    with pytest.raises(UntrustedConfigError, match=r"mylab\.entmin\.EntropyMinimization"):
        evaluate(eval_cfg)
    monkeypatch.setenv(TRUSTED_ENV, "mylab.")
    first = json.loads((sweep / "0" / "metrics.json").read_text())
    assert evaluate(eval_cfg)["test/acc"] == pytest.approx(first["test/acc"])
    # gendisc-report tabulates the sweep by the model's own option
    assert report([str(sweep), "--group-by", "model.weight", "--metrics", "test/acc"]) == 0
    table = (sweep / "report.csv").read_text().splitlines()
    assert table[0].startswith("model.weight,runs,completed")
    assert [line.split(",")[0] for line in table[1:]] == ["0", "0.1"]


def test_the_contract_is_checked_when_the_model_is_built(own_model, tmp_path):
    """The README's model composes and builds in-process; a class that is not a gendisc model
    gets one error naming what it lacks and where the contract is written."""
    _, conf = own_model
    search = f"hydra.searchpath=[file://{conf}]"
    _, model = build(compose_config([search, "model=entmin"], tmp_path / "run"))
    assert model.unlabeled_streams == 1 and model.num_classes == 10
    cfg = compose_config([search, "model=entmin"], tmp_path / "bad")
    with open_dict(cfg):
        cfg.model = {"_target_": "torch.nn.Identity"}  # takes any arguments, has none of it
    with pytest.raises(ConfigError, match=r"not a gendisc model: it lacks unlabeled_streams.*"):
        build(cfg)


def test_a_model_declares_its_selection_in_its_class(own_model, tmp_path, monkeypatch):
    """The README's model selects on val/acc with no generative callbacks (the defaults); a
    class attribute changes that for every run of the model, with no YAML elsewhere."""
    _, conf = own_model
    search = f"hydra.searchpath=[file://{conf}]"
    cfg = compose_config([search, "model=entmin"], tmp_path / "run")
    assert (cfg.optimized_metric, cfg.test_ckpt) == ("val/acc", "best")
    assert not cfg.callbacks.samples.enabled and not cfg.callbacks.generative_metrics.enabled
    from mylab.entmin import EntropyMinimization

    monkeypatch.setattr(EntropyMinimization, "selection_metric", None, raising=False)
    cfg = compose_config([search, "model=entmin"], tmp_path / "last")
    assert (cfg.optimized_metric, cfg.test_ckpt) == (None, "last")
    assert cfg.callbacks.model_checkpoint.monitor is None


def test_a_metric_is_one_callback_and_one_yaml(tmp_path, monkeypatch):
    """README "Add a metric": its callback and YAML, added to a run with callbacks=[default,top2]."""
    section = readme_section("Add a metric")
    [python], [config] = code_blocks(section, "python"), code_blocks(section, "yaml")
    (fresh_package(tmp_path, monkeypatch) / "top2.py").write_text(python)
    conf = tmp_path / "conf" / "callbacks"
    conf.mkdir(parents=True)
    (conf / "top2.yaml").write_text(config)
    overrides = [
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "callbacks=[default,top2]",
        "model=classifier",
        "trainer.max_epochs=2",
    ]
    run = tmp_path / "run"
    metrics = train(compose_config(overrides, run))
    report = json.loads((run / "metrics.json").read_text())
    assert report["test/acc_top2"] == pytest.approx(metrics["test/acc_top2"])
    assert metrics["test/acc"] <= metrics["test/acc_top2"] <= 1
