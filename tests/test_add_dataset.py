"""README "Add a dataset", followed as a user would: one YAML file naming one small reader
function, in a config folder of one's own; then train, evaluate and report on it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from gendisc.errors import DataError, gendisc_cause
from gendisc.eval import evaluate
from gendisc.train import train
from gendisc.trusted import TRUSTED_ENV, UntrustedConfigError
from tests.conftest import compose_config

READER = """
import numpy as np

from gendisc.data.readers import ImageSplits

NAMES = ["square", "cross", "ring"]


def draw(kind: int, shift: int) -> np.ndarray:
    image = np.zeros((8, 8), np.uint8)
    if kind == 0:
        image[2:6, 2:6] = 255
    elif kind == 1:
        image[3:5, :] = image[:, 3:5] = 255
    else:
        image[1:7, 1:7] = 255
        image[3:5, 3:5] = 0
    return np.roll(image, shift, axis=1)


def read_shapes(per_class: int = 40) -> ImageSplits:
    rng = np.random.default_rng(0)
    def split(n):
        labels = np.repeat(np.arange(3), n)
        images = np.stack([draw(k, int(rng.integers(-1, 2))) for k in labels])[:, None]
        return images, labels.astype(np.int64)
    train_images, train_labels = split(per_class)
    test_images, test_labels = split(10)
    return ImageSplits(train_images, train_labels, test_images, test_labels, NAMES)


def read_nothing() -> list:
    return []
"""

CONFIG = """
defaults:
  - digits
  - _self_
dataset: shapes
reader:
  _target_: shapes_reader.read_shapes
  _partial_: true
  per_class: 40
labels_per_class: 5
val_size: 15
batch_size: 15
"""


@pytest.fixture
def own_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config folder of one's own with conf/data/shapes.yaml and its reader module."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "shapes_reader.py").write_text(textwrap.dedent(READER))
    monkeypatch.syspath_prepend(str(code))
    conf = tmp_path / "conf" / "data"
    conf.mkdir(parents=True)
    (conf / "shapes.yaml").write_text(CONFIG)
    return tmp_path / "conf"


def test_a_dataset_is_one_yaml_file_and_one_reader(own_conf, tmp_path, monkeypatch):
    search = f"hydra.searchpath=[file://{own_conf}]"
    run = tmp_path / "run"
    cfg = compose_config(
        [search, "data=shapes", "model=classifier", "model/net=mlp", "trainer.max_epochs=2"], run
    )
    metrics = train(cfg)
    report = json.loads((run / "metrics.json").read_text())
    assert report["class_names"] == ["square", "cross", "ring"]
    assert report["data/labeled"] == 15 and report["data/test"] == 30
    assert len(report["test/confusion_matrix"]) == 3
    assert 0 <= metrics["test/auroc"] <= 1
    # its checkpoint names a reader outside gendisc's conf/: evaluated once the user trusts it
    ckpt = run / "checkpoints" / "last.ckpt"
    eval_cfg = compose_config([f"ckpt_path={ckpt}"], tmp_path / "eval", config_name="eval")
    with pytest.raises(UntrustedConfigError, match=r"shapes_reader\.read_shapes"):
        evaluate(eval_cfg)
    monkeypatch.setenv(TRUSTED_ENV, "shapes_reader.")
    result = evaluate(eval_cfg)
    assert result["test/acc"] == pytest.approx(report["test/acc"])


def test_a_reader_that_returns_something_else_is_named(own_conf, tmp_path):
    cfg = compose_config(
        [
            f"hydra.searchpath=[file://{own_conf}]",
            "data=shapes",
            "data.reader._target_=shapes_reader.read_nothing",
            "~data.reader.per_class",
            "model=classifier",
        ],
        tmp_path / "run",
    )
    with pytest.raises(Exception) as info:
        train(cfg)
    cause = gendisc_cause(info.value)
    assert isinstance(cause, DataError) and "not ImageSplits" in str(cause)
