"""Each rank's random generators in checkpoints: a killed ddp_sim run resumes to the metrics of an
uninterrupted one, and a checkpoint from another number of processes still resumes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from lightning import Callback, LightningModule, Trainer

from gendisc.callbacks.random_state import (
    RandomStateCheckpoint,
    collect_random_state,
    rank_seed,
    seed_generators,
)
from gendisc.utils.config import PROJECT_ROOT
from tests.conftest import gendisc_command, run_gendisc, single_thread_env
from tests.test_ddp import differing_buffers

# ssl_gan (latents, input noise and dropout all draw from the global generators) on digits:
# 2 epochs of 5 steps per rank, no generative metrics or sample grids
RUN = [
    "model=ssl_gan",
    "data=digits",
    "data.val_size=100",
    "data.batch_size=64",
    "trainer=ddp_sim",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=5",
    "trainer.deterministic=true",
    "seed=3",
    "++callbacks.generative_metrics=null",
    "++callbacks.samples=null",
    "+callbacks.probe._target_=tests.test_ddp.RankProbe",
    "+callbacks.probe.output_dir=${paths.output_dir}",
    "+callbacks.pause._target_=tests.test_resume_ddp.PauseOnce",
]


class PauseOnce(Callback):
    """Test helper: the first time only (``marker`` does not exist yet), rank 0 writes ``marker``
    at the start of epoch 1, when epoch 0's checkpoints are complete, and waits to be killed."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == 1 and trainer.global_rank == 0 and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            time.sleep(600)


def _fake_trainer(rank: int = 0, world_size: int = 1, epoch: int = 0, **strategy: Any) -> Any:
    return SimpleNamespace(
        global_rank=rank,
        world_size=world_size,
        current_epoch=epoch,
        strategy=SimpleNamespace(**strategy),
    )


def _draws() -> tuple[list[float], float, float]:
    """One draw from each global generator (torch, NumPy, Python)."""
    return torch.rand(4).tolist(), float(np.random.rand()), random.random()


def _draws_after_seeding(seed: int) -> tuple[list[float], float, float]:
    seed_generators(seed)
    return _draws()


# ------------------------------------------------------------------------------- unit tests
def test_rank_seeds_are_reproducible_and_differ_by_rank_and_epoch():
    seeds = {rank_seed(3, rank, epoch) for rank in range(4) for epoch in range(3)}
    assert len(seeds) == 12 and all(0 <= seed < 2**32 for seed in seeds)
    assert rank_seed(3, 1) == rank_seed(3, 1, 0) == rank_seed(3, 1)
    assert rank_seed(3, 1) != rank_seed(4, 1)


def test_checkpointed_generators_load_with_weights_only_and_replay_the_stream(tmp_path):
    callback = RandomStateCheckpoint(seed=3)
    seed_generators(123)
    torch.save({"callbacks": {"random": callback.state_dict()}}, tmp_path / "state.ckpt")
    expected = _draws()
    loaded = torch.load(tmp_path / "state.ckpt", weights_only=True)["callbacks"]["random"]
    assert loaded["world_size"] == 1 and len(loaded["ranks"]) == 1
    seed_generators(999)
    callback.load_state_dict(loaded)
    callback.on_train_start(_fake_trainer(), None)
    assert _draws() == expected


def test_checkpoints_of_earlier_versions_hold_one_state_and_still_restore():
    callback = RandomStateCheckpoint(seed=3)
    seed_generators(7)
    state = collect_random_state()  # the bare state that older checkpoints stored
    expected = _draws()
    callback.load_state_dict(state)
    callback.on_train_start(_fake_trainer(), None)
    assert _draws() == expected


def test_fresh_fit_gives_ranks_above_zero_their_own_stream():
    seed_generators(3)
    expected_rank0 = _draws()
    seed_generators(3)
    RandomStateCheckpoint(seed=3).on_train_start(_fake_trainer(0, 2), None)
    assert _draws() == expected_rank0  # rank 0 (and a single process) keeps its stream
    seed_generators(3)
    RandomStateCheckpoint(seed=3).on_train_start(_fake_trainer(1, 2), None)
    rank1 = _draws()
    assert rank1 == _draws_after_seeding(rank_seed(3, 1)) and rank1 != expected_rank0


def test_checkpoint_from_another_world_size_warns_and_rederives_each_rank(tmp_path):
    seed_generators(5)
    saved = {"world_size": 2, "ranks": [collect_random_state(), collect_random_state()]}
    for rank, world in ((0, 1), (2, 3)):
        callback = RandomStateCheckpoint(seed=3)
        callback.load_state_dict(saved)
        with pytest.warns(UserWarning, match="2 process.*this run has .*re-seeds"):
            callback.on_train_start(_fake_trainer(rank, world, epoch=4), None)
        assert _draws() == _draws_after_seeding(rank_seed(3, rank, 4))


