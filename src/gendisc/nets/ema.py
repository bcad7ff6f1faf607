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

    def _pairs(self, module: nn.Module) -> list[tuple[Tensor, Tensor]]:
        mine = dict(self.shadow.named_parameters())
        theirs = dict(module.named_parameters())
        if mine.keys() != theirs.keys():
            raise ValueError("EMA: module parameters do not match the shadow's")
        return [(mine[k], theirs[k]) for k in mine]

    def _copy_buffers(self, module: nn.Module) -> None:
        theirs = dict(module.named_buffers())
        for name, buf in self.shadow.named_buffers():
            buf.copy_(theirs[name])

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One EMA step towards ``module``'s current weights."""
        decay = self.current_decay()
        for a, p in self._pairs(module):
            a.lerp_(p.detach(), 1.0 - decay)
        self._copy_buffers(module)
        self.num_updates += 1

    def current_decay(self) -> float:
        """``decay``, or with warm-up min(decay, (1 + t) / (10 + t)) after t updates, so that
        short runs average recent weights rather than their random start."""
        if not self.warmup:
            return self.decay
        t = int(self.num_updates)
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def reset(self, module: nn.Module) -> None:
        """Copy ``module``'s weights and buffers into the shadow (restart the average)."""
        for a, p in self._pairs(module):
            a.copy_(p.detach())
        self._copy_buffers(module)
        self.num_updates.zero_()

    def train(self, mode: bool = True) -> ExponentialMovingAverage:
        super().train(mode)
        self.shadow.eval()  # the average is only ever evaluated
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.shadow(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"decay={self.decay}"
