"""Pictures of a generative model during training: samples, reconstructions, interpolations."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from torch import Tensor

from gendisc.callbacks.logging_images import log_image
from gendisc.data.batches import to_unit_range
from gendisc.models.sampling import Sampler, eval_mode, sampler_for
from gendisc.utils.images import image_grid, save_png

log = logging.getLogger(__name__)


class GenerativeSamples(Callback):
    """Every ``every_n_epochs`` epochs and at the end of fitting, draws a grid of samples from
    fixed noise: one row per class (``per_class`` columns, the same noise in each column) for a
    class-conditional model, else ``num_samples`` images. Modules with ``reconstruct`` and
    ``encode`` (the VAE) also get a grid of validation images over their reconstructions and a
    latent interpolation between pairs of validation images (of the same class when
    conditional). Each grid is written to the run directory (``samples_epoch005.png``, ...;
    ``samples.png`` ... at the end of fitting) and sent to every logger with ``log_image``.
    """

    def __init__(
        self,
        output_dir: str,
        every_n_epochs: int = 5,
        per_class: int = 10,
        num_samples: int = 100,
        seed: int = 0,
        reconstructions: int = 10,
        interpolation_pairs: int = 8,
        interpolation_steps: int = 10,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.every_n_epochs = int(every_n_epochs)
        self.per_class = int(per_class)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.reconstructions = int(reconstructions)
        self.interpolation_pairs = int(interpolation_pairs)
        self.interpolation_steps = int(interpolation_steps)
        self.written: list[Path] = []

    # ------------------------------------------------------------------------------ pictures
    def sample_grid(self, sampler: Sampler) -> Tensor:
        """Samples from fixed noise, laid out row-major (rows = classes when conditional)."""
        if sampler.conditional:
            z = sampler.latents(self.per_class, self.seed).repeat(sampler.num_classes, 1)
            y = torch.arange(sampler.num_classes, device=sampler.device)
            return sampler(z, y.repeat_interleave(self.per_class))
        return sampler(sampler.latents(self.num_samples, self.seed))

    def _validation_images(self, trainer: Trainer, device: torch.device) -> tuple[Tensor, Tensor]:
        datamodule = trainer.datamodule
        return to_unit_range(datamodule.val_images).to(device), datamodule.val_labels.to(device)

    @torch.no_grad()
    def reconstruction_grid(self, trainer: Trainer, module: LightningModule) -> Tensor:
        """Validation images (odd rows) over their reconstructions (even rows)."""
        images, labels = self._validation_images(trainer, module.device)
        x, y = images[: self.reconstructions], labels[: self.reconstructions]
        with eval_mode(module):
            recon = module.reconstruct(x, y if module.conditional else None).clamp(-1, 1)
        return torch.cat([x, recon])

    @torch.no_grad()
    def interpolation_grid(self, trainer: Trainer, module: LightningModule) -> Tensor:
        """Rows decoded along the line between the posterior means of two validation images."""
        images, labels = self._validation_images(trainer, module.device)
        starts, ends, classes = [], [], []
        if module.conditional:
            for k in range(module.num_classes):
                index = (labels == k).nonzero().flatten()
                if len(index) >= 2 and len(starts) < self.interpolation_pairs:
                    starts.append(int(index[0]))
                    ends.append(int(index[1]))
                    classes.append(k)
        else:
            count = min(self.interpolation_pairs, len(images) // 2)
            starts = list(range(count))
            ends = list(range(count, 2 * count))
        if not starts:
            return images[:0]
        a, b = images[torch.tensor(starts)], images[torch.tensor(ends)]
        y = torch.tensor(classes, device=module.device) if module.conditional else None
        weights = torch.linspace(0, 1, self.interpolation_steps, device=module.device)
        rows = []
        with eval_mode(module):
            mu_a, _ = module.encode(a, y)
            mu_b, _ = module.encode(b, y)
            for i in range(len(a)):
                z = torch.lerp(mu_a[i : i + 1], mu_b[i : i + 1], weights.view(-1, 1))
                yi = y[i : i + 1].expand(len(weights)) if y is not None else None
                rows.append(module.decode(z, yi).clamp(-1, 1))
        return torch.cat(rows)

    def write(self, trainer: Trainer, module: LightningModule, tag: str) -> list[Path]:
        """Draw, save and log every grid this module supports; ``tag`` names the files."""
        sampler = sampler_for(module)
        columns = self.per_class if sampler.conditional else None
        grids = {"samples": (self.sample_grid(sampler), columns)}
        if hasattr(module, "reconstruct") and hasattr(module, "encode"):
            grids["reconstructions"] = (
                self.reconstruction_grid(trainer, module),
                self.reconstructions,
            )
            grids["interpolations"] = (
                self.interpolation_grid(trainer, module),
                self.interpolation_steps,
            )
        paths = []
        for name, (images, nrow) in grids.items():
            if len(images) == 0:
                continue
            grid = image_grid(images, nrow=nrow)
            paths.append(save_png(grid, self.output_dir / f"{name}{tag}.png"))
            log_image(trainer, f"gen/{name}", grid)
        self.written.extend(paths)
        return paths

    # ----------------------------------------------------------------------------------- hooks
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs > 0 and epoch % self.every_n_epochs == 0 and trainer.is_global_zero:
            self.write(trainer, pl_module, f"_epoch{epoch:03d}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            paths = self.write(trainer, pl_module, "")
            log.info("Samples written to %s", ", ".join(str(p) for p in paths))
