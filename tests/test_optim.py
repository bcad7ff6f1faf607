"""AdamEpsInsideSqrt against its formula and against torch's Adam."""

from __future__ import annotations

import io
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


def _reference_step(p, grad, state, lr, betas, eps):
    """The straightforward per-parameter update, in float64."""
    b1, b2 = betas
    state["step"] += 1
    t = state["step"]
    state["m"] = b1 * state["m"] + (1 - b1) * grad
    state["v"] = b2 * state["v"] + (1 - b2) * grad**2
    m_hat, v_hat = state["m"] / (1 - b1**t), state["v"] / (1 - b2**t)
    return p - lr * m_hat / torch.sqrt(v_hat + eps)


SHAPES = [(7, 3), (5,), (2, 3, 4), (), (1000,)]


def test_foreach_update_equals_the_per_parameter_formula_over_steps():
    torch.manual_seed(1)
    lr, betas, eps = 0.003, (0.5, 0.999), 1e-8
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    expected = [p.detach().double().clone() for p in params]
    states = [{"step": 0, "m": torch.zeros_like(e), "v": torch.zeros_like(e)} for e in expected]
    optimizer = AdamEpsInsideSqrt(params, lr=lr, betas=betas, eps=eps)
    for step in range(6):
        for i, p in enumerate(params):
            # parameter 1 skips steps 2 and 3 (no gradient): its step count falls behind, so
            # the update runs on two step counts at once; scales from 1e-6 to 10
            if i == 1 and step in (2, 3):
                p.grad = None
                continue
            p.grad = torch.randn(SHAPES[i]) * 10.0 ** torch.randint(-6, 2, SHAPES[i])
            expected[i] = _reference_step(expected[i], p.grad.double(), states[i], lr, betas, eps)
        optimizer.step()
    for p, e, state in zip(params, expected, states, strict=True):
        assert torch.allclose(p.detach().double(), e, rtol=1e-5, atol=1e-7)
        assert optimizer.state[p]["step"] == state["step"]
    assert [optimizer.state[p]["step"] for p in params] == [6, 4, 6, 6, 6]


def _grads(seed, count):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=generator) for s in SHAPES] for _ in range(count)]


def _steps(optimizer, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        optimizer.step()


def test_state_dict_round_trip_through_a_checkpoint_file():
    torch.manual_seed(2)
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    optimizer = AdamEpsInsideSqrt(params, lr=0.01, betas=(0.5, 0.999))
    _steps(optimizer, params, _grads(0, 3))
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as Lightning reads checkpoints
    assert set(saved["opt"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert saved["opt"]["state"][0]["step"] == 3

    resumed_params = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    resumed = AdamEpsInsideSqrt(resumed_params, lr=0.5)  # settings come from the state dict
    resumed.load_state_dict(saved["opt"])
    assert resumed.param_groups[0]["lr"] == 0.01
    later = _grads(1, 2)
    _steps(optimizer, params, later)
    _steps(resumed, resumed_params, later)
    for p, q in zip(params, resumed_params, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("step_type", ["int", "tensor"])
def test_loads_the_state_of_the_per_parameter_implementation(step_type):
    """State dicts of the earlier per-parameter version (int steps) and ones with tensor steps
    (as torch's Adam writes them) load and continue the same trajectory."""
    lr, betas, eps = 0.01, (0.5, 0.999), 1e-8
    torch.manual_seed(3)
    start = [torch.randn(s).double() for s in SHAPES]
    refs = [{"step": 0, "m": torch.zeros_like(x), "v": torch.zeros_like(x)} for x in start]
    grads = _grads(4, 5)
    expected = list(start)
    for step_grads in grads[:3]:
        expected = [
            _reference_step(x, g.double(), s, lr, betas, eps)
            for x, g, s in zip(expected, step_grads, refs, strict=True)
        ]

    def step_value(step):
        return step if step_type == "int" else torch.tensor(float(step))

    old_format = {
        "state": {
            i: {
                "step": step_value(s["step"]),
                "exp_avg": s["m"].float(),
                "exp_avg_sq": s["v"].float(),
            }
            for i, s in enumerate(refs)
        },
        "param_groups": [
            {"lr": lr, "betas": betas, "eps": eps, "params": list(range(len(SHAPES)))}
        ],
    }
    params = [torch.nn.Parameter(x.float()) for x in expected]
    optimizer = AdamEpsInsideSqrt(params)
    optimizer.load_state_dict(old_format)
    assert all(type(optimizer.state[p]["step"]) is int for p in params)
    _steps(optimizer, params, grads[3:])
    for step_grads in grads[3:]:
        expected = [
            _reference_step(x, g.double(), s, lr, betas, eps)
            for x, g, s in zip(expected, step_grads, refs, strict=True)
        ]
    for p, e in zip(params, expected, strict=True):
        assert torch.allclose(p.detach().double(), e, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_compiled_update_equals_the_eager_one_and_compiles_once():
    """compile=True: the same parameters and moments as the for-each update over several
    steps (float rounding aside), with one compilation for all of them."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    shapes = [(30, 20), (30,), (10, 30)]
    start = [torch.randn(shape) for shape in shapes]
    results = []
    counters.clear()
    for compile in (False, True):
        params = [p.clone().requires_grad_() for p in start]
        optimizer = AdamEpsInsideSqrt(params, lr=0.003, betas=(0.5, 0.999), compile=compile)
        generator = torch.Generator().manual_seed(1)
        for step in range(5):
            for p in params:  # large and tiny gradients, where eps inside the root matters
                p.grad = torch.randn(p.shape, generator=generator) * 10.0 ** -(step % 3 * 3)
            optimizer.step()
        results.append((params, optimizer.state_dict()["state"]))
    (eager, eager_state), (compiled, compiled_state) = results
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    for index, state in eager_state.items():
        assert compiled_state[index]["step"] == state["step"] == 5
        torch.testing.assert_close(compiled_state[index]["exp_avg_sq"], state["exp_avg_sq"])
    assert counters["stats"]["unique_graphs"] == 1  # steps 2-5 reused the first compilation
