"""Shared fixtures: compose the real Hydra configs for in-process runs on tiny budgets."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from gendisc.utils.config import PROJECT_ROOT, register_resolvers

CONFIG_DIR = str(PROJECT_ROOT / "conf")
register_resolvers()  # as gendisc.train does: the configs' ${data_dir:}, ${unless_set:...}, ...


def assert_accuracy_is_the_confusion_trace(metrics: dict, tested: int) -> None:
    """The report's exact arithmetic: its confusion matrix counts the ``tested`` images and
    ``test/acc`` is its diagonal over that count (whatever the model learned)."""
    matrix = metrics["test/confusion_matrix"]
    assert sum(map(sum, matrix)) == tested
    trace = sum(row[i] for i, row in enumerate(matrix))
    assert metrics["test/acc"] == pytest.approx(trace / tested, abs=1e-6)


def shared_data_dir() -> Path:
    """The offline dataset copies: $GENDISC_DATA_DIR, else ../shared/data beside the project."""
    return Path(os.environ.get("GENDISC_DATA_DIR") or PROJECT_ROOT.parent / "shared" / "data")


requires_mnist = pytest.mark.skipif(
    not (shared_data_dir() / "MNIST" / "raw").is_dir(),
    reason=f"MNIST not found under {shared_data_dir()} (set GENDISC_DATA_DIR)",
)


def compose_config(
    overrides: list[str], output_dir: Path, config_name: str = "train"
) -> DictConfig:
    """The real composed config, as `gendisc-train <overrides>` would see it, writing to output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            return_hydra_config=True,
            overrides=[
                f"paths.data_dir={shared_data_dir()}",
                "extras.print_config=false",
                *overrides,
            ],
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Factory: make_cfg(overrides, name='run') -> config writing to tmp_path/name."""

    def factory(overrides: list[str] | None = None, name: str = "run", **kwargs) -> DictConfig:
        return compose_config(list(overrides or []), tmp_path / name, **kwargs)

    yield factory
    GlobalHydra.instance().clear()


# --------------------------------------------------------------------- sweeps run as a user would
def gendisc_command(*args: str, module: str = "gendisc.train") -> list[str]:
    """``python -m gendisc.train [-m] <args>`` with the offline data and no config printout."""
    flags = [arg for arg in args if arg.startswith("-") and "=" not in arg]
    args = tuple(arg for arg in args if arg not in flags)
    return [
        sys.executable,
        "-m",
        module,
        *flags,  # before the overrides: argparse takes one run of positional arguments
        f"paths.data_dir={shared_data_dir()}",
        "extras.print_config=false",
        "callbacks.rich_progress_bar=null",
        *args,
    ]


def single_thread_env() -> dict[str, str]:
    """Subprocess environment: one torch thread per process (the CI machine has 2 shared cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_gendisc(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run gendisc-train in a subprocess; fail with its output tail when it exits non-zero."""
    result = subprocess.run(
        gendisc_command(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=single_thread_env(),
        timeout=timeout,
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return result


# the tiny real sweep shared by test_sweeps, test_report and test_notebook: job 0 is driven to a
# NaN loss in its second epoch (its learning rate is multiplied by 1e30 after epoch 0), job 1
# trains normally; the sweep must go on past job 0.
TINY_SWEEP_ARGS = [
    "-m",
    "model=classifier",
    "data=digits",
    "data.val_size=100",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=3",
    "model.scheduler._target_=torch.optim.lr_scheduler.StepLR",
    "~model.scheduler.T_max",
    "+model.scheduler.step_size=1",
    "+model.scheduler.gamma=1e30,1",
]


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-job multirun of gendisc-train on digits (one job fails with a NaN loss)."""
    sweep = tmp_path_factory.mktemp("tiny_sweep")
    run_gendisc(*TINY_SWEEP_ARGS, f"hydra.sweep.dir={sweep}", cwd=PROJECT_ROOT)
    return sweep


# ------------------------------------------------------------- generative models on tiny budgets
def generative_test_overrides(cache_dir: Path) -> list[str]:
    """Tiny budgets for the generative metrics (an evaluator trained in seconds, few samples)
    and a private evaluator cache."""
    metrics = "callbacks.generative_metrics"
    return [
        f"paths.cache_dir={cache_dir}",
        f"{metrics}.num_samples=200",
        f"{metrics}.cas_samples=200",
        f"{metrics}.kid_subset_size=100",
        f"{metrics}.kid_subsets=5",
        f"{metrics}.is_splits=2",
        f"{metrics}.evaluator.epochs=0",
        f"{metrics}.evaluator.min_steps=40",
        f"{metrics}.evaluator.channels=[8,16]",
        "callbacks.samples.every_n_epochs=1",
        "callbacks.rich_progress_bar=null",
    ]


TINY_GENERATIVE = ["data.val_size=100", "trainer.max_epochs=2", "trainer.limit_train_batches=3"]


@pytest.fixture(scope="session")
def generative_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One evaluator cache for the whole test session."""
    return tmp_path_factory.mktemp("generative_cache")


def _tiny_generative_run(
    factory: pytest.TempPathFactory, cache: Path, name: str, overrides: list[str]
) -> tuple[Path, dict]:
    from gendisc.train import train

    run = factory.mktemp(name)
    cfg = compose_config([*overrides, *TINY_GENERATIVE, *generative_test_overrides(cache)], run)
    try:
        return run, train(cfg)
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def tiny_cgan_run(
    tmp_path_factory: pytest.TempPathFactory, generative_cache: Path
) -> tuple[Path, dict]:
    """A class-conditional GAN trained 2 x 3 steps on digits: (run dir, returned metrics)."""
    return _tiny_generative_run(tmp_path_factory, generative_cache, "tiny_cgan", ["model=gan"])


@pytest.fixture(scope="session")
def tiny_cvae_run(
    tmp_path_factory: pytest.TempPathFactory, generative_cache: Path
) -> tuple[Path, dict]:
    """A class-conditional VAE trained 2 x 3 steps on digits: (run dir, returned metrics)."""
    return _tiny_generative_run(tmp_path_factory, generative_cache, "tiny_cvae", ["model=vae"])
