"""The evaluation report of every run: metrics.json, confusion_matrix.png and a results table."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gendisc.callbacks.logging_images import log_image
from gendisc.utils.provenance import git_state, now_iso, run_provenance

log = logging.getLogger(__name__)


def count_images(batch: Any) -> int:
    """Images in a training batch: the first dimension of every 4-d tensor in it."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim == 4 else 0
    if isinstance(batch, dict):
        return sum(count_images(value) for value in batch.values())
    if isinstance(batch, list | tuple):
        return sum(count_images(value) for value in batch)
    return 0


def reset_host_peak() -> None:
    """Restart the peak-RSS count of this process (Linux), so each job of a multirun, which
    shares one process with the jobs before it, measures its own peak."""
    with contextlib.suppress(OSError):  # not Linux (or not allowed): peak since the start
        Path("/proc/self/clear_refs").write_text("5")


def host_peak_mb() -> float:
    """Peak resident memory since the last ``reset_host_peak`` (else since the process began)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak memory of this process: accelerator memory when training there, else host RSS."""
    host = host_peak_mb()
    if device.type == "cuda":
        return {
            "mem/peak_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "mem/host_peak_mb": host,
        }
    return {"mem/peak_mb": host, "mem/host_peak_mb": host}


def confusion_figure(matrix: np.ndarray, class_names: list[str], title: str = "") -> Figure:
    """Confusion matrix with counts in the cells and colours normalised per true class."""
    matrix = np.asarray(matrix)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.55 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or "confusion matrix (test)")
    if len(class_names) <= 30:
        for (row, col), count in np.ndenumerate(matrix):
            colour = "white" if normalised[row, col] > 0.5 else "black"
            axes.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    figure.tight_layout()
    return figure


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class EvaluationReport(Callback):
    """Measures the cost of fitting and writes the run's report after testing.

    Args:
        output_dir: the run directory (``paths.output_dir``).
        seed: the training seed, recorded in metrics.json.
        extra: further entries for metrics.json (e.g. the model name).

    metrics.json also records the run's provenance (``run/*``, see ``run_provenance``): the
    start time and git state are taken when the callback is created, at the start of the run.
    """

    def __init__(self, output_dir: str, seed: int | None = None, extra: dict | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.extra = dict(extra or {})
        self.started_at = now_iso()
        self.git = git_state()
        self.fit_seconds = 0.0
        self.train_images = 0
        self._fit_started: float | None = None
        self._restored: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}

    # ------------------------------------------------------------------------------ measuring
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        reset_host_peak()
        if self._restored:  # resuming: count the cost of the interrupted run too
            self.fit_seconds = self._restored.get("fit_seconds", 0.0)
            self.train_images = self._restored.get("train_images", 0)
            self._restored = {}
        self._fit_started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.train_images += count_images(batch) * trainer.world_size

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._fit_started is not None:
            self.fit_seconds += time.perf_counter() - self._fit_started
            self._fit_started = None

    def state_dict(self) -> dict[str, Any]:
        running = time.perf_counter() - self._fit_started if self._fit_started else 0.0
        return {"fit_seconds": self.fit_seconds + running, "train_images": self.train_images}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Kept until ``on_fit_start``: only a resumed fit adds the earlier cost (not a test).

        Strategies that restore after setup (``restore_checkpoint_after_setup``) call this once
        the fit has started: the earlier cost is added at once then.
        """
        if self._fit_started is not None:
            self.fit_seconds = state_dict.get("fit_seconds", 0.0)
            self.train_images = state_dict.get("train_images", 0)
            self._restored = {}
        else:
            self._restored = dict(state_dict)

    # ------------------------------------------------------------------------------ reporting
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = {
            key: _plain(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith(("test/", "gen/"))
        }
        metrics.update(getattr(pl_module, "test_results", {}))
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "counts"):
            metrics.update(datamodule.counts)
            metrics["data_seed"] = getattr(datamodule, "data_seed", None)
        metrics["seed"] = self.seed
        metrics["time/fit_s"] = round(self.fit_seconds, 3)
        metrics["time/train_samples_per_s"] = (
            round(self.train_images / self.fit_seconds, 1) if self.fit_seconds else None
        )
        metrics["train/images_seen"] = self.train_images
        metrics.update(peak_memory_mb(pl_module.device))
        metrics["epochs"] = trainer.current_epoch
        metrics["global_step"] = trainer.global_step
        metrics.update(run_provenance(trainer, started_at=self.started_at, git=self.git))
        metrics.update(self.extra)
        self.metrics = metrics
        self._write(trainer, metrics)

    @rank_zero_only
    def _write(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "metrics.json"
        path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        if "test/confusion_matrix" in metrics:
            figure = confusion_figure(
                np.array(metrics["test/confusion_matrix"]), metrics.get("class_names", [])
            )
            figure.savefig(self.output_dir / "confusion_matrix.png", dpi=120)
            log_image(trainer, "test/confusion_matrix", figure)
            plt.close(figure)
        print_results_table(metrics, title=f"Results ({self.output_dir})")
        log.info("Report written to %s", path)


RESULT_KEYS = [
    "test/acc",
    "test/precision",
    "test/recall",
    "test/f1",
    "test/auroc",
    "test/loss",
    "gen/fid",
    "gen/kid",
    "gen/is",
    "gen/cas",
    "gen/class_acc",
    "gen/precision",
    "gen/recall",
    "gen/density",
    "gen/coverage",
    "gen/fid_real",
    "gen/is_real",
    "test/elbo",
    "data/labeled",
    "data/unlabeled",
    "data/val",
    "data/test",
    "seed",
    "data_seed",
    "epochs",
    "time/fit_s",
    "time/train_samples_per_s",
    "mem/peak_mb",
]


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def print_results_table(
    *runs: dict[str, Any], title: str = "Results", names: list[str] | None = None
) -> None:
    """Print one column per run of the scalar results shared by the report."""
    table = Table(title=title)
    table.add_column("metric")
    for index, _ in enumerate(runs):
        table.add_column(names[index] if names else "value", justify="right")
    for key in RESULT_KEYS:
        if any(key in run for run in runs):
            table.add_row(key, *[format_value(run.get(key, "")) for run in runs])
    for key, value in per_class_rows(*runs):
        table.add_row(escape(key), *value)  # class names are text, not rich markup
    Console().print(table)


MAX_PER_CLASS_ROWS = 20  # classes; more would drown the table (metrics.json has them all)


def per_class_rows(*runs: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Rows ``test/precision[<class name>]`` and ``test/recall[<class name>]`` for the runs'
    per-class results, when every run has them for the same (at most 20) class names."""
    names = [run.get("class_names") for run in runs]
    if not names[0] or any(n != names[0] for n in names) or len(names[0]) > MAX_PER_CLASS_ROWS:
        return []
    rows = []
    for metric in ("precision", "recall"):
        key = f"test/{metric}_per_class"
        if all(len(run.get(key) or []) == len(names[0]) for run in runs):
            for k, name in enumerate(names[0]):
                rows.append((f"test/{metric}[{name}]", [format_value(run[key][k]) for run in runs]))
    return rows
