"""Optimisers that torch does not ship."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["AdamEpsInsideSqrt"]


class AdamEpsInsideSqrt(Optimizer):
    """Adam with eps inside the square root, as in the code of Salimans et al. (2016).

    Update: ``p -= lr * m_hat / sqrt(v_hat + eps)`` with the usual bias-corrected moments
    ``m_hat`` and ``v_hat``. ``torch.optim.Adam`` divides by ``sqrt(v_hat) + eps`` instead: the
    two agree for gradients well above ``sqrt(eps)`` (1e-4 for the default 1e-8), but for
    smaller, noisy gradients torch's update stays about ``lr`` in size while this one shrinks
    in proportion to the gradient. With the paper's MNIST nets that difference decides whether
    training is stable (experiments/salimans_2016/README.md).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if lr < 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid Adam settings: lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            states = [self.state[p] for p in params]
            for p, state in zip(params, states, strict=True):
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
            exp_avgs = [s["exp_avg"] for s in states]
            exp_avg_sqs = [s["exp_avg_sq"] for s in states]
            torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
            for p, m, v, state in zip(params, exp_avgs, exp_avg_sqs, states, strict=True):
                step = state["step"]
                v_hat = v / (1.0 - beta2**step)
                denominator = v_hat.add_(group["eps"]).sqrt_()
                p.addcdiv_(m, denominator, value=-group["lr"] / (1.0 - beta1**step))
        return loss
