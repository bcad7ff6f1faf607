"""AdamEpsInsideSqrt against its formula and against torch's Adam."""

from __future__ import annotations

import math

import pytest
import torch

from gendisc.optim import AdamEpsInsideSqrt


def _run(optimizer_class, grads, **kwargs):
    p = torch.nn.Parameter(torch.zeros(len(grads[0])))
    optimizer = optimizer_class([p], **kwargs)
    for g in grads:
        p.grad = torch.tensor(g)
        optimizer.step()
    return p.detach()


def test_two_steps_by_hand():
    lr, b1, b2, eps = 0.1, 0.5, 0.9, 1e-8
    g1, g2 = 2.0, -1.0
    m1, v1 = (1 - b1) * g1, (1 - b2) * g1**2
    p1 = -lr * (m1 / (1 - b1)) / math.sqrt(v1 / (1 - b2) + eps)
    m2, v2 = b1 * m1 + (1 - b1) * g2, b2 * v1 + (1 - b2) * g2**2
    p2 = p1 - lr * (m2 / (1 - b1**2)) / math.sqrt(v2 / (1 - b2**2) + eps)
    got = _run(AdamEpsInsideSqrt, [[g1], [g2]], lr=lr, betas=(b1, b2), eps=eps)
    assert got.item() == pytest.approx(p2, rel=1e-6)


def test_agrees_with_torch_adam_for_large_gradients_and_damps_tiny_ones():
    torch.manual_seed(0)
    grads = (torch.randn(20, 3) * torch.tensor([1.0, 1e-2, 1e-6])).tolist()
    ours = _run(AdamEpsInsideSqrt, grads, lr=0.003, betas=(0.5, 0.999))
    theirs = _run(torch.optim.Adam, grads, lr=0.003, betas=(0.5, 0.999))
    assert torch.allclose(ours[:2], theirs[:2], rtol=1e-4)
    # a gradient of 1e-6: torch moves the parameter by about lr per step, this one barely
    assert abs(theirs[2]) > 1e-3 and abs(ours[2]) < abs(theirs[2]) / 50


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="invalid Adam"):
        AdamEpsInsideSqrt([torch.nn.Parameter(torch.zeros(1))], lr=-1.0)
