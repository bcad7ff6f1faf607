"""The classifier trained on its labeled examples plus images of a frozen conditional generator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from gendisc.checkpoints import check_checkpoint, load_module
from gendisc.errors import ConfigError
from gendisc.guards import raise_if_not_finite
from gendisc.models.classifier import ClassifierModule
from gendisc.models.contract import Batch
from gendisc.models.sampling import Sampler, sampler_for


def synthetic_count(real: int, ratio: float) -> int:
    """Synthetic images to add to ``real`` ones so that they make ``ratio`` of the batch."""
    if ratio <= 0:
        return 0
    return max(1, round(real * ratio / (1.0 - ratio)))


class AugmentedClassifierModule(ClassifierModule):
    """:class:`ClassifierModule` whose every training batch is the labeled batch plus images
    sampled on the fly, on the training device, from a frozen class-conditional generator
    (a ``model=gan`` or ``model=vae`` checkpoint with ``conditional=true``), with labels drawn
    uniformly over the classes.

    Args (``classifier_options``: the classifier's own, e.g. ``scheduler``, ``init_from``):
        generator_ckpt: the generator's checkpoint (read when fitting starts; not stored in
            this module's checkpoints, so evaluating them does not need it). When the file
            exists as the module is built, its stored config is checked then
            (``checkpoints.check_checkpoint``): a refused file stops a run before it writes.
        synthetic_ratio: fraction of each training batch that is synthetic, in [0, 1); 0
            trains on the real batch only (the baseline, identical otherwise).
        filter_threshold: drop from the loss synthetic images to whose requested class the
            classifier being trained gives a probability below this (null: keep all).
    """

    def __init__(
        self,
        net: Callable[..., nn.Module],
        optimizer: Callable[..., Optimizer],
        in_shape: Sequence[int],
        num_classes: int,
        class_names: list[str] | None = None,
        generator_ckpt: str | None = None,
        synthetic_ratio: float = 0.5,
        filter_threshold: float | None = None,
        **classifier_options: Any,
    ) -> None:
        super().__init__(net, optimizer, in_shape, num_classes, class_names, **classifier_options)
        if not 0.0 <= synthetic_ratio < 1.0:
            raise ConfigError(f"model.synthetic_ratio={synthetic_ratio}: must be in [0, 1)")
        if filter_threshold is not None and not 0.0 <= filter_threshold <= 1.0:
            raise ConfigError(f"model.filter_threshold={filter_threshold}: must be in [0, 1]")
        self.in_shape = tuple(int(v) for v in in_shape)
        self.generator_ckpt = generator_ckpt
        if generator_ckpt and Path(generator_ckpt).expanduser().is_file():
            check_checkpoint(generator_ckpt, "model.generator_ckpt")
        self.synthetic_ratio = float(synthetic_ratio)
        self.filter_threshold = filter_threshold
        self.synthetic: Sampler | None = None  # a plain attribute: never in the state dict

    def load_generator(self) -> Sampler:
        """Sampler of the frozen generator in ``generator_ckpt``, on this module's device."""
        if not self.generator_ckpt:
            raise ConfigError(
                "model.generator_ckpt is not set: give the checkpoint of a conditional "
                "generator (model=gan or model=vae run), or set model.synthetic_ratio=0."
            )
        if not Path(self.generator_ckpt).expanduser().is_file():
            raise ConfigError(
                f"model.generator_ckpt={self.generator_ckpt}: no such file. Train the conditional "
                "generator first (model=gan or model=vae with model.conditional=true, or "
                "gendisc-twostage; for the studies: gendisc-train -m experiment=study_generators)."
            )
        module = load_module(self.generator_ckpt, self.device, "model.generator_ckpt")
        module.requires_grad_(False)
        sampler = sampler_for(module)
        if not sampler.conditional:
            raise ConfigError(
                f"model.generator_ckpt={self.generator_ckpt}: the generator is unconditional; "
                "train it with model.conditional=true."
            )
        if sampler.num_classes != self.num_classes:
            raise ConfigError(
                f"model.generator_ckpt={self.generator_ckpt}: the generator has "
                f"{sampler.num_classes} classes, the data {self.num_classes}."
            )
        shape = tuple(getattr(module, "in_shape", self.in_shape))
        if shape != self.in_shape:
            raise ConfigError(
                f"model.generator_ckpt={self.generator_ckpt}: the generator makes {shape} "
                f"images, the data has {self.in_shape}."
            )
        return sampler

    def on_fit_start(self) -> None:
        if self.synthetic_ratio > 0 and self.synthetic is None:
            self.synthetic = self.load_generator()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if self.synthetic is None:
            return super().training_step(batch, batch_idx)
        x, y = batch["x"], batch["y"]
        n = len(y)
        m = synthetic_count(n, self.synthetic_ratio)
        y_syn = torch.randint(self.num_classes, (m,), device=y.device)
        x_syn = self.synthetic(self.synthetic.latents(m), y_syn).to(x.dtype)
        logits = self(torch.cat([x, x_syn]))
        smoothing = self.label_smoothing
        loss_real = F.cross_entropy(logits[:n], y, reduction="none", label_smoothing=smoothing)
        loss_syn = F.cross_entropy(logits[n:], y_syn, reduction="none", label_smoothing=smoothing)
        with torch.no_grad():
            probs = logits[n:].softmax(dim=1).gather(1, y_syn.view(-1, 1)).squeeze(1)
            keep = (
                (probs >= self.filter_threshold).to(loss_syn.dtype)
                if self.filter_threshold is not None
                else torch.ones_like(loss_syn)
            )
        loss = (loss_real.sum() + (loss_syn * keep).sum()) / (n + keep.sum())
        raise_if_not_finite(loss, "classifier loss", self)
        with torch.no_grad():
            accuracy = (logits[:n].argmax(1) == y).float().mean()
            accuracy_syn = (logits[n:].argmax(1) == y_syn).float().mean()
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        self.log_dict(
            {
                "train/acc": accuracy,
                "train/acc_synthetic": accuracy_syn,
                "train/synthetic_kept": keep.mean(),
            },
            on_step=False,
            on_epoch=True,
        )
        return loss
