"""MedMNIST by name through the medmnist package: real runs that train, test and report with
the dataset's class names; the tasks gendisc refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gendisc.callbacks.run_report import confusion_figure
from gendisc.errors import ConfigError
from gendisc.train import train
from gendisc.utils.build import build
from tests.conftest import shared_data_dir

BREAST = shared_data_dir() / "medmnist" / "breastmnist.npz"
TINY = ["model=classifier", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]


@pytest.mark.skipif(not BREAST.is_file(), reason=f"{BREAST} not found (GENDISC_DATA_DIR)")
def test_breastmnist_by_name_trains_and_reports_its_class_names(make_cfg, tmp_path, capsys):
    from medmnist import INFO

    names = [INFO["breastmnist"]["label"][k] for k in ("0", "1")]
    assert names == ["malignant", "normal, benign"]
    official = ["data=medmnist", "data.name=breastmnist", "data.val_size=official"]
    cfg = make_cfg([*official, *TINY])
    metrics = train(cfg)
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["class_names"] == metrics["class_names"] == names
    # the official validation split (by name: the default is 10 per class here, as many as the
    # labeled ones), 10 labeled images per class, the whole test split
    assert (report["data/labeled"], report["data/val"], report["data/test"]) == (20, 78, 156)
    matrix = np.array(report["test/confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == 156
    assert 0.0 <= report["test/auroc"] <= 1.0 and 0.0 <= report["val/auroc"] <= 1.0
    printed = capsys.readouterr().out
    assert "test/precision[malignant]" in printed and "test/recall[normal, benign]" in printed
    figure = confusion_figure(matrix, report["class_names"])
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == names
    assert [t.get_text() for t in axes.get_yticklabels()] == names


def test_a_multiclass_medmnist_set_trains_with_its_class_names(make_cfg, tmp_path):
    """PathMNIST (9 tissue classes, RGB) by name, from a tiny file in the package's format."""
    from medmnist import INFO

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 90), ("val", 18), ("test", 27)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 9).astype(np.uint8)[:, None]
    (tmp_path / "data" / "medmnist").mkdir(parents=True)
    np.savez(tmp_path / "data" / "medmnist" / "pathmnist.npz", **arrays)
    overrides = ["data=medmnist", "data.name=pathmnist", f"paths.data_dir={tmp_path / 'data'}"]
    overrides += [*TINY, "data.labels_per_class=2", "data.batch_size=18", "data.download=false"]
    metrics = train(make_cfg(overrides))
    assert metrics["class_names"] == [INFO["pathmnist"]["label"][str(k)] for k in range(9)]
    assert np.array(metrics["test/confusion_matrix"]).shape == (9, 9)
    assert metrics["data/labeled"] == 18 and metrics["data/test"] == 27
    assert 0.0 <= metrics["test/auroc"] <= 1.0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.name=chestmnist"], r"chestmnist is a multi-label task"),
        (["data.name=nomnist"], r"Unknown MedMNIST dataset data\.name=nomnist; choose one of"),
        ([], r"data=medmnist needs data\.name=<name>"),
        (["data.name=breastmnist", "data.size=100"], r"data\.size=100: breastmnist comes in"),
    ],
)
def test_medmnist_options_that_cannot_work_are_one_clear_error(make_cfg, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        build(make_cfg(["data=medmnist", *overrides]))
