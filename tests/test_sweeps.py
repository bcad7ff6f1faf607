"""Multiruns as a user runs them: failures recorded per job, launchers, Optuna, study configs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from gendisc.report import load_runs, write_report
from gendisc.utils.config import PROJECT_ROOT
from tests.conftest import (
    assert_accuracy_is_the_confusion_trace,
    compose_config,
    generative_test_overrides,
    run_gendisc,
)

TINY = ["data=digits", "data.val_size=100", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]


@pytest.mark.slow
def test_failed_job_is_recorded_and_the_sweep_goes_on(tiny_sweep):
    failed, good = tiny_sweep / "0", tiny_sweep / "1"
    # job 0: NaN loss in its second epoch -> failure.json, no results, last good checkpoint kept
    record = json.loads((failed / "failure.json").read_text())
    assert record["status"] == "failed" and record["error_type"] == "NonFiniteLossError"
    assert "became nan at epoch 1" in record["error"] and "last good checkpoint" in record["error"]
    assert "+model.scheduler.gamma=1e+30" in record["overrides"]
    assert not (failed / "metrics.json").exists()
    checkpoint = torch.load(record["last_checkpoint"], map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    # job 1 ran after the failure and kept everything
    metrics = json.loads((good / "metrics.json").read_text())
    assert metrics["epochs"] == 3
    assert_accuracy_is_the_confusion_trace(metrics, 360)
    # the value returned to sweepers: the best epoch's, never below the last one's
    assert metrics["val/acc_best"] >= metrics["val/acc"]
    assert not (good / "failure.json").exists()
    assert (good / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_report_counts_completed_and_failed_jobs(tiny_sweep, tmp_path):
    runs = load_runs(tiny_sweep)
    assert list(runs["status"]) == ["failed", "completed"]
    assert runs.loc[0, "error_type"] == "NonFiniteLossError"
    written = write_report(tiny_sweep, out=tmp_path)
    report = written["report.md"].read_text()
    assert "Runs: 2 (1 completed, 1 failed, 0 incomplete)" in report
    assert "Grouped by: model.scheduler.gamma" in report
    assert "NonFiniteLossError" in report
    table = written["report.csv"].read_text().splitlines()
    assert len(table) == 3  # header + one row per gamma


@pytest.mark.parametrize(
    ("search", "model"), [("classifier_optuna", "classifier"), ("ssl_gan_optuna", "ssl_gan")]
)
def test_optuna_search_configs_optimise_validation_params_that_exist(search, model, tmp_path):
    cfg = compose_config([f"hparams_search={search}"], tmp_path, config_name="train")
    # compose_config drops the hydra node: compose again keeping it
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        full = compose("train", overrides=[f"hparams_search={search}"], return_hydra_config=True)
    sweeper = full.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert str(full.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.optimized_metric.startswith("val/")
    targets = {"classifier": "classifier.ClassifierModule", "ssl_gan": "ssl_gan.SSLGANModule"}
    assert cfg.model._target_.endswith(targets[model])
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", key


@pytest.mark.slow
def test_optuna_search_runs_and_picks_the_best_validation_trial(tmp_path):
    sweep = tmp_path / "optuna"
    run_gendisc(
        "hparams_search=classifier_optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
        *TINY,
        cwd=PROJECT_ROOT,
    )
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert result["best_value"] == pytest.approx(max(t["val/acc_best"] for t in trials))
    assert set(result["best_params"]) == {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "model.net.dropout",
        "model.label_smoothing",
        "data.batch_size",
    }


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_worker_processes(tmp_path):
    sweep = tmp_path / "joblib"
    result = run_gendisc(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=classifier",
        "data.data_seed=0,1",
        f"hydra.sweep.dir={sweep}",
        *TINY,
        cwd=PROJECT_ROOT,
    )
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    runs = load_runs(sweep)
    assert list(runs["status"]) == ["completed", "completed"]
    assert sorted(runs["data.data_seed"]) == [0, 1]
    assert runs["data/labeled"].tolist() == [100, 100]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
            {"nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4},
        ),
        (["trainer=gpu"], {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 1}),
        (["trainer=cpu"], {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0}),
    ],
)
def test_slurm_launcher_takes_nodes_and_gpus_from_the_trainer(overrides, expected):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gendisc.utils.config import register_resolvers

    register_resolvers()  # slurm_gpus, slurm_tasks
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True
        )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    for key, value in expected.items():
        assert launcher[key] == value, key
    assert launcher["submitit_folder"].endswith(".submitit/%j")


STUDIES = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "experiment").glob("study_*.yaml"))


@pytest.mark.parametrize("study", STUDIES)
def test_study_configs_sweep_existing_settings(study):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={study}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params, f"{study} defines no sweep"
    assert any("seed" in key for key in params), "studies repeat over seeds"
    for key, values in params.items():
        group = PROJECT_ROOT / "conf" / key
        if group.is_dir():  # a config group: its options are files
            if str(values).startswith("glob("):
                assert list(group.glob("*.yaml")), key
                continue
            for option in (v.strip() for v in str(values).split(",")):
                assert (group / f"{option}.yaml").is_file(), f"{key}={option}"
            continue
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", key
    readme = PROJECT_ROOT / "experiments" / study.removeprefix("study_") / "README.md"
    assert readme.is_file(), f"{readme} documents the study"
    assert f"experiment={study}" in readme.read_text()


def test_sweepers_get_the_best_validation_score_never_a_test_metric():
    from gendisc.train import optimized_value

    with pytest.raises(Exception, match="validation"):
        optimized_value(OmegaConf.create({"optimized_metric": "test/acc"}), {"test/acc": 1.0})
    cfg = OmegaConf.create({"optimized_metric": "val/acc"})
    assert math.isclose(optimized_value(cfg, {"val/acc": 0.5, "val/acc_best": 0.7}), 0.7)
    assert math.isclose(optimized_value(cfg, {"val/acc": 0.5}), 0.5)


@pytest.mark.slow
def test_studies_train_augmented_classifier_on_the_generator_of_its_labeled_set(
    generative_cache, tmp_path
):
    """experiment=study_generators puts one cGAN per labeled set where the studies' jobs look."""
    generators = tmp_path / "generators"
    # the studies' own validation protocol (data.val_per_class), not TINY's val_size
    study_tiny = [arg for arg in TINY if not arg.startswith("data.val_size")]
    tiny = [*study_tiny, *generative_test_overrides(generative_cache)]
    run_gendisc(
        "-m",
        "experiment=study_generators",
        *tiny,
        "data.labels_per_class=2",
        "data.data_seed=0",
        f"paths.study_generators_dir={generators}",
        cwd=tmp_path,
    )
    generator = json.loads((generators / "digits" / "lpc2_vpc2_seed0" / "metrics.json").read_text())
    assert generator["data/labeled"] == 20 and "gen/fid" in generator
    sweep = tmp_path / "study"
    run_gendisc(
        "-m",
        "experiment=study_label_budget",
        "method=augmented_classifier",
        *study_tiny,
        "data.labels_per_class=2",
        "data.data_seed=0,1",  # no generator was trained for data_seed 1
        f"paths.study_generators_dir={generators}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    # job 0 could only train with its generator loaded (a missing one fails, as job 1 shows)
    trained = json.loads((sweep / "0" / "metrics.json").read_text())
    assert trained["data_seed"] == 0 and trained["data/labeled"] == 20
    assert not (sweep / "0" / "failure.json").exists()
    failure = json.loads((sweep / "1" / "failure.json").read_text())
    assert (
        "lpc2_vpc2_seed1" in failure["error"] and "experiment=study_generators" in failure["error"]
    )
