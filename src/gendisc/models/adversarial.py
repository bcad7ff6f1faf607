"""The training core shared by every adversarial module (``gan``, ``ssl_gan``, later ones).

One training step is one discriminator update followed, every ``d_steps_per_g_step`` steps, by
``g_steps_per_d_step`` generator updates, with Lightning 2 manual optimisation
(``toggle_optimizer`` freezes D while G trains). The core owns what every adversarial module needs
the same way, under the same option names: one sub-config, ``model.adversarial``
(:class:`AdversarialOptions`, ``conf/model/adversarial/default.yaml``):

- the step itself, the NaN/inf guard, the optimisers' order and the epoch-end schedulers;
- the data-dependent init of weight-normalised (and other data-initialised) layers, done once at
  the start of a fresh fit and never on resume (the layers' ``initialized`` buffers come back
  with the checkpoint); ``init_images=0`` means no data-dependent init (g = 1, b = 0);
- the moving averages (``ExponentialMovingAverage``) of D (``d_ema_decay``: the D evaluated)
  and of G (``g_ema_decay``: the G sampled), restarted after that init;
- G's feature-matching loss (``feature_layer``, ``feature_norm``) and the sampler over G;
- the speed work: D's weight-normalised weights are computed once per pass group
  (``weight_norm_once``), D's passes over several batches run as one pass over their
  concatenation when D has no batch-dependent layer (``discriminate_batches``), and the step's
  training statistics are summed on the device and logged once per epoch (no host sync).

A module implements ``discriminator_loss(batch, batch_idx) -> (loss, stats)``,
``generator_loss(batch, batch_idx) -> loss``, ``data_init(count)`` and its parameters; it keeps
its own losses, conditioning and logging, and calls ``build_emas`` once its nets exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gendisc.errors import ConfigError
from gendisc.guards import NonFiniteCheck
from gendisc.losses import feature_matching_loss
from gendisc.models.contract import Batch
from gendisc.models.evaluation import ClassifierEvaluation
from gendisc.models.sampling import Sampler, generator_sampler
from gendisc.nets.ema import ExponentialMovingAverage
from gendisc.nets.layers import (
    has_batch_dependent_layers,
    mark_initialized,
    needs_data_init,
    weight_norm_once,
)
from gendisc.utils.config import migrate_state_dict

__all__ = ["AdversarialModule", "AdversarialOptions", "concat_passes"]


def concat_passes(
    forward: Callable[..., Tensor], inputs: Sequence[Sequence[Tensor | None]], concat: bool
) -> list[Tensor]:
    """``[forward(*args) for args in inputs]``, computed as one ``forward`` over the
    concatenated arguments when ``concat`` (the outputs are split back along dim 0).

    Exactly the same maths when ``forward`` treats the examples of a batch independently (no
    batch norm, no minibatch discrimination); random layers then draw one tensor of noise
    instead of several. ``None`` arguments stay ``None``.
    """
    if not concat or len(inputs) == 1:
        return [forward(*args) for args in inputs]
    sizes = [next(a for a in args if a is not None).shape[0] for args in inputs]
    joined = [
        None if column[0] is None else torch.cat(list(column), dim=0)
        for column in zip(*inputs, strict=True)
    ]
    return list(forward(*joined).split(sizes, dim=0))


@dataclass
class AdversarialOptions:
    """The adversarial core's options, ``model.adversarial`` of every adversarial module.

    Args:
        g_steps_per_d_step: G updates per G turn.
        d_steps_per_g_step: G takes its turn after every N-th D update (one of the two is 1).
        feature_layer: index into D's hidden activations for feature matching (-1: the last).
        feature_norm: l2 (squared difference of the batch means) or l1.
        init_images: images (or latents) for the data-dependent init (0: none, g = 1, b = 0).
        d_ema_decay: moving average of D's weights, the D evaluated (null: off).
        g_ema_decay: moving average of G's weights, the G sampled (null: off).
        lr_decay_epochs: both learning rates decay linearly to 0 over the last N epochs (0: off).
        concat_d_pass: D's passes over several batches as one pass over their concatenation:
            ``auto`` (when D has no batch-dependent layer), true or false. Same maths; one
            larger matrix product instead of several (a speed switch).
    """

    g_steps_per_d_step: int = 1
    d_steps_per_g_step: int = 1
    feature_layer: int = -1
    feature_norm: str = "l2"
    init_images: int = 0
    d_ema_decay: float | None = None
    g_ema_decay: float | None = None
    lr_decay_epochs: int = 0
    concat_d_pass: bool | str = "auto"

    def __post_init__(self) -> None:
        where = "model.adversarial."
        if self.g_steps_per_d_step < 1 or self.d_steps_per_g_step < 1:
            raise ConfigError(
                f"{where}g_steps_per_d_step={self.g_steps_per_d_step}, {where}d_steps_per_g_step="
                f"{self.d_steps_per_g_step}: both must be >= 1"
            )
        if self.g_steps_per_d_step > 1 and self.d_steps_per_g_step > 1:
            raise ConfigError(
                f"{where}g_steps_per_d_step and {where}d_steps_per_g_step: at most one may be "
                "above 1"
            )
        if self.concat_d_pass not in ("auto", True, False):
            raise ConfigError(
                f"{where}concat_d_pass={self.concat_d_pass!r}: choose auto, true or false"
            )
        if self.feature_norm not in ("l2", "l1"):
            raise ConfigError(f"{where}feature_norm={self.feature_norm!r}: choose l2 or l1")
        if self.lr_decay_epochs < 0:
            raise ConfigError(f"{where}lr_decay_epochs={self.lr_decay_epochs}: must be >= 0")


class AdversarialModule(ClassifierEvaluation):
    """Base class of the adversarial LightningModules (manual optimisation).

    Args:
        num_classes, class_names: as for every classifier module.
        adversarial: the core's options (:class:`AdversarialOptions`); null: their defaults.

    Subclasses set ``self.discriminator`` and ``self.generator``, then call ``build_emas``.
    """

    discriminator: nn.Module
    generator: nn.Module

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        adversarial: dict[str, Any] | AdversarialOptions | None = None,
    ) -> None:
        super().__init__(num_classes, class_names)
        self.automatic_optimization = False
        options = (
            adversarial
            if isinstance(adversarial, AdversarialOptions)
            else AdversarialOptions(**(adversarial or {}))
        )
        self.adversarial = options
        self.g_steps_per_d_step = int(options.g_steps_per_d_step)
        self.d_steps_per_g_step = int(options.d_steps_per_g_step)
        self.feature_layer = int(options.feature_layer)
        self.feature_norm = options.feature_norm
        self.init_images = int(options.init_images)
        self.lr_decay_epochs = int(options.lr_decay_epochs)
        self.concat_d_pass_setting = options.concat_d_pass
        self.d_ema: ExponentialMovingAverage | None = None
        self.g_ema: ExponentialMovingAverage | None = None
        self.nonfinite = NonFiniteCheck(self)
        self._stat_names: list[str] | None = None
        self._stat_sum: Tensor | None = None

    def build_emas(self) -> None:
        """The moving averages of D (``d_ema``) and of G (``g_ema``) that
        ``adversarial.d_ema_decay`` / ``g_ema_decay`` ask for (null or 0: none); called once
        the nets exist."""
        if self.adversarial.d_ema_decay:
            self.d_ema = ExponentialMovingAverage(self.discriminator, self.adversarial.d_ema_decay)
        if self.adversarial.g_ema_decay:
            self.g_ema = ExponentialMovingAverage(self.generator, self.adversarial.g_ema_decay)

    def with_lr_decay(self, optimizers: list[Any]) -> Any:
        """``optimizers`` for ``configure_optimizers``, with the linear decay to 0 over the last
        ``lr_decay_epochs`` epochs (stepped at each epoch's end) when it is on."""
        if not self.lr_decay_epochs:
            return optimizers
        total = self.trainer.max_epochs
        start = max(total - self.lr_decay_epochs, 0)

        def factor(epoch: int) -> float:
            return min(1.0, max(0.0, (total - epoch) / max(total - start, 1)))

        return optimizers, [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers]

    # ------------------------------------------------------------------- module-specific parts
    def discriminator_loss(self, batch: Batch, batch_idx: int) -> tuple[Tensor, dict]:
        """D's loss on one training batch and the statistics to log (tensors, no sync)."""
        raise NotImplementedError

    def generator_loss(self, batch: Batch, batch_idx: int) -> Tensor:
        """G's loss for one G update on this training batch (D is frozen)."""
        raise NotImplementedError

    def data_init(self, count: int) -> None:
        """Data-dependent init of D's and G's layers from ``count`` images/latents."""
        raise NotImplementedError

    def emas(self) -> list[tuple[ExponentialMovingAverage, nn.Module]]:
        """The (moving average, averaged net) pairs of this module."""
        pairs = [(self.d_ema, self.discriminator), (self.g_ema, self.generator)]
        return [(ema, net) for ema, net in pairs if ema is not None]

    def sampler(self) -> Sampler:
        """Samples from the EMA generator when enabled, else from the generator (eval mode)."""
        shadow = self.g_ema.shadow if self.g_ema is not None else None
        return generator_sampler(self.generator, self.device, shadow=shadow)

    def feature_matching(
        self, features: Callable[..., list[Tensor]], fake: Sequence[Any], real: Sequence[Any]
    ) -> Tensor:
        """G's feature-matching loss: ``features(*fake)`` against ``features(*real)`` (no
        gradient) at D's hidden layer ``feature_layer``, in float32 (also under bf16 autocast:
        the loss is a small difference of batch means)."""
        fake_features = features(*fake)[self.feature_layer]
        with torch.no_grad():
            real_features = features(*real)[self.feature_layer]
        return feature_matching_loss(
            fake_features.float(), real_features.float(), norm=self.feature_norm
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read a checkpoint written before an option's rename: its weight names (ssl_gan's
        ``ema.*`` -> ``d_ema.*``) renamed before Lightning loads the weights (the module itself
        is already built, from the run config that ``checkpoints.run_config`` migrates)."""
        if isinstance(checkpoint.get("state_dict"), dict):
            migrate_state_dict(checkpoint["state_dict"])
        super().on_load_checkpoint(checkpoint)

    # ------------------------------------------------------------------------------ helpers
    @property
    def concat_d_pass(self) -> bool:
        """Whether D's passes over several batches run as one pass (see the class docstring)."""
        batch_dependent = has_batch_dependent_layers(self.discriminator)
        if self.concat_d_pass_setting == "auto":
            return not batch_dependent
        if self.concat_d_pass_setting and batch_dependent:
            raise ConfigError(
                "model.adversarial.concat_d_pass=true: D has a batch-dependent layer (batch norm or "
                "minibatch discrimination), so its batches must be separate passes; use auto"
            )
        return bool(self.concat_d_pass_setting)

    def discriminate_batches(
        self, forward: Callable[..., Tensor], inputs: Sequence[Sequence[Tensor | None]]
    ) -> list[Tensor]:
        """D's outputs for several batches: one concatenated pass when allowed, else one pass
        per batch sharing the weight-normalised weights."""
        with weight_norm_once(self.discriminator):
            return concat_passes(forward, inputs, self.concat_d_pass)

    @contextmanager
    def frozen_discriminator(self) -> Iterator[None]:
        """D's normalised weights computed once for all the passes of a G turn (D is frozen)."""
        with weight_norm_once(self.discriminator):
            yield

    # ------------------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        """Data-dependent init at the start of a fresh fit; skipped when the layers were
        restored from a checkpoint (resume) or loaded initialised. Then D's minibatch
        reference (fixed real images for batch-independent evaluation), unless restored."""
        nets = (self.discriminator, self.generator)
        if not self.init_images:
            for net in nets:
                mark_initialized(net)  # g = 1, b = 0; else each layer would init on its first batch
        elif any(needs_data_init(net) for net in nets):
            self.data_init(self.init_images)
            for ema, net in self.emas():
                ema.reset(net)
        datamodule, net = self.trainer.datamodule, self.discriminator
        self.ensure_minibatch_reference(
            net,
            lambda n: self.minibatch_reference_input(
                datamodule.unlabeled_sample(n, seed=1).to(self.device)
            ),
            copies=[ema.shadow for ema, averaged in self.emas() if averaged is net],
        )

    def minibatch_reference_input(self, images: Tensor) -> Tensor:
        """D's input for the reference images (a module that adds label planes overrides it)."""
        return images

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        d_optimizer, g_optimizer = self.optimizers()
        d_loss, stats = self.discriminator_loss(batch, batch_idx)
        self.nonfinite.check(d_loss, "discriminator loss", batch_idx)
        d_optimizer.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        d_optimizer.step()
        self.after_discriminator_update()

        if batch_idx % self.d_steps_per_g_step == 0:
            self.toggle_optimizer(g_optimizer)
            with self.frozen_discriminator():
                for _ in range(self.g_steps_per_d_step):
                    g_loss = self.generator_loss(batch, batch_idx)
                    self.nonfinite.check(g_loss, "generator loss", batch_idx)
                    g_optimizer.zero_grad(set_to_none=True)
                    self.manual_backward(g_loss)
                    g_optimizer.step()
                    self.after_generator_update()
            self.untoggle_optimizer(g_optimizer)
            stats["train/g_loss"] = g_loss
        stats["train/d_loss"] = d_loss
        self.accumulate(stats)

    def after_discriminator_update(self) -> None:
        """Called after every D update (the D EMA's step lives here)."""
        for ema, net in self.emas():
            if net is self.discriminator:
                ema.update(net)

    def after_generator_update(self) -> None:
        """Called after every G update (the G EMA's step lives here)."""
        for ema, net in self.emas():
            if net is self.generator:
                ema.update(net)

    # ------------------------------------------------------------------------------- logging
    def accumulate(self, stats: dict[str, Tensor]) -> None:
        """Sum this step's statistics on the device; they are logged as epoch means.

        The first step of an epoch (always a D and a G update) fixes the names; a statistic
        missing from a later step (``train/g_loss`` between G turns) is averaged over the steps
        that have it.
        """
        if self._stat_names is None:
            self._stat_names = sorted(stats)
        unknown = set(stats) - set(self._stat_names)
        if unknown:
            raise RuntimeError(f"training statistics {sorted(unknown)} missing from step 0")
        zero = next(iter(stats.values())).detach().new_zeros((), dtype=torch.float32)
        values = [
            stats[n].detach().float().reshape(()) if n in stats else zero for n in self._stat_names
        ]
        present = [zero + 1 if n in stats else zero for n in self._stat_names]
        block = torch.stack([torch.stack(values), torch.stack(present)])
        self._stat_sum = block if self._stat_sum is None else self._stat_sum + block

    def on_train_epoch_end(self) -> None:
        """Log the epoch means of the training statistics, then step any LR schedulers."""
        if self._stat_sum is not None and self._stat_names:
            sums, counts = self._stat_sum
            means = sums / counts.clamp_min(1)
            for name, value, count in zip(self._stat_names, means, counts, strict=True):
                if count > 0:
                    self.log(name, value, on_step=False, on_epoch=True, sync_dist=True)
            loss_index = self._stat_names.index("train/d_loss")
            self.log("train/loss", means[loss_index], prog_bar=True, on_epoch=True, sync_dist=True)
        self._stat_names, self._stat_sum = None, None
        for scheduler in self.lr_schedulers() or []:
            scheduler.step()
