"""Exponential moving average of a module's weights (the paper evaluates D's average)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage(nn.Module):
    """Keeps ``shadow``, a deep copy of ``module`` (eval mode, no gradients), updated by
    ``update(module)``: a <- a + (1 - decay) * (p - a) for every parameter, buffers copied.

    It is an ``nn.Module`` so that, as an attribute of a LightningModule, it moves with the
    parent's device and is saved in / restored from its state dict (keys ``shadow.*`` and
    ``num_updates``). Its parameters (requires_grad False) then appear in the parent's
    ``parameters()``: build optimisers from the trained nets, not the whole LightningModule.
    Calling it runs the shadow. The shadow starts as a copy of ``module``; call
    ``reset(module)`` after a data-dependent init or weight loading. The paper uses
    decay = 1 - 1e-4 for D; ``warmup`` (default on) lowers the decay over the first updates.

    Hand-written rather than ``torch.optim.swa_utils.AveragedModel``: that class reads its
    ``n_averaged`` tensor on the host at every update (a device sync per training step on a
    GPU) and has neither the warm-up nor the restart after a data-dependent init.
    """

    num_updates: Tensor

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True) -> None:
        super().__init__()
        self.warmup = warmup
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.shadow = copy.deepcopy(module)
        self.shadow.eval()
        self.shadow.requires_grad_(False)
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))
        self._count: int | None = None  # Python copy of num_updates: no device sync per step
        self._matched: tuple[int, list[Tensor], list[Tensor], list[Tensor], list[Tensor]] | None
        self._matched = None

    def _match(
        self, module: nn.Module
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """(shadow params, module params, shadow buffers, module buffers), matched by name once
        per averaged module."""
        if self._matched is None or self._matched[0] != id(module):
            mine, theirs = dict(self.shadow.named_parameters()), dict(module.named_parameters())
            if mine.keys() != theirs.keys():
                raise ValueError("EMA: module parameters do not match the shadow's")
            my_bufs, their_bufs = dict(self.shadow.named_buffers()), dict(module.named_buffers())
            self._matched = (
                id(module),
                list(mine.values()),
                [theirs[k] for k in mine],
                list(my_bufs.values()),
                [their_bufs[k] for k in my_bufs],
            )
        return self._matched[1:]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One EMA step towards ``module``'s current weights (one fused lerp over all of them)."""
        decay = self.current_decay()
        averaged, current, my_buffers, their_buffers = self._match(module)
        torch._foreach_lerp_(averaged, [p.detach() for p in current], 1.0 - decay)
        for mine, theirs in zip(my_buffers, their_buffers, strict=True):
            mine.copy_(theirs)
        self.num_updates += 1
        self._count = self.updates() + 1

    def updates(self) -> int:
        """Number of updates since the start or the last reset (read from the buffer once)."""
        if self._count is None:
            self._count = int(self.num_updates)
        return self._count

    def current_decay(self) -> float:
        """``decay``, or with warm-up min(decay, (1 + t) / (10 + t)) after t updates, so that
        short runs average recent weights rather than their random start."""
        if not self.warmup:
            return self.decay
        t = self.updates()
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def reset(self, module: nn.Module) -> None:
        """Copy ``module``'s weights and buffers into the shadow (restart the average)."""
        averaged, current, my_buffers, their_buffers = self._match(module)
        for a, p in zip(averaged, current, strict=True):
            a.copy_(p.detach())
        for mine, theirs in zip(my_buffers, their_buffers, strict=True):
            mine.copy_(theirs)
        self.num_updates.zero_()
        self._count = 0

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._count = None  # re-read num_updates from the loaded buffer

    def train(self, mode: bool = True) -> ExponentialMovingAverage:
        super().train(mode)
        self.shadow.eval()  # the average is only ever evaluated
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.shadow(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"decay={self.decay}"
