"""Resuming a run in its own directory (``ckpt_path=last``), and the checkpoints a run ends with.

A resumed run continues its loggers too: CSV and TensorBoard write to their latest ``version_N``
folder again, the CSV rows logged before the checkpoint are kept, and wandb resumes its run id.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from gendisc.checkpoints import load_checkpoint
from gendisc.errors import ConfigError
from gendisc.guards import last_checkpoint_path
from gendisc.utils.config import instantiate_list

log = logging.getLogger(__name__)


def is_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun."""
    if not HydraConfig.initialized():
        return False
    return HydraConfig.get().mode == RunMode.MULTIRUN


def checkpoint_dir(cfg: DictConfig) -> Path:
    """Where this run's ModelCheckpoint writes (``<run dir>/checkpoints`` by default)."""
    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
    return Path(dirpath) if dirpath else Path(cfg.paths.output_dir) / "checkpoints"


def last_checkpoint_file(cfg: DictConfig) -> Path:
    """Where ``callbacks.last_checkpoint`` writes the run's latest state (``last.ckpt`` in its
    ``dirpath``, else in :func:`checkpoint_dir`): the one place that names that file."""
    dirpath = OmegaConf.select(cfg, "callbacks.last_checkpoint.dirpath")
    return (Path(dirpath) if dirpath else checkpoint_dir(cfg)) / "last.ckpt"


def finished_run(cfg: DictConfig) -> dict[str, Any] | None:
    """With ``ckpt_path=last``, the metrics.json of this run directory when its run already
    finished (all ``trainer.max_epochs`` epochs, and tested when the config tests), else None.

    A sweep repeated with ``ckpt_path=last`` to continue its unfinished runs then leaves the
    finished ones as they are (not tested again, their provenance not rewritten)."""
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if str(cfg.get("ckpt_path")) != "last" or not cfg.get("train") or max_epochs is None:
        return None
    run_dir = Path(cfg.paths.output_dir)
    path, failure = run_dir / "metrics.json", run_dir / "failure.json"
    if not path.is_file() or (
        failure.is_file() and failure.stat().st_mtime >= path.stat().st_mtime
    ):
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: the run is redone from its checkpoint
    if not isinstance(metrics, dict) or int(metrics.get("epochs", -1)) < int(max_epochs):
        return None
    if cfg.get("test") and not any(str(key).startswith("test/") for key in metrics):
        return None
    return metrics


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from.

    ``ckpt_path=last`` means this run directory's ``checkpoints/last.ckpt``: resume a killed run
    with its own directory, ``gendisc-train <its overrides> hydra.run.dir=<run dir>
    ckpt_path=last``. In a multirun a job without a checkpoint starts afresh, so a whole sweep
    resumes with ``hydra.sweep.dir=<sweep dir> ckpt_path=last``.
    """
    value = cfg.get("ckpt_path")
    if value is None:
        return None
    if str(value) in ("best", "hpc") or str(value).startswith("registry"):
        return str(value)  # Lightning's own names
    if str(value) != "last":
        path = Path(str(value)).expanduser()
        if not path.is_file():
            raise ConfigError(f"ckpt_path={value}: no such checkpoint file.")
        return str(path)
    path = last_checkpoint_file(cfg)
    if path.is_file():
        return str(path)
    if is_multirun():
        log.warning("ckpt_path=last: no %s yet; this job starts from scratch.", path)
        return None
    raise ConfigError(
        f"ckpt_path=last: there is no checkpoint {path}. To resume a run, give its directory: "
        "gendisc-train <the run's overrides> hydra.run.dir=<run dir> ckpt_path=last "
        "(a sweep: hydra.sweep.dir=<sweep dir> ckpt_path=last)."
    )


def continues_run(cfg: DictConfig, ckpt_path: str | None) -> bool:
    """Whether fit resumes from this run directory's own checkpoints: the same run, continued."""
    if not ckpt_path:
        return False
    return Path(str(ckpt_path)).resolve().is_relative_to(checkpoint_dir(cfg).resolve())


def _latest_version(root: Path) -> int | None:
    versions = [
        int(match.group(1))
        for child in root.glob("version_*")
        if (match := re.fullmatch(r"version_(\d+)", child.name))
    ]
    return max(versions) if versions else None


def _wandb_run_id(save_dir: Path) -> str | None:
    """The id of the newest wandb run (online or offline) kept under ``<save_dir>/wandb``."""
    runs = sorted(
        (match.group(1), match.group(2))
        for child in (save_dir / "wandb").glob("*run-*")
        if (match := re.fullmatch(r"(?:offline-)?run-(\d{8}_\d{6})-(\w+)", child.name))
    )
    return runs[-1][1] if runs else None


