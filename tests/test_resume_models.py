"""Exact resume for every trained module: killed after an epoch, resumed with ``ckpt_path=last``
in its run directory, a run ends with the metrics of an uninterrupted one (deterministic mode).

The kill is made deterministic by a test callback that SIGKILLs its own process at the start of
an epoch (after the previous epoch's ``last.ckpt`` is on disk): no race with a polling test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import Callback, LightningModule, Trainer

from gendisc.utils.config import PROJECT_ROOT
from tests.conftest import (
    gendisc_command,
    generative_test_overrides,
    run_gendisc,
    single_thread_env,
)


class KillAtEpoch(Callback):
    """Test helper: SIGKILL this process when epoch ``epoch`` starts (a crash, not an exit)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


TINY = [
    "data=digits",
    "data.val_size=100",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=4",
    "trainer.deterministic=true",
    "seed=5",
]
# the end-to-end case: weight-normalised nets with a data-dependent init
GAN = [
    "model=gan",
    "model.discriminator.weight_norm=true",
    "model.generator.weight_norm=true",
    "model.adversarial.init_images=200",
]
CASES: dict[str, list[str]] = {
    "gan": GAN,
    "ssl_gan": ["model=ssl_gan"],
    "vae": ["model=vae"],
    "augmented_classifier": ["model=augmented_classifier"],
}
# keys that legitimately differ between two runs (wall time, memory, provenance)
VOLATILE = ("time/", "mem/", "run/")


def _metrics(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.startswith(VOLATILE)}


def kill_resume_and_compare(overrides: list[str], tmp_path: Path) -> dict[str, Any]:
    """Run ``gendisc-train <overrides>`` killed (SIGKILL) at the start of epoch 2, resume it
    with ``ckpt_path=last`` in its run directory, run the same uninterrupted, and assert both
    end with the same metrics.json (wall time, memory and provenance aside); the resumed
    run's metrics are returned."""
    killed, reference = tmp_path / "killed", tmp_path / "uninterrupted"
    process = subprocess.run(
        gendisc_command(
            *overrides,
            f"hydra.run.dir={killed}",
            "+callbacks.kill._target_=tests.test_resume_models.KillAtEpoch",
            "+callbacks.kill.epoch=2",
        ),
        cwd=PROJECT_ROOT,
        env=single_thread_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    checkpoint = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1 and not (killed / "metrics.json").exists()

    # the command a user runs: the same overrides, the run's directory, ckpt_path=last
    run_gendisc(*overrides, f"hydra.run.dir={killed}", "ckpt_path=last", cwd=PROJECT_ROOT)
    run_gendisc(*overrides, f"hydra.run.dir={reference}", cwd=PROJECT_ROOT)

    resumed, expected = _metrics(killed), _metrics(reference)
    assert resumed.keys() == expected.keys()
    assert resumed["epochs"] == 3
    for key, value in expected.items():
        if isinstance(value, float):
            assert resumed[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        else:
            assert resumed[key] == value, key
    return resumed


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_killed_run_resumes_exactly(name, tmp_path, generative_cache, request):
    overrides = [*CASES[name], *TINY]
    if name in ("gan", "vae"):
        overrides += generative_test_overrides(generative_cache)
    if name == "augmented_classifier":
        generator = request.getfixturevalue("tiny_cgan_run")[0] / "checkpoints" / "last.ckpt"
        overrides.append(f"model.generator_ckpt={generator}")
    resumed = kill_resume_and_compare(overrides, tmp_path)
    if name in ("gan", "vae"):
        assert any(k.startswith("gen/") for k in resumed)  # generative metrics compared too
