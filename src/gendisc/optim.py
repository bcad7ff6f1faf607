"""Optimisers that torch does not ship."""

from __future__ import annotations

import math
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

    ``compile=True`` runs the update through ``torch.compile`` (one fused loop over each
    parameter instead of six for-each passes; compiled once per parameter layout, the step sizes
    passed as 0-d tensors so that no step recompiles): about 1.8x cheaper on CPU after a
    one-off compile of 20-50 s (experiments/speed/README.md). Same arithmetic, float rounding
    aside.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        compile: bool = False,
    ) -> None:
        if lr < 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid Adam settings: lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})
        self.compile = compile
        self._compiled: Callable[..., None] | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore (``load_state_dict``); a step count saved as a tensor becomes an int."""
        super().__setstate__(state)
        for param_state in self.state.values():
            step = param_state.get("step")
            if isinstance(step, Tensor):
                param_state["step"] = int(step.item())

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient.

        The arithmetic runs as ``torch._foreach_*`` ops over all the parameters that share a
        step count (all of a group's, unless some were frozen for a while), with the bias
        corrections as Python scalars: no per-parameter kernels, no host-device sync. Per
        parameter the state holds ``step`` (int), ``exp_avg`` and ``exp_avg_sq``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # parameters by step count after this update (normally a single bucket)
            buckets: dict[int, tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamEpsInsideSqrt does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                params, grads, exp_avgs, exp_avg_sqs = buckets.setdefault(
                    state["step"], ([], [], [], [])
                )
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
            for step, (params, grads, exp_avgs, exp_avg_sqs) in buckets.items():
                self._update(params, grads, exp_avgs, exp_avg_sqs, step, group)
        return loss

    def _update(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        step: int,
        group: dict[str, Any],
    ) -> None:
        """``p -= lr * m_hat / sqrt(v_hat + eps)`` for parameters at the same ``step``.

        With c1 = 1 - beta1^t and c2 = 1 - beta2^t the update is computed as
        ``p -= (lr * sqrt(c2) / c1) * m / sqrt(v + eps * c2)``, the same quantity with one
        scalar factor instead of a division of every element by c2. With ``compile`` the
        per-tensor form :func:`_moments_and_step` runs through ``torch.compile`` instead, the
        step-dependent scalars as 0-d tensors (no recompilation per step).
        """
        beta1, beta2, eps_term, step_size = _step_scalars(group, step)
        if self.compile:
            if self._compiled is None:
                self._compiled = torch.compile(_moments_and_step, fullgraph=True, dynamic=False)
            scalars = torch.tensor([eps_term, -step_size], dtype=torch.float64)
            self._compiled(
                params, grads, exp_avgs, exp_avg_sqs, beta1, beta2, scalars[0], scalars[1]
            )
            return
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        denominators = torch._foreach_add(exp_avg_sqs, eps_term)
        torch._foreach_sqrt_(denominators)
        torch._foreach_addcdiv_(params, exp_avgs, denominators, value=-step_size)


def _step_scalars(group: dict[str, Any], step: int) -> tuple[float, float, float, float]:
    """``(beta1, beta2, eps * c2, lr * sqrt(c2) / c1)`` for a group's parameters at ``step``,
    with the bias corrections c1 = 1 - beta1^step and c2 = 1 - beta2^step."""
    beta1, beta2 = group["betas"]
    correction1 = 1.0 - beta1**step
    correction2 = 1.0 - beta2**step
    return (
        beta1,
        beta2,
        group["eps"] * correction2,
        group["lr"] * math.sqrt(correction2) / correction1,
    )


def _moments_and_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    beta1: float,
    beta2: float,
    eps_term: Tensor,
    step_size: Tensor,
) -> None:
    """The update of :meth:`AdamEpsInsideSqrt._update` written per tensor for the compiler
    (``eps_term`` = eps * c2, ``step_size`` = -lr * sqrt(c2) / c1, 0-d float64 tensors)."""
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        p.add_(m / (v + eps_term.to(v.dtype)).sqrt() * step_size.to(p.dtype))
