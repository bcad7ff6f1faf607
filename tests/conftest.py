"""Shared fixtures: compose the real Hydra configs for in-process runs on tiny budgets."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from gendisc.utils.config import PROJECT_ROOT

CONFIG_DIR = str(PROJECT_ROOT / "conf")


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
