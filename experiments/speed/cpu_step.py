"""CPU time per training step of ``experiment=salimans_mnist``, variants side by side.

On a shared machine wall times move with other load; CPU time of the process at one thread
(``time.process_time``) moves far less. Each variant (a string of config overrides, '' for the
defaults) is fitted ``--rounds`` times in alternation; the best round of each is printed:

    .venv/bin/python experiments/speed/cpu_step.py --threads 1 '' \
        'model.d_optimizer.compile=true model.g_optimizer.compile=true'
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from lightning import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/: the bench's helpers

from bench_ssl_gan import DEFAULT_DATA_DIR, Framework, compose_cfg


class CPUTimer(Callback):
    """Process CPU time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.end = time.process_time()
            self.steps = batch_idx + 1 - self.warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="override strings, '' for the defaults")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    args = parser.parse_args()
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    frameworks = [Framework(compose_cfg(v.split(), args.data_dir)) for v in args.variants]
    best = [float("inf")] * len(frameworks)
    for _ in range(args.rounds):
        for i, framework in enumerate(frameworks):
            timer = CPUTimer(args.warmup)
            framework.fit(args.steps, args.warmup, [timer])
            best[i] = min(best[i], (timer.end - timer.start) / timer.steps)
    for variant, seconds in zip(args.variants, best, strict=True):
        print(
            f"{1000 * seconds:6.1f} CPU ms per step  ({args.threads} thread(s))  {variant or '(defaults)'}"
        )


if __name__ == "__main__":
    main()
