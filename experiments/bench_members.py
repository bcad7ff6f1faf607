"""Members section of ``make bench``: run-steps per second of N ssl_gan runs trained as one
batched model (``gendisc.models.members``) for N = 1, 2, 4, ... next to separate runs.

A run-step is one training step of one run (a D update and a G update of the paper's MNIST
model). N members do N run-steps per group step; separate runs do one per step of the
``framework`` variant of ``bench_ssl_gan.py`` (a single run under Lightning). Standalone:

    .venv/bin/python experiments/bench_members.py --members 1,2,4 --steps 20
    python experiments/bench_members.py --device cuda --members 1,4,17 --rng shared
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from gendisc.members import build_group
from gendisc.models.members import MemberGroup


def member_configs(
    n: int, compose: Callable[[Sequence[str]], DictConfig], base: Sequence[str] = ()
) -> list[DictConfig]:
    """N configs of the paper's table: seeds 0..N-1, label counts cycling 20/50/100/200."""
    counts = (2, 5, 10, 20)
    return [
        compose(
            [
                *base,
                f"seed={i}",
                f"data.data_seed={i}",
                f"data.labels_per_class={counts[i % len(counts)]}",
            ]
        )
        for i in range(n)
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_group(group: MemberGroup, steps: int, warmup: int) -> float:
    """Seconds per group step, ``steps`` timed steps after ``warmup`` untimed ones."""
    batches = group.batches(steps + warmup)
    start = math.nan
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync(group.device)
            start = time.perf_counter()
        group.run_step(batch, i)
    _sync(group.device)
    return (time.perf_counter() - start) / steps


@dataclass
class MembersResult:
    n: int
    rng: str
    seconds_per_step: list[float]
    error: str = ""

    @property
    def run_steps_per_s(self) -> float:
        if not self.seconds_per_step:
            return math.nan
        return self.n / statistics.median(self.seconds_per_step)


def bench_members(
    sizes: Sequence[int],
    compose: Callable[[Sequence[str]], DictConfig],
    base: Sequence[str] = (),
    steps: int = 20,
    warmup: int = 3,
    rounds: int = 3,
    rngs: Sequence[str] = ("member",),
) -> list[MembersResult]:
    """Median seconds per group step of each size and random-stream mode (interleaved rounds)."""
    groups: list[tuple[MembersResult, MemberGroup | None]] = []
    for n in sizes:
        cfgs = member_configs(n, compose, base)
        for rng in rngs:
            result = MembersResult(n, rng, [])
            mode, _, graphs = rng.partition("+")  # e.g. shared+graphs: CUDA graphs
            try:
                groups.append((result, build_group(cfgs, rng=mode, graphs=bool(graphs))))
            except Exception as error:  # reported, the others go on
                result.error = f"{type(error).__name__}: {error}".splitlines()[0][:200]
                groups.append((result, None))
    for _ in range(rounds):
        for result, group in groups:
            if group is None or result.error:
                continue
            try:
                result.seconds_per_step.append(time_group(group, steps, max(warmup, 5)))
            except Exception as error:
                result.error = f"{type(error).__name__}: {error}".splitlines()[0][:200]
    return [result for result, _ in groups]


def print_members(results: Sequence[MembersResult], separate_step_s: float, steps: int) -> None:
    """One line per group: run-steps/s, ms per run-step and the speed-up over separate runs."""
    separate = (
        1 / separate_step_s if separate_step_s and not math.isnan(separate_step_s) else math.nan
    )
    print(
        f"members (N runs as one model, {steps} timed steps per round, medians); separate runs "
        f"(framework, one at a time): {separate:.2f} run-steps/s"
    )
    print(f"{'members':<10}{'rng':>14}{'run-steps/s':>13}{'ms/run-step':>13}{'vs separate':>13}")
    for r in results:
        if r.error or not r.seconds_per_step:
            print(f"{f'N={r.n}':<10}{r.rng:>14}  not measured: {r.error}")
            continue
        rate = r.run_steps_per_s
        print(
            f"{f'N={r.n}':<10}{r.rng:>14}{rate:>13.2f}{1000 / rate:>13.3f}"
            f"{rate / separate if separate == separate else math.nan:>12.2f}x"
        )


def main() -> None:
    from bench_ssl_gan import DEFAULT_DATA_DIR, compose_cfg

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,2,4", help="group sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--rng",
        default="member",
        help="member, shared, shared+graphs (CUDA graphs), comma-separated",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = "gpu" if args.device == "cuda" else "cpu"

    def compose(overrides: Sequence[str]) -> DictConfig:
        return compose_cfg([f"trainer.accelerator={accelerator}", *overrides], args.data_dir)

    sizes = [int(s) for s in args.members.split(",") if s]
    results = bench_members(
        sizes,
        compose,
        steps=args.steps,
        warmup=args.warmup,
        rounds=args.rounds,
        rngs=args.rng.split(","),
    )
    single = next((r for r in results if r.n == 1 and r.seconds_per_step), None)
    print_members(
        results, statistics.median(single.seconds_per_step) if single else math.nan, args.steps
    )


if __name__ == "__main__":
    main()
