"""Multi-process (DDP) and SLURM launches.

Lightning starts ranks 1..N-1 by running rank 0's command again. In a Hydra multirun that
command is the whole sweep, so rank 0 names its run directory in the environment and a worker
composes that job's saved config instead (``ddp_worker_argv``): DDP also works inside multiruns.
Rank 0 passes its training seed the same way (``resolve_seed``), so every rank draws the same
data order even with ``seed=null``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import DictConfig, open_dict

from gendisc.checkpoints import CONFIG_KEY, load_checkpoint
from gendisc.errors import ConfigError
from gendisc.utils.resume import is_multirun, resolve_ckpt_path

log = logging.getLogger(__name__)

# Set by rank 0 while it fits: the run directory whose saved config the other ranks compose.
DDP_RUN_DIR_ENV = "GENDISC_DDP_RUN_DIR"
# Set with it when the job belongs to a multirun: a failing worker rank then exits quietly.
DDP_MULTIRUN_ENV = "GENDISC_DDP_MULTIRUN"
# Set with it: the training seed rank 0 uses (chosen by rank 0 when the config says seed=null).
DDP_SEED_ENV = "GENDISC_DDP_SEED"
# Environment that a multi-process launch leaves behind in rank 0; cleared after each job.
_DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def global_rank() -> int:
    """This process's rank, read from the launch environment (0 outside a multi-process job)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name):
            return int(os.environ[name])
    return 0


def is_ddp_worker() -> bool:
    """Whether this process is a rank > 0 that rank 0 started for its job."""
    return bool(os.environ.get(DDP_RUN_DIR_ENV)) and global_rank() > 0


def resolve_seed(cfg: DictConfig) -> int:
    """The training seed of this run, written into ``cfg.seed`` (so checkpoints, loggers and
    metrics.json record the seed used) and returned.

    ``seed=null`` picks a fresh random seed, except in a worker rank started by rank 0, which
    takes rank 0's (``GENDISC_DDP_SEED``): every rank then draws the same data order; and
    except when resuming (``ckpt_path``), which takes the seed stored in the checkpoint.
    """
    seed = cfg.get("seed")
    if seed is None and is_ddp_worker() and os.environ.get(DDP_SEED_ENV):
        seed = int(os.environ[DDP_SEED_ENV])
    if seed is None:
        seed = _checkpoint_seed(cfg)
    if seed is None:
        seed = secrets.randbelow(2**31)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(
            f"seed={seed!r}: give an integer from 0 to {2**32 - 1}, or null for a random one."
        )
    with open_dict(cfg):
        cfg.seed = int(seed)
    return int(seed)


def _checkpoint_seed(cfg: DictConfig) -> int | None:
    """The training seed stored in the checkpoint this run resumes from, if any."""
    if not cfg.get("train") or cfg.get("ckpt_path") is None:
        return None
    path = resolve_ckpt_path(cfg)
    if path is None or not Path(path).is_file():  # a fresh multirun job, or Lightning's names
        return None
    stored = load_checkpoint(path, "ckpt_path").get(CONFIG_KEY) or {}
    return stored.get("seed")


def ddp_worker_argv(argv: list[str], environ: dict[str, str]) -> list[str]:
    """The command line of a DDP worker (rank > 0) started by Lightning from rank 0's command.

    In a multirun rank 0's command is the whole sweep (``-m ...``), so a worker composes its
    job's saved config instead: ``-cp <run dir>/.hydra -cn config hydra.run.dir=<run dir>``.
    """
    run_dir = environ.get(DDP_RUN_DIR_ENV)
    local_rank = int(environ.get("LOCAL_RANK", "0") or 0)
    if not run_dir or local_rank == 0:
        return argv
    return [
        argv[0],
        "--config-path",
        str(Path(run_dir) / ".hydra"),
        "--config-name",
        "config",
        f"hydra.run.dir='{run_dir}'",
        "hydra.output_subdir=null",
        f"hydra.job.name=train_ddp_rank_{local_rank}",
    ]


def check_multiprocess_launch(cfg: DictConfig, trainer: L.Trainer) -> None:
    """DDP re-runs this program for ranks > 0: they need the run's saved ``.hydra/config.yaml``."""
    if not isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher) or global_rank() > 0:
        return  # nothing to launch, or a worker: keep the environment rank 0 gave it
    saved = Path(cfg.paths.output_dir) / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.get('strategy')} starts ranks 1..N-1 as new processes "
            "that read the run's .hydra/config.yaml: run it with gendisc-train (python -m "
            "gendisc.train), not in-process (a notebook, a test)."
        )
    os.environ[DDP_RUN_DIR_ENV] = str(Path(cfg.paths.output_dir).resolve())
    os.environ[DDP_MULTIRUN_ENV] = "1" if is_multirun() else "0"
    if cfg.get("seed") is not None:
        os.environ[DDP_SEED_ENV] = str(cfg.seed)


@contextlib.contextmanager
def distributed_scope() -> Iterator[None]:
    """Leave no process group or launch environment behind for the next job of a sweep."""
    before = {
        name: os.environ.get(name)
        for name in (*_DISTRIBUTED_ENV, DDP_RUN_DIR_ENV, DDP_MULTIRUN_ENV, DDP_SEED_ENV)
    }
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if global_rank() == 0:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def strategy_for(cfg: DictConfig, model: L.LightningModule) -> dict[str, Any]:
    """Trainer overrides: manually optimised modules (GANs) need DDP to find unused parameters.

    Their steps back-propagate different losses through different parameter subsets (D's loss
    with a detached generated batch, then G's loss with D frozen), which plain DDP rejects.
    """
    if cfg.trainer.get("strategy") == "ddp" and not model.automatic_optimization:
        log.info("Manual optimisation under DDP: using ddp_find_unused_parameters_true.")
        return {"strategy": "ddp_find_unused_parameters_true"}
    return {}
