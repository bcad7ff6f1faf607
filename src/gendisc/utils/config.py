"""Config helpers: resolvers, printing the composed tree, instantiating lists of objects."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import hydra
import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from gendisc.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def _unique_run_id() -> str:
    """Process id plus random hex: distinct even for jobs started in the same second."""
    return f"{os.getpid()}-{secrets.token_hex(3)}"


def register_resolvers() -> None:
    """Resolvers used by the configs (``run_id`` is cached per config so a run keeps one id)."""
    # imported here: distributed.py imports modules that use this one
    from gendisc.utils.distributed import slurm_gpus, slurm_tasks

    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _unique_run_id, use_cache=True)
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("data_dir"):
        OmegaConf.register_new_resolver(
            "data_dir", lambda: os.environ.get("GENDISC_DATA_DIR") or str(PROJECT_ROOT / "data")
        )
    if not OmegaConf.has_resolver("slurm_gpus"):
        OmegaConf.register_new_resolver("slurm_gpus", slurm_gpus)
    if not OmegaConf.has_resolver("slurm_tasks"):
        OmegaConf.register_new_resolver("slurm_tasks", slurm_tasks)


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Print the composed config as a tree (one branch per top-level group) and save it."""
    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    first = ["data", "model", "trainer", "callbacks", "logger", "paths", "extras"]
    keys = [k for k in first if k in cfg] + [k for k in cfg if k not in first]
    for key in keys:
        branch = tree.add(str(key), guide_style="dim")
        value = cfg[key]
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark"))
    Console().print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        with open(save_to, "w") as file:
            Console(file=file, width=120).print(tree)


def instantiate_list(group: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every entry of a config group that has a ``_target_`` (callbacks, loggers)."""
    objects: list[Any] = []
    if not group:
        return objects
    for name, entry in group.items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            try:
                objects.append(hydra.utils.instantiate(entry))
            except Exception as error:
                raise ConfigError(f"{what}.{name}: could not be created: {error}") from error
    return objects
