"""Time one optimiser step on the parameters of the paper's MNIST discriminator.

Compares gendisc's ``AdamEpsInsideSqrt`` with torch's Adam (for-each and fused) and, with
``--old FILE``, with the ``AdamEpsInsideSqrt`` defined in another file, e.g. an earlier version:

    git show <commit>:src/gendisc/optim.py > /tmp/optim_old.py
    .venv/bin/python experiments/speed/optim_step.py --threads 1 --old /tmp/optim_old.py
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable

import torch
from torch.optim import Optimizer

from gendisc.nets.classifiers import SalimansMLPDiscriminator
from gendisc.optim import AdamEpsInsideSqrt


def time_step(make: Callable[[list[torch.nn.Parameter]], Optimizer], steps: int) -> float:
    """Median seconds of one ``step()`` (after 10 untimed) on a fresh copy of D's parameters."""
    torch.manual_seed(0)
    params = [p for p in SalimansMLPDiscriminator().parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = make(params)
    times = []
    for i in range(steps + 10):
        start = time.perf_counter()
        optimizer.step()
        if i >= 10:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds, medians")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--old", default=None, help="a file defining AdamEpsInsideSqrt")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"lr": 0.003, "betas": (0.5, 0.999)}
    variants: dict[str, Callable[[list[torch.nn.Parameter]], Optimizer]] = {
        "AdamEpsInsideSqrt": lambda ps: AdamEpsInsideSqrt(ps, **settings),
        "torch Adam foreach": lambda ps: torch.optim.Adam(ps, foreach=True, **settings),
        "torch Adam fused": lambda ps: torch.optim.Adam(ps, fused=True, **settings),
    }
    if args.old:
        spec = importlib.util.spec_from_file_location("optim_old", args.old)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        variants["AdamEpsInsideSqrt (--old)"] = lambda ps: module.AdamEpsInsideSqrt(ps, **settings)
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, make in variants.items():
            results[name].append(time_step(make, args.steps))
    count = sum(p.numel() for p in SalimansMLPDiscriminator().parameters() if p.requires_grad)
    print(
        f"D of experiment=salimans_mnist: {count} trained values; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.rounds} rounds x {args.steps} steps"
    )
    for name, times in results.items():
        print(f"{name:<28} {1e3 * statistics.median(times):7.3f} ms per step")


if __name__ == "__main__":
    main()
