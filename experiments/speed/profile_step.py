"""Profile the training step of ``experiment=salimans_mnist`` with torch.profiler.

Runs ``--warmup`` untimed steps, then ``--steps`` steps under ``torch.profiler`` (CPU activities,
record_shapes off) through the real config and Lightning's ``Trainer.fit``, and prints the time
per step and the top ``--top`` ops by self CPU time.

    .venv/bin/python experiments/speed/profile_step.py --threads 1
    .venv/bin/python experiments/speed/profile_step.py trainer.precision=bf16-mixed
    PYTHONPATH=<other checkout>/src .venv/bin/python experiments/speed/profile_step.py
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/: the bench's helpers

from bench_ssl_gan import DEFAULT_DATA_DIR, Framework, StepsUnder, compose_cfg, cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=10, help="unprofiled steps before them")
    parser.add_argument("--top", type=int, default=25, help="rows of the table")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    import gendisc

    framework = Framework(compose_cfg(args.overrides, args.data_dir))
    profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=False)
    callback = StepsUnder(args.warmup, profiler)
    framework.fit(args.steps, args.warmup, [callback])
    per_step = (callback.end - callback.start) / callback.steps
    print(
        f"gendisc: {Path(gendisc.__file__).parent}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {cpu_model()}"
    )
    print(
        f"{' '.join(['experiment=salimans_mnist', *args.overrides])}: {callback.steps} steps profiled "
        f"after {args.warmup}, {1000 * per_step:.1f} ms per step under the profiler "
        f"({600 * per_step:.1f} s per 600-step epoch)"
    )
    table = profiler.key_averages().table(
        sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=48
    )
    print(table)


if __name__ == "__main__":
    main()
