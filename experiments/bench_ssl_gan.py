"""Benchmark: the ssl_gan LightningModule against a plain PyTorch loop of the same work.

Both run the paper's MNIST nets (experiment=salimans_mnist), losses and optimiser steps on the
same in-memory MNIST-sized data, in this process, alternating, and the steady-state time per
step is compared (the first ``--warmup`` steps of each run are not timed). Prints steps/s and
samples/s of each, ``ratio: X`` (framework time / plain time; target <= 1.15) and peak memory.

    make bench                      # or: .venv/bin/python experiments/bench_ssl_gan.py --steps 200
    python experiments/bench_ssl_gan.py --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from lightning import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gendisc.data.batches import to_unit_range  # noqa: E402
from gendisc.losses import (  # noqa: E402
    feature_matching_loss,
    ssl_supervised_loss,
    ssl_unsupervised_loss,
)
from gendisc.nets.layers import data_dependent_init  # noqa: E402
from gendisc.train import build  # noqa: E402
from gendisc.utils.config import register_resolvers  # noqa: E402


def compose_cfg(data_dir: str, dataset: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                "experiment=salimans_mnist",
                f"data={dataset}",
                f"paths.data_dir={data_dir}",
                "data.val_size=1000",
                "hydra.run.dir=/tmp/gendisc-bench",
            ],
            return_hydra_config=False,
        )


class StepTimer(Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.end = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step // 2 == self.warmup and not self.start:  # 2 optimisers per step
            self._sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync()
        self.end = time.perf_counter()


def run_framework(cfg, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step of SSLGANModule under the Lightning Trainer."""
    datamodule, model = build(cfg)
    timer = StepTimer(warmup, device)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=2 * (steps + warmup),
        max_epochs=-1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[timer],
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    return (timer.end - timer.start) / steps


def run_plain(cfg, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step of the same nets, losses, optimiser and EMA steps in a bare loop."""
    datamodule, model = build(cfg)  # the same configured nets, used as plain nn.Modules
    discriminator, generator, ema = model.discriminator, model.generator, model.ema
    for net in (discriminator, generator, ema):
        net.to(device)
    d_opt = model.d_optimizer_factory(params=discriminator.parameters())
    g_opt = model.g_optimizer_factory(params=generator.parameters())
    images = datamodule.train_images.to(device)
    labels = datamodule.train_labels.to(device)
    labeled, pool = datamodule.labeled_index.to(device), datamodule.unlabeled_index.to(device)
    batch, unl_batch = cfg.data.batch_size, cfg.data.unlabeled_batch_size or cfg.data.batch_size
    data_dependent_init(discriminator, to_unit_range(images[pool[:500]]))
    data_dependent_init(generator, generator.sample_latent(500, device=device))
    ema.reset(discriminator)
    discriminator.train()
    generator.train()
    start = 0.0
    for step in range(steps + warmup):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        lab = labeled[torch.randint(len(labeled), (batch,), device=device)]
        unl = pool[torch.randint(len(pool), (2, unl_batch), device=device)]
        x_lab, y_lab = to_unit_range(images[lab]), labels[lab]
        x_unl, x_unl2 = to_unit_range(images[unl[0]]), to_unit_range(images[unl[1]])

        fake = generator(generator.sample_latent(unl_batch, device=device)).detach()
        d_loss = ssl_supervised_loss(discriminator(x_lab), y_lab) + ssl_unsupervised_loss(
            discriminator(x_unl), discriminator(fake)
        )
        if not torch.isfinite(d_loss):
            raise RuntimeError("non-finite loss")
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        ema.update(discriminator)

        discriminator.requires_grad_(False)
        _, fake_features = discriminator.forward_with_features(
            generator(generator.sample_latent(unl_batch, device=device))
        )
        with torch.no_grad():
            _, real_features = discriminator.forward_with_features(x_unl2)
        g_loss = feature_matching_loss(fake_features[-1], real_features[-1])
        if not torch.isfinite(g_loss):
            raise RuntimeError("non-finite loss")
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        discriminator.requires_grad_(True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dataset", default="mnist", help="mnist (needs the files) or digits")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("GENDISC_DATA_DIR", str(ROOT.parent / "shared" / "data")),
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = compose_cfg(args.data_dir, args.dataset)
    batch = cfg.data.batch_size + 2 * (cfg.data.unlabeled_batch_size or cfg.data.batch_size)
    framework, plain = [], []
    for _ in range(args.rounds):
        framework.append(run_framework(cfg, args.steps, args.warmup, device))
        plain.append(run_plain(cfg, args.steps, args.warmup, device))
    fw, pl = statistics.median(framework), statistics.median(plain)
    print(
        f"device: {device} ({torch.get_num_threads()} threads), dataset: {args.dataset}, "
        f"{args.steps} timed steps x {args.rounds} rounds, {batch} real images per step"
    )
    print(
        f"framework: {1 / fw:8.2f} steps/s {batch / fw:10.1f} samples/s "
        f"(runs: {', '.join(f'{1 / t:.2f}' for t in framework)})"
    )
    print(
        f"plain:     {1 / pl:8.2f} steps/s {batch / pl:10.1f} samples/s "
        f"(runs: {', '.join(f'{1 / t:.2f}' for t in plain)})"
    )
    print(f"epoch of 600 steps: framework {600 * fw:.1f} s, plain {600 * pl:.1f} s")
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        print(
            f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**20:.1f} MB (GPU), "
            f"{host:.1f} MB (host)"
        )
    else:
        print(f"peak memory: {host:.1f} MB (host RSS)")
    print(f"ratio: {fw / pl:.3f}")


if __name__ == "__main__":
    main()
