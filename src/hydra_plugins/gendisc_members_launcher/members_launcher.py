"""``hydra/launcher=members``: the jobs of a sweep that differ only in their data and seed
(``seed``, ``data.data_seed``, ``data.labels_per_class``, ``model.unlabeled_weight``) train
together as members of one model (``gendisc.members``); every job still gets its own run
directory, ``.hydra/`` files, ``metrics.json`` and checkpoint, written through Hydra's
``run_job`` as the basic launcher writes them, and returns its optimised metric.

    gendisc-train -m experiment=salimans_mnist_table hydra/launcher=members

Jobs whose other training settings differ form separate groups, trained one after another;
``hydra.launcher.max_members`` caps a group's size, ``hydra.launcher.rng`` picks the random
streams (``member``: each run's own, as a single run draws them; ``shared``: one draw for all
members, fewer GPU kernels), ``hydra.launcher.graphs=true`` replays each training step as a
CUDA graph (GPU only). A group that fails (a config error, a NaN loss) records the error
in each of its jobs' ``failure.json``; the sweep goes on.

Resuming: every group saves its state in ``<sweep dir>/members/group-<id>.ckpt`` after an
epoch when ``hydra.launcher.checkpoint_every_s`` seconds have passed since the last save
(0: every epoch; null: never) and when it has trained. The same command with
``ckpt_path=last`` (and the sweep's ``hydra.sweep.dir``) leaves the finished runs as they are
and continues the others from that checkpoint (``gendisc.members.train_group``).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


def _job_output_dir(sweep_config: DictConfig) -> str:
    """The job's directory, as ``run_job`` computes it (sweep dir / subdir)."""
    output_dir = str(OmegaConf.select(sweep_config, "hydra.sweep.dir"))
    subdir = str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))
    return os.path.abspath(os.path.join(output_dir, subdir))


def _task_config(sweep_config: DictConfig) -> DictConfig:
    """The job's config as its task sees it (no ``hydra`` node), every value resolved with the
    job's own Hydra settings (its output directory)."""
    HydraConfig.instance().set_config(sweep_config)
    with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
        sweep_config.hydra.runtime.output_dir = _job_output_dir(sweep_config)
    HydraConfig.instance().set_config(sweep_config)
    task_cfg = copy.deepcopy(sweep_config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    OmegaConf.resolve(task_cfg)
    return task_cfg


class MembersLauncher(Launcher):
    """Groups a sweep's jobs into members of one model (see the module docstring)."""

    def __init__(
        self,
        rng: str = "member",
        max_members: int | None = None,
        graphs: bool = False,
        checkpoint_every_s: float | None = 60.0,
    ) -> None:
        super().__init__()
        self.rng = rng
        self.graphs = bool(graphs)
        self.max_members = max_members
        self.checkpoint_every_s = checkpoint_every_s
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from gendisc import members  # imported late: Hydra lists launchers before any job

        setup_globals()
        assert self.hydra_context is not None and self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        sweep_configs, task_cfgs = [], []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            sweep_configs.append(sweep_config)
            task_cfgs.append(_task_config(sweep_config))
        returns: dict[int, JobReturn] = {}
        groups = members.group_jobs(task_cfgs, self.max_members)
        log.info(f"Launching {len(job_overrides)} jobs as {len(groups)} group(s) of members")
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        for group in groups:
            tasks, done = self._train_group(members, [task_cfgs[i] for i in group], sweep_dir)
            for index, task in zip(group, tasks, strict=True):
                returns[index] = run_job(
                    hydra_context=self.hydra_context,
                    task_function=task,
                    config=sweep_configs[index],
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            done()
        return [returns[i] for i in range(len(job_overrides))]

    def _train_group(
        self, members: Any, cfgs: list[DictConfig], sweep_dir: Path
    ) -> tuple[list[Callable[..., Any]], Callable[[], None]]:
        """Train one group (resumably, ``members.train_group``); one task per job that tests
        and reports its member, returns a finished run's metric, or records the group's
        failure; and what to do once the tasks ran (remove the group checkpoint when every
        member was reported)."""
        from gendisc.train import optimized_value
        from gendisc.utils.failures import handle_failure, set_aside_old_failure

        def failed(error: Exception) -> Callable[[DictConfig], Any]:
            def task(cfg: DictConfig) -> Any:
                output_dir = Path(cfg.paths.output_dir)
                set_aside_old_failure(output_dir)
                return handle_failure(output_dir, error, worker=False)

            return task

        try:
            trained = members.train_group(
                cfgs,
                sweep_dir,
                rng=self.rng,
                graphs=self.graphs,
                checkpoint_every_s=self.checkpoint_every_s,
            )
        except Exception as error:
            log.error(f"members: the group of {len(cfgs)} jobs failed: {error}")
            return [failed(error)] * len(cfgs), lambda: None
        reported: list[int] = []

        def report(index: int) -> Callable[[DictConfig], Any]:
            def task(cfg: DictConfig) -> Any:
                output_dir = Path(cfg.paths.output_dir)
                set_aside_old_failure(output_dir)
                try:
                    metrics = members.report_member(
                        cfg, trained.group, index, trained.modules[index]
                    )
                    value = optimized_value(cfg, metrics)
                except Exception as error:
                    return handle_failure(output_dir, error, worker=False)
                reported.append(index)
                return value

            return task

        def finished(metrics: dict[str, Any]) -> Callable[[DictConfig], Any]:
            def task(cfg: DictConfig) -> Any:  # left as it is, as gendisc.train leaves it
                try:
                    return optimized_value(cfg, metrics)
                except Exception as error:
                    return handle_failure(Path(cfg.paths.output_dir), error, worker=False)

            return task

        def done() -> None:
            if trained.checkpoint is not None and len(reported) == len(trained.todo):
                trained.checkpoint.remove()

        tasks = [
            finished(trained.finished[i])
            if i in trained.finished
            else report(trained.todo.index(i))
            for i in range(len(cfgs))
        ]
        return tasks, done
