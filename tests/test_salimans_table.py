"""experiment=salimans_mnist_table: one fixed directory per run, a sweep that resumes in place
and grows by seeds, and the paper-layout report of its finished runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from gendisc.report.paper_table import write_paper_table
from gendisc.utils.config import PROJECT_ROOT, register_resolvers
from tests.conftest import CONFIG_DIR, run_gendisc

SPEC = PROJECT_ROOT / "experiments" / "salimans_2016" / "table.yaml"


def _run_dirs(overrides: list[str]) -> tuple[str, str]:
    """(hydra.run.dir, hydra.sweep.dir/subdir) of the table experiment with ``overrides``."""
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(
                "train",
                overrides=["experiment=salimans_mnist_table", *overrides],
                return_hydra_config=True,
            )
        HydraConfig.instance().set_config(cfg)
        return cfg.hydra.run.dir, f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}"
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ([], "lpc10_seed0_full_32-true"),
        (["data.labels_per_class=2", "data.data_seed=4"], "lpc2_seed4_full_32-true"),
        (["ablation=no_unlabeled"], "lpc10_seed0_no_unlabeled_32-true"),
        (["trainer.precision=bf16-mixed", "data.data_seed=3"], "lpc10_seed3_full_bf16-mixed"),
    ],
)
def test_each_run_has_one_directory_for_single_runs_and_sweeps(overrides, name):
    run_dir, sweep_dir = _run_dirs([*overrides, "paths.log_dir=/logs"])
    assert run_dir == sweep_dir == f"/logs/salimans_mnist_table/{name}"


def test_the_table_experiment_is_the_paper_setting_over_label_counts_and_seeds(tmp_path):
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            table = compose("train", ["experiment=salimans_mnist_table"], return_hydra_config=True)
            paper = compose("train", ["experiment=salimans_mnist"])
    finally:
        GlobalHydra.instance().clear()
    params = table.hydra.sweeper.params
    assert params["data.labels_per_class"] == "2,5,10,20"
    assert params["data.data_seed"] == "0,1,2"
    # the model, data and schedule of experiment=salimans_mnist, untouched
    for key in ("model", "data", "trainer"):
        assert OmegaConf.to_container(table[key]) == OmegaConf.to_container(paper[key]), key
    assert table.trainer.max_epochs == 300 and table.test_ckpt == "last"
    assert table.seed == table.data.data_seed


@pytest.mark.slow
def test_sweep_resumes_in_place_and_grows_by_seeds(tmp_path):
    """A 2-job sweep of 1 epoch, then the same sweep with a third seed, 2 epochs and
    ckpt_path=last: the two runs continue (their second epoch only), the new one starts; a
    third call trains nothing. The report then tables the three finished runs."""
    sweep = tmp_path / "table"
    tiny = [
        "-m",
        "experiment=salimans_mnist_table",
        "data=digits",
        "data.val_size=100",
        "data.labels_per_class=2",
        "model.adversarial.init_images=100",
        "callbacks.generative_metrics=null",
        "callbacks.samples=null",
        f"hydra.sweep.dir={sweep}",
    ]
    names = [f"lpc2_seed{seed}_full_32-true" for seed in range(3)]

    def metrics(name: str) -> dict:
        return json.loads((sweep / name / "metrics.json").read_text())

    def curve(name: str) -> pd.DataFrame:
        logs = sorted((sweep / name / "csv").glob("version_*"))
        assert len(logs) == 1, logs  # a resumed run goes on writing its own log
        frame = pd.read_csv(logs[0] / "metrics.csv")
        return frame.dropna(subset=["val/acc"]).set_index("epoch")["val/acc"]

    run_gendisc(
        *tiny,
        "data.data_seed=0,1",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        cwd=PROJECT_ROOT,
    )
    first = {name: metrics(name) for name in names[:2]}
    first_curves = {name: curve(name) for name in names[:2]}
    assert all(m["epochs"] == 1 and m["global_step"] == 2 * 2 for m in first.values())

    grown = [*tiny, "data.data_seed=0,1,2", "trainer.max_epochs=2", "trainer.limit_train_batches=3"]
    run_gendisc(*grown, "ckpt_path=last", cwd=PROJECT_ROOT)
    for name in names[:2]:  # epoch 0 kept (2 batches), epoch 1 trained (3 batches)
        assert metrics(name)["epochs"] == 2
        assert metrics(name)["global_step"] == 2 * (2 + 3)
        per_batch = first[name]["train/images_seen"] / 2
        assert metrics(name)["train/images_seen"] == per_batch * (2 + 3)
        assert list(curve(name).index) == [0, 1]
        assert curve(name)[0] == first_curves[name][0]
    assert metrics(names[2])["global_step"] == 2 * (3 + 3)  # the new seed: from scratch
    steps = {name: metrics(name)["global_step"] for name in names}
    accuracy = {name: metrics(name)["test/acc"] for name in names}

    run_gendisc(*grown, "ckpt_path=last", cwd=PROJECT_ROOT)  # all finished: nothing to train
    assert {name: metrics(name)["global_step"] for name in names} == steps
    assert {name: metrics(name)["test/acc"] for name in names} == accuracy

    written, _ = write_paper_table([sweep], SPEC, out=tmp_path / "report")
    runs = pd.read_csv(written["runs.csv"])
    assert list(runs["run"]) == names and set(runs["status"]) == {"finished"}
    assert list(runs["epochs"]) == [2, 2, 2] and list(runs["labels"]) == [20, 20, 20]
    row = next(line for line in written["report.md"].read_text().splitlines() if "| 20 |" in line)
    assert row.startswith("| 20 | 2 | 32-true |") and "(3)" in row
    assert written["curves.png"].stat().st_size > 0