def test_ranks_that_chose_different_seeds_take_rank_zeros():
    # seed=null on ranks that start on their own (SLURM, several nodes): rank 0's seed wins
    callback = RandomStateCheckpoint(seed=5)
    trainer = _fake_trainer(
        1, 2, broadcast=lambda value, src=0: 11, reduce_boolean_decision=lambda flag, all: flag
    )
    with pytest.warns(UserWarning, match="rank 0's, 11"):
        callback.setup(trainer, None, "fit")
    assert callback.seed == 11
    assert _draws() == _draws_after_seeding(11)
    # agreeing ranks keep their generators
    agreeing = RandomStateCheckpoint(seed=11)
    seed_generators(2)
    agreeing.setup(trainer, None, "fit")
    drawn = _draws()
    assert agreeing.seed == 11 and drawn == _draws_after_seeding(2)


# ------------------------------------------------------------------- kill and resume, ddp_sim
def _overrides(run_dir: Path, marker: Path, *extra: str) -> list[str]:
    return [*RUN, f"+callbacks.pause.marker={marker}", f"hydra.run.dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A ddp_sim run killed (SIGKILL to its process group) after epoch 0's checkpoints, then
    resumed with ``ckpt_path=last``; and the same run uninterrupted."""
    root = tmp_path_factory.mktemp("ddp_resume")
    killed, marker = root / "killed", root / "paused"
    process = subprocess.Popen(
        gendisc_command(*_overrides(killed, marker)),
        cwd=PROJECT_ROOT,
        env=single_thread_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: rank 0 and the rank it starts
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert process.poll() is None, "the run ended before epoch 1"
            assert time.monotonic() < deadline, "no pause at epoch 1"
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    checkpoint = killed / "checkpoints" / "last.ckpt"
    epoch0 = root / "epoch0.ckpt"
    epoch0.write_bytes(checkpoint.read_bytes())  # before the resumed run overwrites it
    run_gendisc(*_overrides(killed, marker, "ckpt_path=last"), cwd=PROJECT_ROOT, timeout=600)
    uninterrupted = root / "uninterrupted"
    run_gendisc(*_overrides(uninterrupted, marker), cwd=PROJECT_ROOT, timeout=600)
    return {"resumed": killed, "uninterrupted": uninterrupted, "epoch0": epoch0}


def _probes(run: Path) -> list[dict[str, Any]]:
    return [json.loads((run / f"probe_rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_killed_ddp_run_resumes_to_the_metrics_of_an_uninterrupted_one(ddp_runs):
    checkpoint = torch.load(ddp_runs["epoch0"], map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0
    states = checkpoint["callbacks"]["RandomStateCheckpoint"]
    assert states["world_size"] == 2
    assert not torch.equal(states["ranks"][0]["torch"], states["ranks"][1]["torch"])

    resumed = json.loads((ddp_runs["resumed"] / "metrics.json").read_text())
    reference = json.loads((ddp_runs["uninterrupted"] / "metrics.json").read_text())
    compared = [key for key in reference if key.startswith(("test/", "val/"))]
    assert {"test/acc", "test/loss", "test/confusion_matrix", "val/acc_best"} <= set(compared)
    for key in compared:
        assert resumed[key] == reference[key], key
    for key in ("seed", "epochs", "global_step", "train/images_seen"):
        assert resumed[key] == reference[key], key
    assert (resumed["seed"], resumed["epochs"], resumed["global_step"]) == (3, 2, 20)


@pytest.mark.slow
def test_each_rank_resumes_its_own_random_stream(ddp_runs):
    resumed, reference = _probes(ddp_runs["resumed"]), _probes(ddp_runs["uninterrupted"])
    for rank in (0, 1):
        # the resumed run started at epoch 1, with this rank's generators of the killed run
        assert sorted(resumed[rank]["generators"]) == sorted(resumed[rank]["latents"]) == ["1"]
        assert resumed[rank]["generators"]["1"] == reference[rank]["generators"]["1"]
        assert resumed[rank]["latents"]["1"] == reference[rank]["latents"]["1"]
        assert resumed[rank]["weights_digest"] == reference[rank]["weights_digest"]
    # rank 0's batch-norm statistics are the checkpointed ones; rank 1 resumed from rank 0's
    # checkpoint, so its statistics of its own generated batches differ (unused in training:
    # G's batch norm trains on batch statistics, and only rank 0 samples or saves)
    assert differing_buffers(resumed[0], reference[0]) == []
    assert all("running_" in name for name in differing_buffers(resumed[1], reference[1]))
    for epoch in ("0", "1"):
        assert reference[0]["generators"][epoch] != reference[1]["generators"][epoch]
        assert reference[0]["latents"][epoch] != reference[1]["latents"][epoch]


@pytest.mark.slow
def test_ddp_checkpoint_resumes_in_one_process_with_rederived_generators(ddp_runs, make_cfg):
    from gendisc.train import train

    overrides = [arg for arg in RUN if "pause" not in arg and "probe" not in arg]
    overrides = [arg for arg in overrides if not arg.startswith("trainer=")]
    budget = ["trainer.limit_train_batches=2", "threads=1"]
    cfg = make_cfg([*overrides, *budget, f"ckpt_path={ddp_runs['epoch0']}"])
    with pytest.warns(UserWarning, match="random generators of 2 process.*this run has 1"):
        metrics = train(cfg)
    assert metrics["epochs"] == 2 and metrics["seed"] == 3
