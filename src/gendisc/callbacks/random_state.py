"""Each rank's random number generators: its own stream under DDP, kept in checkpoints so that a
resumed run replays the same noise."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn


def rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The seed of rank ``rank``'s global generators: a 32-bit value that NumPy's SeedSequence
    derives from (seed, rank, epoch), so different ranks get independent streams."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(epoch)]).generate_state(1)[0])


def seed_generators(seed: int) -> None:
    """Seed the global generators of Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _numpy_state() -> tuple:
    """NumPy's legacy global state with its key array as a tensor (loadable with weights_only)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.copy()), int(position), int(has_gauss), float(cached)


def collect_random_state() -> dict[str, Any]:
    """The global generators of Python, NumPy and torch (CPU, and CUDA when initialised)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any]) -> None:
    """Set the global generators from ``collect_random_state()``'s output."""
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "torch_cuda" in state and torch.cuda.is_available():
        states = state["torch_cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def _map_tensors(value: Any, convert: Any, kind: type) -> Any:
    """``value`` with every ``kind`` inside its dicts, lists and tuples replaced by ``convert``."""
    if isinstance(value, kind):
        return convert(value)
    if isinstance(value, dict):
        return {key: _map_tensors(item, convert, kind) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_map_tensors(item, convert, kind) for item in value)
    return value


def gather_random_states(state: dict[str, Any], world_size: int) -> list[dict[str, Any]]:
    """Every rank's ``collect_random_state()`` (a collective call). Tensors travel as NumPy
    arrays: torch cannot unpickle the generator-state tensors that ``all_gather_object`` pickles."""
    states: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(
        states, _map_tensors(state, torch.Tensor.numpy, torch.Tensor)
    )
    return [_map_tensors(item, torch.from_numpy, np.ndarray) for item in states]


def rank_states(state_dict: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-rank generator states of a checkpoint (one, from checkpoints of older versions)."""
    return list(state_dict["ranks"]) if "ranks" in state_dict else [state_dict]


class RandomStateCheckpoint(Callback):
    """Gives every rank its own random stream and keeps each rank's generators in checkpoints.

    Lightning seeds every rank alike (``seed_everything``, again when DDP starts), which keeps
    the model's initialisation and data-dependent init identical on all ranks. When training
    starts, rank r > 0 re-seeds its global generators from ``rank_seed(seed, r)``, so latents,
    fake labels, input noise and dropout masks differ across ranks (rank 0, and single-process
    runs, keep the stream they had). The training batches do not draw from these generators:
    their order is seeded by the training seed alone (``TrainBatches``).

    Checkpoints are written by rank 0 at the end of an epoch; ``state_dict`` gathers every
    rank's generators into it (``{"world_size": N, "ranks": [...]}``, plain types and tensors)
    and on resume each rank restores its own at ``on_train_start``. A checkpoint from a run with
    another number of processes cannot give each rank its stream back: every rank then re-seeds
    from ``rank_seed(seed, rank, epoch)`` and a warning says so.

    Args:
        seed: the run's training seed (the one passed to ``seed_everything``).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._trainer: Trainer | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Remember the trainer; make every rank use rank 0's seed if they disagree (ranks that
        start on their own with ``seed=null``, e.g. under SLURM, choose different seeds)."""
        self._trainer = trainer
        if stage != "fit" or trainer.world_size < 2 or self.seed is None:
            return
        first = int(trainer.strategy.broadcast(self.seed, src=0))
        if trainer.strategy.reduce_boolean_decision(first != self.seed, all=False):
            rank_zero_warn(f"The ranks chose different seeds: every rank uses rank 0's, {first}.")
            self.seed = first
            seed_generators(first)

    def state_dict(self) -> dict[str, Any]:
        """Every rank's generators (a collective call: Lightning makes it on all ranks)."""
        state = collect_random_state()
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else 1
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states = gather_random_states(state, world)
        else:
            states = [state]
        return {"world_size": len(states), "ranks": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pending, self._pending = self._pending, None
        rank, world = trainer.global_rank, trainer.world_size
        if pending:
            states = rank_states(pending)
            if len(states) == world:
                restore_random_state(states[rank])
                return
            rank_zero_warn(
                f"The checkpoint holds the random generators of {len(states)} process(es), this "
                f"run has {world}: each rank re-seeds from (seed, rank, epoch) instead."
            )
            seed_generators(rank_seed(self._seed(), rank, trainer.current_epoch))
        elif rank > 0:
            seed_generators(rank_seed(self._seed(), rank))

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending = None  # testing a checkpoint must not change the generators of a later fit

    def _seed(self) -> int:
        """The training seed; torch's initial seed when none was given."""
        return self.seed if self.seed is not None else torch.initial_seed() % 2**32
