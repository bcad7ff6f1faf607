"""Resuming: a run killed mid-training finishes, in its own directory, as if never stopped."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gendisc.errors import ConfigError
from gendisc.train import train
from gendisc.utils.config import PROJECT_ROOT
from gendisc.utils.resume import resolve_ckpt_path, resume_logger_config
from tests.conftest import gendisc_command, run_gendisc, single_thread_env

# five full epochs of 26 steps: long enough to be killed between its first and last checkpoint
RUN = [
    "model=classifier",
    "data=digits",
    "data.val_size=100",
    "data.batch_size=50",
    "trainer.max_epochs=5",
    "trainer.deterministic=true",
    "seed=3",
]


def _wait_for_checkpoint(process: subprocess.Popen, path: Path, timeout: float = 120) -> int:
    """Poll until ``path`` holds a complete checkpoint; return its epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before its first checkpoint"
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=False)["epoch"]
            except Exception:  # being written: try again
                pass
        time.sleep(0.02)
    raise TimeoutError(f"no checkpoint at {path}")


@pytest.mark.slow
def test_killed_run_resumes_to_the_metrics_of_an_uninterrupted_one(make_cfg, tmp_path):
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        gendisc_command(*RUN, f"hydra.run.dir={run_dir}"),
        cwd=PROJECT_ROOT,
        env=single_thread_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        epoch = _wait_for_checkpoint(process, run_dir / "checkpoints" / "last.ckpt")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert epoch < 4 and not (run_dir / "metrics.json").exists(), "killed too late"

    # the command a user runs: same overrides, the old run directory, ckpt_path=last
    run_gendisc(*RUN, f"hydra.run.dir={run_dir}", "ckpt_path=last", cwd=PROJECT_ROOT)
    resumed = json.loads((run_dir / "metrics.json").read_text())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses
    try:
        train(make_cfg(RUN, name="uninterrupted"))
    finally:
        torch.set_num_threads(threads)
    reference = json.loads((tmp_path / "uninterrupted" / "metrics.json").read_text())

    for key in ("test/acc", "test/loss", "test/f1", "val/acc_best", "val/loss"):
        assert resumed[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-7), key
    assert resumed["test/confusion_matrix"] == reference["test/confusion_matrix"]
    for key in ("epochs", "global_step", "train/images_seen"):
        assert (
            resumed[key]
            == reference[key]
            == {"epochs": 5, "global_step": 130, "train/images_seen": 6500}[key]
        ), key
    # the CSV log continued in its version: each epoch's validation row once, none lost
    versions = sorted(p.name for p in (run_dir / "csv").iterdir())
    assert versions == ["version_0"]
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("val/acc")]
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3, 4]


def test_ckpt_path_last_without_a_checkpoint_says_how_to_resume(make_cfg):
    cfg = make_cfg(["ckpt_path=last"])
    with pytest.raises(ConfigError, match=r"hydra.run.dir=<run dir> ckpt_path=last"):
        resolve_ckpt_path(cfg)


def test_loggers_continue_their_versions_and_wandb_run(tmp_path):
    for folder in ("csv/version_0", "csv/version_3", "csv/version_x", "tb/version_1"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "wandb" / "offline-run-20260101_120000-old111").mkdir(parents=True)
    (tmp_path / "wandb" / "offline-run-20260102_080000-new222").mkdir(parents=True)
    loggers = OmegaConf.create(
        {
            "csv": {
                "_target_": "lightning.pytorch.loggers.csv_logs.CSVLogger",
                "save_dir": str(tmp_path),
                "name": "csv",
            },
            "tensorboard": {
                "_target_": "lightning.pytorch.loggers.TensorBoardLogger",
                "save_dir": str(tmp_path / "tb"),
                "name": None,
            },
            "wandb": {
                "_target_": "lightning.pytorch.loggers.wandb.WandbLogger",
                "save_dir": str(tmp_path),
                "offline": True,
            },
        }
    )
    resumed = resume_logger_config(loggers)
    assert resumed.csv.version == 3 and resumed.tensorboard.version == 1
    assert resumed.wandb.id == "new222" and resumed.wandb.resume == "allow"
    assert "version" not in loggers.csv  # the composed config itself is left alone