def resume_logger_config(loggers: DictConfig | None) -> DictConfig | None:
    """Logger configs that continue the run's earlier logs when it resumes in its own directory.

    CSV and TensorBoard loggers write to their latest ``version_N`` folder again; a wandb logger
    resumes the run id found under ``<save_dir>/wandb``.
    """
    if not loggers:
        return loggers
    loggers = loggers.copy()
    for name, entry in loggers.items():
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            continue
        target = str(entry._target_).rsplit(".", 1)[-1]
        save_dir = Path(str(entry.get("save_dir") or "."))
        with open_dict(entry):
            if target in ("CSVLogger", "TensorBoardLogger") and entry.get("version") is None:
                default_name = "lightning_logs" if target == "CSVLogger" else ""
                log_name = entry.get("name", default_name) or ""
                version = _latest_version(save_dir / log_name)
                if version is not None:
                    entry.version = version
                    log.info("Resuming logger %s in version_%d.", name, version)
            elif target == "WandbLogger" and not entry.get("id"):
                run_id = _wandb_run_id(save_dir)
                if run_id:
                    entry.id = run_id
                    entry.resume = "allow"
                    log.info("Resuming wandb run %s.", run_id)
    return loggers


def _read_csv_rows(path: Path, last_epoch: int) -> list[dict[str, str]]:
    """Rows of an earlier metrics.csv up to the checkpoint's epoch (later ones are redone)."""
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))

    def keep(row: dict[str, str]) -> bool:
        epoch = row.get("epoch") or ""
        try:
            return float(epoch) <= last_epoch
        except ValueError:
            return True

    return [row for row in rows if keep(row)]


def continue_csv_logs(loggers: list[Any], checkpoint: str) -> None:
    """Lightning's CSV writer deletes an existing metrics.csv: write its earlier rows back."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities import rank_zero_only

    csv_loggers = [logger for logger in loggers if isinstance(logger, CSVLogger)]
    if not csv_loggers or rank_zero_only.rank != 0:
        return
    last_epoch = load_checkpoint(checkpoint, "ckpt_path").get("epoch", -1)
    for logger in csv_loggers:
        path = Path(logger.log_dir) / "metrics.csv"
        rows = _read_csv_rows(path, last_epoch)
        writer = logger.experiment  # created now: this removes the old file
        if rows:
            writer.metrics = [{k: v for k, v in row.items() if v != ""} for row in rows]
            writer.save()


def instantiate_loggers(cfg: DictConfig, ckpt_path: str | None) -> list[Any]:
    """The configured loggers; in a run continued in its own directory they continue its logs."""
    continuing = continues_run(cfg, ckpt_path)
    logger_cfg = resume_logger_config(cfg.get("logger")) if continuing else cfg.get("logger")
    loggers = instantiate_list(logger_cfg, "logger")
    if continuing:
        continue_csv_logs(loggers, str(ckpt_path))
    return loggers


def last_checkpoint(cfg: DictConfig) -> str:
    """:func:`last_checkpoint_file` when it exists, else ''."""
    path = last_checkpoint_file(cfg)
    return str(path) if path.is_file() else ""


def checkpoint_to_test(
    cfg: DictConfig, trainer: L.Trainer, choice: str | None = None
) -> str | None:
    """The checkpoint of ``choice`` (default ``test_ckpt``): 'best' (on the validation metric),
    'last', or None for the weights in memory."""
    choice = cfg.get("test_ckpt") if choice is None else choice
    if choice not in ("best", "last") or not cfg.get("train"):
        return None
    if choice == "last":
        path = last_checkpoint_path(trainer) or last_checkpoint(cfg)
    else:  # the callback that monitors the validation metric
        monitors = [cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)]
        path = monitors[0].best_model_path if monitors else ""
    if not path:
        log.warning("No %s checkpoint was written; testing the weights in memory.", choice)
        return None
    return path


TEST_CKPT_CHOICES = ("best", "last", "both", None)


def checkpoints_to_test(cfg: DictConfig, trainer: L.Trainer) -> list[tuple[str, str | None]]:
    """(metric prefix, checkpoint) of each test of the run, the one reported as ``test/*`` last.

    ``test_ckpt=both`` tests the last checkpoint (its metrics renamed ``test_last/*``), then the
    one selected on validation (``test/*``): a study reports both from one training run.
    """
    choice = cfg.get("test_ckpt")
    if choice not in TEST_CKPT_CHOICES:
        raise ConfigError(
            f"test_ckpt={choice}: use best (selected on validation), last, both (best as "
            "test/*, last as test_last/*) or null (the weights in memory)."
        )
    if choice != "both":
        return [("test/", checkpoint_to_test(cfg, trainer))]
    return [
        ("test_last/", checkpoint_to_test(cfg, trainer, "last")),
        ("test/", checkpoint_to_test(cfg, trainer, "best")),
    ]


def best_validation(trainer: L.Trainer) -> dict[str, float]:
    """``<monitor>_best``: the checkpoint callback's best score (the model tested as 'best')."""
    for checkpoint in trainer.checkpoint_callbacks:
        score = getattr(checkpoint, "best_model_score", None)
        if getattr(checkpoint, "monitor", None) and score is not None:
            return {f"{checkpoint.monitor}_best": float(score)}
    return {}
