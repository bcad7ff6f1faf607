"""Keep the random number generators in checkpoints, so a resumed run replays the same noise."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer


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


class RandomStateCheckpoint(Callback):
    """Saves the generators with each checkpoint and sets them again when training resumes.

    Lightning checkpoints the weights, optimisers and loops but not the global generators that
    dropout, input noise and latent samples draw from. Checkpoints are written at the end of an
    epoch, after validation; the state saved then is the state the next epoch starts from, so it
    is restored at ``on_train_start`` (after the sanity check) of the resumed fit. In multi-process
    runs the checkpoint holds rank 0's generators and every rank restores them (Lightning seeds
    all ranks alike, so their generators are the same).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return collect_random_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending:
            restore_random_state(self._pending)
        self._pending = None

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending = None  # testing a checkpoint must not change the generators of a later fit
