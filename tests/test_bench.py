"""The speed bench's accounting (experiments/bench_ssl_gan.py): the FLOPs it charges to the
matrix products it times, and the step's matmul work counted from the layer shapes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench_ssl_gan.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_ssl_gan", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ssl_gan"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_ssl_gan", None)


def test_op_clock_charges_each_product_its_flops_and_times_the_noise(bench) -> None:
    a, b = torch.randn(30, 20), torch.randn(20, 10)
    x = torch.randn(4, 30, 20)
    with bench.OpClock() as clock:
        torch.mm(a, b)  # 2 * 30 * 20 * 10
        torch.addmm(torch.zeros(10), a, b)  # the same product plus a bias
        torch.nn.functional.linear(a, b.t())  # F.linear: addmm or mm
        torch.bmm(x, x.transpose(1, 2))  # 4 products of 30x20 @ 20x30
        torch.randn(1000)
        torch.empty(1000).normal_()
        (a + 1).relu()  # neither: not timed
    assert clock.flops == 3 * 2 * 30 * 20 * 10 + 4 * 2 * 30 * 20 * 30
    assert clock.seconds["matmul"] > 0
    assert clock.seconds["noise"] > 0


def test_step_gemms_count_the_papers_step(bench) -> None:
    parts = bench.step_gemms()
    flops = {name: sum(g.flops for g in part) for name, part in parts.items()}
    d = sum(a * b for a, b in zip(bench.D_WIDTHS[:-1], bench.D_WIDTHS[1:], strict=True))
    g = sum(a * b for a, b in zip(bench.G_WIDTHS[:-1], bench.G_WIDTHS[1:], strict=True))
    head = bench.D_WIDTHS[-2] * bench.D_WIDTHS[-1]
    first = bench.D_WIDTHS[0] * bench.D_WIDTHS[1]
    n = bench.BATCH
    # D step: G forward; D forward and weight gradients on 3n rows, input gradients but the first
    assert flops["D step"] == 2 * n * g + 2 * 3 * n * (2 * d + d - first)
    # G step: G forward, D forward on fake and real, D input gradients without the head, G backward
    g_first = bench.G_WIDTHS[0] * bench.G_WIDTHS[1]
    assert flops["G step"] == 2 * n * (g + 2 * d + (d - head) + g + g - g_first)
    assert round(sum(flops.values()) / 1e9, 3) == 3.760
