"""The paper's MNIST table (experiment=salimans_mnist_table) as ONE group of members.

The 17 runs of experiments/salimans_2016/run_table.sh (20/50/100/200 labels x data seeds 0-2,
100 labels x seeds 3-4, and the labels-only arm ``ablation=no_unlabeled`` at 100 labels x seeds
0-2) differ only in seed, data seed, label count and ``model.unlabeled_weight``, so they train as
one model (``gendisc.members``). Each run gets the directory, ``.hydra/`` files and
``metrics.json`` that ``gendisc-train -m experiment=salimans_mnist_table`` gives it, so
``gendisc-report`` (runs.csv) and ``gendisc-report --table`` read them as usual.

    python experiments/gpu_check/table.py --out DIR [--epochs 300] [--time-limit-s 330]
        [--rng shared] [--device cuda] [--steps-per-epoch N] [overrides...]

``--time-limit-s``: no epoch starts that would end past that many seconds of training; the
summary (table_summary.json, each run's ``members/stopped_early``) then says the table is not
the paper's schedule. float32 throughout (TF32 off).

The group saves its state in ``DIR/salimans_mnist_table/members/`` every
``--checkpoint-every-s`` seconds (after an epoch); the same command with the override
``ckpt_path=last`` continues it (runs already finished are left as they are), as
``gendisc-train -m ... hydra/launcher=members ckpt_path=last`` does.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from gendisc.members import report_member, train_group
from gendisc.utils.config import PROJECT_ROOT, register_resolvers

# (labels_per_class, data_seed, ablation) of the table's 17 runs
TABLE_RUNS = (
    [(lpc, s, None) for lpc in (2, 5, 10, 20) for s in (0, 1, 2)]
    + [(10, s, None) for s in (3, 4)]
    + [(10, s, "no_unlabeled") for s in (0, 1, 2)]
)


def compose_run(
    lpc: int, seed: int, ablation: str | None, table_dir: Path, extra: list[str]
) -> tuple[DictConfig, list[str], DictConfig]:
    """(task config, overrides, hydra node) of one run, its directory inside ``table_dir``."""
    overrides = [f"data.labels_per_class={lpc}", f"data.data_seed={seed}"]
    if ablation:
        overrides.append(f"ablation={ablation}")
    overrides += extra
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            return_hydra_config=True,
            overrides=["experiment=salimans_mnist_table", f"paths.log_dir={table_dir}", *overrides],
        )
    HydraConfig.instance().set_config(cfg)
    run_dir = table_dir / "salimans_mnist_table" / str(cfg.table_run)
    for node in (cfg.hydra.runtime, cfg.hydra.job, cfg.hydra.overrides):
        OmegaConf.set_readonly(node, False)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = len(list(table_dir.glob("salimans_mnist_table/*")))
        cfg.hydra.overrides.task = overrides
    HydraConfig.instance().set_config(cfg)
    hydra_node = OmegaConf.create({"hydra": OmegaConf.to_container(cfg.hydra, resolve=True)})
    task = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(task):
        del task["hydra"]
    return task, overrides, hydra_node


def write_hydra_files(cfg: DictConfig, overrides: list[str], hydra_node: DictConfig) -> Path:
    """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``, as Hydra writes them."""
    hydra_dir = Path(cfg.paths.output_dir) / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    OmegaConf.save(hydra_node, hydra_dir / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")
    return hydra_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the table's folder (paths.log_dir)")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="default: all (590)")
    parser.add_argument("--time-limit-s", type=float, default=None)
    parser.add_argument("--rng", default="shared", choices=["member", "shared"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--graphs", action="store_true", help="CUDA graphs (MemberGroup)")
    parser.add_argument("--runs", type=int, default=len(TABLE_RUNS), help="the first N runs")
    parser.add_argument(
        "--checkpoint-every-s", type=float, default=60.0, help="group checkpoint interval"
    )
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 (bf16/TF32 changed this model)
    torch.backends.cudnn.allow_tf32 = False
    register_resolvers()
    members_log = logging.getLogger("gendisc.members")  # resuming, checkpoints, finished runs
    members_log.setLevel(logging.INFO)
    members_log.addHandler(logging.StreamHandler())
    table_dir = Path(args.out).resolve()
    table_dir.mkdir(parents=True, exist_ok=True)

    steps = args.steps_per_epoch or 590  # 59,000 unlabeled images in batches of 100
    epochs = args.epochs
    extra = [
        f"trainer.max_epochs={epochs}",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        "callbacks.rich_progress_bar=null",
        *(["trainer.limit_train_batches=" + str(steps)] if args.steps_per_epoch else []),
        *args.overrides,
    ]
    runs = [compose_run(*run, table_dir, extra) for run in TABLE_RUNS[: args.runs]]
    cfgs = [task for task, _, _ in runs]
    print(
        f"table: {len(cfgs)} runs as one group, {epochs} epochs x {steps} steps "
        f"(time limit {args.time_limit_s} s), rng={args.rng}, graphs={args.graphs}, "
        f"device={args.device}",
        flush=True,
    )
    start = time.perf_counter()
    trained = train_group(
        cfgs,
        table_dir / "salimans_mnist_table",
        rng=args.rng,
        graphs=args.graphs,
        checkpoint_every_s=args.checkpoint_every_s,
        time_limit_s=args.time_limit_s,
    )
    fitted = time.perf_counter()
    group = trained.group
    for position, index in enumerate(trained.todo):
        cfg, overrides, hydra_node = runs[index]
        write_hydra_files(cfg, overrides, hydra_node)
        report_member(cfg, group, position, trained.modules[position])
    if trained.checkpoint is not None and group is not None and not group.stopped_early:
        trained.checkpoint.remove()  # kept after a time limit: ckpt_path=last continues it
    done = time.perf_counter()
    if group is None:
        summary = {"runs": len(cfgs), "schedule": "all runs had already finished"}
        (table_dir / "table_summary.json").write_text(json.dumps(summary, indent=2))
        print("table summary: " + json.dumps(summary), flush=True)
        return
    train_s = group.fit_seconds  # this call's and, when resumed, the earlier calls' training
    run_steps = group.global_step * len(group.members)
    note = (
        "the full schedule"
        if group.epochs == epochs
        else (f"STOPPED at the time limit after {group.epochs} of {epochs} epochs")
    )
    summary = {
        "runs": len(cfgs),
        "trained": len(trained.todo),
        "finished_before": len(trained.finished),
        "epochs": group.epochs,
        "schedule": note,
        "group_steps": group.global_step,
        "run_steps": run_steps,
        "rng": args.rng,
        "cuda_graphs": args.graphs,
        "device": args.device,
        "build_and_train_s": round(fitted - start, 1),
        "train_s": round(train_s, 1),
        "report_s": round(done - fitted, 1),
        "ms_per_run_step": round(1000 * train_s / max(run_steps, 1), 4),
    }
    (table_dir / "table_summary.json").write_text(json.dumps(summary, indent=2))
    print("table summary: " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
