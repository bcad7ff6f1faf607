"""Draw samples from any generator checkpoint: a PNG grid and an .npz of images and labels."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from lightning import LightningModule
from omegaconf import DictConfig, OmegaConf

from gendisc.checkpoints import load_module
from gendisc.errors import ConfigError
from gendisc.models.sampling import sampler_for
from gendisc.utils.config import PROJECT_ROOT, register_resolvers
from gendisc.utils.failures import exit_on_gendisc_error
from gendisc.utils.images import image_grid, save_png, to_uint8

log = logging.getLogger(__name__)
register_resolvers()


def requested_labels(labels: Any, n: int, num_classes: int) -> torch.Tensor | None:
    """The ``labels`` setting as a tensor of n class indices (None: balanced classes)."""
    if labels is None:
        return None
    if num_classes == 0:
        raise ConfigError("labels=...: this generator is unconditional; leave labels=null")
    values = [int(labels)] * n if isinstance(labels, int) else [int(v) for v in labels]
    if len(values) != n or not all(0 <= v < num_classes for v in values):
        raise ConfigError(
            f"labels={labels}: give one class in 0..{num_classes - 1}, or a list of n={n} of them"
        )
    return torch.tensor(values)


def write_samples(
    module: LightningModule,
    n: int,
    output_dir: str | Path,
    seed: int = 0,
    labels: int | Sequence[int] | None = None,
    nrow: int | None = None,
) -> dict[str, Path]:
    """Sample ``n`` images and write ``samples.png`` and ``samples.npz`` to ``output_dir``."""
    if n < 1:
        raise ConfigError(f"n={n}: ask for at least one image")
    sampler = sampler_for(module)
    wanted = requested_labels(labels, n, sampler.num_classes)
    if wanted is not None:
        wanted = wanted.to(sampler.device)
    images, used = sampler.sample(n, labels=wanted, seed=seed)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if nrow is None and sampler.conditional:
        nrow = sampler.num_classes if wanted is None else None
    png = save_png(image_grid(images, nrow=nrow), output_dir / "samples.png")
    npz = output_dir / "samples.npz"
    label_array = used.cpu().numpy() if used is not None else np.full(n, -1)
    np.savez_compressed(npz, images=to_uint8(images), labels=label_array.astype(np.int64))
    log.info("Wrote %s and %s", png, npz)
    return {"png": png, "npz": npz}


def sample(cfg: DictConfig) -> dict[str, Path]:
    """Load ``cfg.ckpt_path`` and write its samples."""
    module = load_module(cfg.ckpt_path, cfg.get("device", "cpu"))  # reads the file once
    labels = cfg.get("labels")
    if labels is not None and not isinstance(labels, int):
        labels = list(OmegaConf.to_container(labels))
    return write_samples(module, int(cfg.n), cfg.output_dir, int(cfg.seed), labels, cfg.nrow)


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="sample")
def hydra_main(cfg: DictConfig) -> None:
    with exit_on_gendisc_error():
        paths = sample(cfg)
    print(f"samples: {paths['png']}\narrays:  {paths['npz']}")


def main() -> None:
    """Console script ``gendisc-sample``."""
    hydra_main()


if __name__ == "__main__":
    main()
