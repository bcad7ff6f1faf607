"""Members: several ssl_gan runs that differ only in their data and seed, trained as one model.

Each member is an ordinary run, built and data-initialised by the ordinary code
(``SSLGANModule``, its datamodule, ``data_init`` with its own seed), then copied into batched
nets whose parameters carry a leading member dimension (``gendisc.nets.batched``). Training
steps every member at once: one batched pass of D over all members' labeled, unlabeled and
generated batches, one backward of the sum of the members' losses (member i's gradient is its
own loss's), one ``d_optimizer`` over the stacked tensors (N independent Adams: the update is
element-wise), one EMA over them; then the same for G. Member i keeps its labeled set, its
batches (its own datamodule's loader), its initialisation, its optimiser moments and EMA.

Random streams (``rng``):
- ``member`` (default): every member draws its latents and Gaussian noise from its own
  generator, which continues the run's global random stream after its build and data init,
  with the same shapes in the same order as the single run: on the CPU each member then
  equals its separate run up to float rounding (tests/test_members.py);
- ``shared``: one draw of shape (N, ...) per tensor from one generator seeded with the first
  member's seed (the device's default one under CUDA graphs): independent members, N times
  fewer kernels (faster on a GPU), but not the single runs' draws.

``capturable`` / ``graphs``: the updates with device-tensor scalars (``TensorAdam``,
``TensorEMA``), and on a GPU the whole step replayed as a CUDA graph (``MemberGroup.run_step``).

At the end ``unstack()`` copies each member back into its own ``SSLGANModule`` (weights, the
EMA, the generator's batch-norm statistics), which is tested and reported like a single run.

``state_dict()`` / ``load_state_dict()``: the whole training state between two epochs (the
stacked weights, optimiser moments, EMA, every member's random stream and data-stream epoch,
the counters and the last epoch's statistics), plain tensors and Python values only, so a
group continues from it exactly as if it had not stopped (``gendisc.members`` writes it as the
group checkpoint); a subset of the members can be loaded too (finished members left out).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor

from gendisc.data.batches import TrainBatches, to_unit_range
from gendisc.errors import ConfigError
from gendisc.guards import NonFiniteLossError
from gendisc.models.ssl_gan import SSLGANModule
from gendisc.nets.batched import BatchedSalimansD, BatchedSalimansG
from gendisc.nets.ema import ExponentialMovingAverage
from gendisc.nets.layers import mark_initialized, needs_data_init

__all__ = [
    "ELEMENTWISE_OPTIMIZERS",
    "GROUP_STATE_FORMAT",
    "RNG_MODES",
    "Member",
    "MemberGroup",
    "TensorAdam",
    "TensorEMA",
    "epoch_positions",
    "prepare_member",
]

log = logging.getLogger(__name__)

RNG_MODES = ("member", "shared")
# the version of ``MemberGroup.state_dict``'s layout (a group checkpoint of another is refused)
GROUP_STATE_FORMAT = 1
# optimisers whose update of a stacked tensor is N independent updates (element-wise maths,
# one step count per tensor; no norm or statistic over a whole tensor)
ELEMENTWISE_OPTIMIZERS = ("AdamEpsInsideSqrt", "Adam", "AdamW", "SGD", "RMSprop")


@dataclass
class Member:
    """One run of a group: its module, its datamodule, its training loader and random stream."""

    module: SSLGANModule
    datamodule: L.LightningDataModule
    loader: Any
    seed: int
    rng_state: Tensor
    stats: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def prepare_member(
    module: SSLGANModule, datamodule: L.LightningDataModule, seed: int, device: torch.device
) -> Member:
    """What a single run does between its build (seeded with ``seed``, done by the caller just
    before) and its first step: the training loader (seeded from the global seed, as
    ``train_dataloader`` is), the module on ``device``, the data-dependent init and the EMA
    restart of ``on_fit_start``; then the global random state, which the member continues."""
    if not isinstance(module, SSLGANModule):
        raise ConfigError(
            f"members: model {type(module).__name__} is not supported; members train "
            "model=ssl_gan (the Salimans MNIST nets; ablation=no_unlabeled is the labels-only arm)"
        )
    loader = datamodule.train_dataloader()
    module.to(device)
    nets = (module.discriminator, module.generator)
    if not module.init_images:
        for net in nets:
            mark_initialized(net)
    elif any(needs_data_init(net) for net in nets):
        module._trainer = _DataOnly(datamodule)  # data_init reads trainer.datamodule only
        try:
            module.data_init(module.init_images)
        finally:
            module._trainer = None
        for ema, net in module.emas():
            ema.reset(net)
    state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
    return Member(module, datamodule, loader, seed, state)


def _same_images(loaders: Sequence[Any]) -> bool:
    """Whether every loader is a ``TrainBatches`` over the same training images and labels."""
    if not all(
        isinstance(loader, TrainBatches) and hasattr(loader, "_stream") for loader in loaders
    ):
        return False
    first = loaders[0]
    return all(
        loader.images.shape == first.images.shape
        and (loader.images is first.images or torch.equal(loader.images, first.images))
        and torch.equal(loader.labels, first.labels)
        for loader in loaders[1:]
    )


def epoch_positions(loader: TrainBatches) -> dict[str, Tensor]:
    """The next epoch's image positions of ``loader`` per stream, ``{"x": (steps, B),
    "x_unl": ..., "x_unl2": ...}``: the draws ``TrainBatches.__iter__`` makes (same
    generator, same order; it counts the epoch as started)."""
    epoch = loader.current_epoch() if loader.current_epoch else loader.epochs_started
    loader.epochs_started += 1
    generator = torch.Generator().manual_seed(loader.seed * 1_000_003 + epoch)
    positions = {"x": loader._stream(loader.labeled_index, loader.batch_size, generator)}
    for stream in range(loader.unlabeled_streams):
        key = "x_unl" if stream == 0 else f"x_unl{stream + 1}"
        positions[key] = loader._stream(
            loader.unlabeled_index, loader.unlabeled_batch_size, generator
        )
    return positions


class TensorAdam:
    """``AdamEpsInsideSqrt``'s update of one optimiser's parameters with the step count and
    the bias-corrected scalars as device tensors, so that a CUDA graph can replay it:
    ``p -= (lr sqrt(c2) / c1) m / sqrt(v + eps c2)``, c1 = 1 - beta1^t, c2 = 1 - beta2^t
    (the scalars in float64, applied in the parameters' dtype)."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        if type(optimizer).__name__ != "AdamEpsInsideSqrt":
            raise ConfigError(
                "members: capturable updates (CUDA graphs) support the authors' Adam "
                "(gendisc.optim.AdamEpsInsideSqrt) only; drop graphs or use that optimiser"
            )
        self.groups = []
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.requires_grad]
            if params:
                beta1, beta2 = group["betas"]
                self.groups.append((params, float(group["lr"]), beta1, beta2, group["eps"]))
        self.exp_avgs = [[torch.zeros_like(p) for p in g[0]] for g in self.groups]
        self.exp_avg_sqs = [[torch.zeros_like(p) for p in g[0]] for g in self.groups]
        self.t = torch.zeros((), dtype=torch.float64, device=device)

    def state_dict(self) -> dict[str, Any]:
        """The moments and the step count (tensors, as ``load_state_dict`` takes them)."""
        return {
            "kind": "TensorAdam",
            "t": self.t,
            "exp_avgs": self.exp_avgs,
            "exp_avg_sqs": self.exp_avg_sqs,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy a ``state_dict`` into this update's tensors (in place: a captured CUDA graph
        keeps reading the same memory)."""
        if not isinstance(state, dict) or state.get("kind") != "TensorAdam":
            raise ConfigError(
                "members: the group checkpoint holds the optimiser state of the eager updates; "
                "resume with the same hydra.launcher.graphs setting as the interrupted group"
            )
        self.t.copy_(state["t"])
        for mine, theirs in (
            (self.exp_avgs, state["exp_avgs"]),
            (self.exp_avg_sqs, state["exp_avg_sqs"]),
        ):
            for group, saved in zip(mine, theirs, strict=True):
                for tensor, value in zip(group, saved, strict=True):
                    tensor.copy_(value)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for params, *_ in self.groups:
            for p in params:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        for (params, lr, beta1, beta2, eps), m, v in zip(
            self.groups, self.exp_avgs, self.exp_avg_sqs, strict=True
        ):
            grads = [p.grad for p in params]
            c1, c2 = 1 - torch.pow(beta1, self.t), 1 - torch.pow(beta2, self.t)
            eps_term = (eps * c2).to(params[0].dtype)
            step_size = (lr * torch.sqrt(c2) / c1).to(params[0].dtype)
            torch._foreach_lerp_(m, grads, 1.0 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)
            denominators = torch._foreach_add(v, eps_term)
            torch._foreach_sqrt_(denominators)
            # (step_size * m) / denominator: the order of addcdiv's arithmetic, so the two agree
            updates = torch._foreach_mul(m, step_size)
            torch._foreach_div_(updates, denominators)
            torch._foreach_sub_(params, updates)


class TensorEMA:
    """``ExponentialMovingAverage.update`` with the update count and decay as device tensors
    (capturable in a CUDA graph); ``sync()`` writes the count back into the average."""

    def __init__(self, ema: ExponentialMovingAverage, module: torch.nn.Module) -> None:
        self.ema = ema
        self.averaged, self.current, self.my_buffers, self.their_buffers = ema._match(module)
        self.t = ema.num_updates.to(torch.float64).clone()

    @torch.no_grad()
    def __call__(self) -> None:
        decay = torch.full_like(self.t, self.ema.decay)
        if self.ema.warmup:
            decay = torch.minimum(decay, (1 + self.t) / (10 + self.t))
        weight = (1 - decay).to(self.averaged[0].dtype)
        differences = torch._foreach_sub([p.detach() for p in self.current], self.averaged)
        torch._foreach_mul_(differences, weight)
        torch._foreach_add_(self.averaged, differences)
        for mine, theirs in zip(self.my_buffers, self.their_buffers, strict=True):
            mine.copy_(theirs)
        self.t += 1

    def sync(self) -> None:
        self.ema.num_updates.fill_(int(self.t.item()))
        self.ema._count = None

    def load(self) -> None:
        """Take the count of the average (after its ``load_state_dict``)."""
        self.t.fill_(int(self.ema.num_updates))


def _ema_updater(
    ema: ExponentialMovingAverage | None, module: torch.nn.Module, capturable: bool
) -> Any:
    """The update of ``ema`` towards ``module`` as a callable (nothing without an EMA)."""
    if ema is None:
        return lambda: None
    if capturable:
        return TensorEMA(ema, module)
    return lambda: ema.update(module)


class _DataOnly:
    """Stands in for the Trainer where a module only reads ``trainer.datamodule``."""

    def __init__(self, datamodule: L.LightningDataModule) -> None:
        self.datamodule = datamodule


def _select_members(value: Any, size: int, indices: Sequence[int]) -> Any:
    """``value`` (a state dict, nested dicts/lists/tuples of tensors and plain values) with the
    members ``indices`` of ``size`` kept: every tensor with a dimension holds one slice per
    member along dim 0 (the batched nets, their optimiser moments and EMA); 0-d tensors (step
    counts) and plain values are shared and kept as they are."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return value
        if value.shape[0] != size:
            raise ConfigError(
                f"members: a tensor of shape {tuple(value.shape)} in the group checkpoint has no "
                f"member dimension of {size}: the file does not fit this group"
            )
        if list(indices) == list(range(size)):
            return value
        return value[torch.tensor(list(indices), dtype=torch.long, device=value.device)]
    if isinstance(value, dict):
        return {key: _select_members(item, size, indices) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_select_members(item, size, indices) for item in value)
    return value


def _check_optimizer(optimizer: torch.optim.Optimizer, name: str) -> None:
    if type(optimizer).__name__ not in ELEMENTWISE_OPTIMIZERS:
        raise ConfigError(
            f"members: model.{name} is {type(optimizer).__name__}, whose update of stacked "
            f"tensors may mix members; use one of {ELEMENTWISE_OPTIMIZERS}"
        )


class MemberGroup:
    """N prepared members trained as one model (see the module docstring).

    Args:
        members: from ``prepare_member``, built from configs that differ only in
            ``seed``, ``data.data_seed``, ``data.labels_per_class`` and
            ``model.unlabeled_weight`` (the caller checks that).
        device: where the batched nets train.
        rng: ``member`` or ``shared`` (module docstring).
        capturable: the optimiser and EMA updates with their step-dependent scalars as device
            tensors (``TensorAdam``, ``TensorEMA``: the same formulas), as a CUDA graph needs.
        graphs: (CUDA) after 3 eager warm-up steps, capture one whole training step (D and G
            updates, optimisers, EMA) in a CUDA graph and replay it: no per-kernel launch cost.
            Implies ``capturable``; needs ``d_steps_per_g_step=1`` and no lr decay.
    """

    def __init__(
        self,
        members: Sequence[Member],
        device: torch.device | str = "cpu",
        rng: str = "member",
        capturable: bool = False,
        graphs: bool = False,
    ) -> None:
        if not members:
            raise ConfigError("members: no runs to train")
        if rng not in RNG_MODES:
            raise ConfigError(f"members.rng={rng!r}: choose one of {RNG_MODES}")
        self.members = list(members)
        self.device = torch.device(device)
        self.rng = rng
        first = self.members[0].module
        modules = [m.module for m in self.members]
        if first.generator_objective != "feature_matching":
            raise ConfigError(
                "members: model.generator_objective must be feature_matching (the paper's); "
                "train the other objectives one run at a time"
            )
        self.d = BatchedSalimansD([m.discriminator for m in modules]).to(self.device)
        self.g = BatchedSalimansG([m.generator for m in modules]).to(self.device)
        self.d_ema = (
            ExponentialMovingAverage(self.d, first.d_ema.decay, first.d_ema.warmup)
            if first.d_ema is not None
            else None
        )
        self.g_ema = (
            ExponentialMovingAverage(self.g, first.g_ema.decay, first.g_ema.warmup)
            if first.g_ema is not None
            else None
        )
        self.d_optimizer = first.d_optimizer_factory(params=self.d.parameters())
        self.g_optimizer = first.g_optimizer_factory(params=self.g.parameters())
        _check_optimizer(self.d_optimizer, "d_optimizer")
        _check_optimizer(self.g_optimizer, "g_optimizer")
        self.graphs = bool(graphs)
        self.capturable = bool(capturable or graphs)
        if self.graphs and self.device.type != "cuda":
            raise ConfigError("members: CUDA graphs (graphs=true) need a CUDA device")
        if self.graphs and first.d_steps_per_g_step != 1:
            raise ConfigError(
                "members: CUDA graphs need model.adversarial.d_steps_per_g_step=1 (one step shape)"
            )
        if self.capturable and first.lr_decay_epochs:
            raise ConfigError(
                "members: capturable updates and CUDA graphs keep the learning rates fixed; use "
                "model.adversarial.lr_decay_epochs=0 or neither"
            )
        self._graph: Any = None
        self._warm_steps = 0
        self._static_in: dict[str, Tensor] = {}
        self._static_out: dict[str, Tensor] = {}
        if self.capturable:
            self.d_update: Any = TensorAdam(self.d_optimizer, self.device)
            self.g_update: Any = TensorAdam(self.g_optimizer, self.device)
        else:
            self.d_update, self.g_update = self.d_optimizer, self.g_optimizer
        self.d_ema_update = _ema_updater(self.d_ema, self.d, self.capturable)
        self.g_ema_update = _ema_updater(self.g_ema, self.g, self.capturable)
        self.unlabeled_weight = torch.tensor(
            [float(m.unlabeled_weight) for m in modules], device=self.device
        )
        self.generators: list[torch.Generator] = []
        if rng == "member":
            for member in self.members:
                generator = torch.Generator(self.device)
                generator.set_state(member.rng_state)
                self.generators.append(generator)
        elif self.graphs:  # the default CUDA generator: a graph replays its draws safely
            torch.cuda.manual_seed(self.members[0].seed)
            self.generators.append(torch.cuda.default_generators[self.device.index or 0])
        else:
            self.generators.append(torch.Generator(self.device).manual_seed(self.members[0].seed))
        self.uniform_latent = self.g.latent_distribution == "uniform"
        self.fast_batches = _same_images([m.loader for m in self.members])
        if self.fast_batches:
            loader = self.members[0].loader
            self._images = loader.images.to(self.device)
            self._labels = loader.labels.to(self.device)
        self.global_step = 0
        self.epochs = 0
        self.stopped_early = False
        self.fit_seconds = 0.0
        self.train_images = 0

    # ------------------------------------------------------------------------------ drawing
    def draw(self, shape: tuple[int, ...], kind: str) -> Tensor:
        """(N, *shape) standard normal noise (``noise``) or latents (``latent``), each member's
        slice from its own generator (``rng=member``) or one draw for all (``shared``)."""
        uniform = kind == "latent" and self.uniform_latent
        sample = torch.rand if uniform else torch.randn
        if self.rng == "shared":
            n = len(self.members)
            return sample((n, *shape), device=self.device, generator=self.generators[0])
        return torch.stack(
            [sample(shape, device=self.device, generator=g) for g in self.generators]
        )

    # ----------------------------------------------------------------------------- training
    def batches(self, steps: int) -> Iterator[dict[str, Tensor]]:
        """Each step's batches of every member, stacked along dim 0: (N, B, ...).

        Fast path (``fast_batches``): when every member's loader is a ``TrainBatches`` over the
        same images, the epoch's positions of all members are drawn as the loaders draw them
        and each step slices all members' batches with one gather per stream (a few kernels
        instead of a dozen per member); else each member's loader is iterated.
        """
        if self.fast_batches:
            yield from self._fast_batches(steps)
            return
        iterators = [iter(m.loader) for m in self.members]
        for _ in range(steps):
            parts = [next(it) for it in iterators]
            yield {
                key: torch.stack([p[key] for p in parts]).to(self.device, non_blocking=True)
                for key in parts[0]
            }

    def _fast_batches(self, steps: int) -> Iterator[dict[str, Tensor]]:
        plans = [epoch_positions(m.loader) for m in self.members]
        keys = list(plans[0])
        index = {
            key: torch.stack([plan[key] for plan in plans]).to(self.device) for key in keys
        }  # (N, steps, B)
        for step in range(steps):
            batch = {}
            for key in keys:
                images = self._images[index[key][:, step]]
                batch[key] = to_unit_range(images)
                if key == "x":
                    batch["y"] = self._labels[index[key][:, step]]
            yield batch

    def step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """One D update of every member, then (on G's turn) the G updates; the members' losses
        (N,) and statistics, as ``AdversarialModule.training_step`` computes them."""
        first = self.members[0].module
        x_lab, y_lab, x_unl = batch["x"].flatten(2), batch["y"], batch["x_unl"].flatten(2)
        b_lab, b_unl = x_lab.shape[1], x_unl.shape[1]
        with torch.no_grad():
            fake = self.g(self.draw((b_unl, self.g.latent_dim), "latent"))
        logits = self.d(torch.cat([x_lab, x_unl, fake], dim=1), self.draw)[0].float()
        logits_lab, logits_unl, logits_fake = (
            part.contiguous() for part in logits.split([b_lab, b_unl, b_unl], dim=1)
        )
        lse_lab = torch.logsumexp(logits_lab, dim=2)
        l_y = logits_lab.gather(2, y_lab.long().unsqueeze(2)).squeeze(2)
        loss_lab = -l_y.mean(1) + lse_lab.mean(1)
        lse_unl, lse_fake = torch.logsumexp(logits_unl, 2), torch.logsumexp(logits_fake, 2)
        softplus = torch.nn.functional.softplus
        loss_unl = (
            -0.5 * lse_unl.mean(1)
            + 0.5 * softplus(lse_unl).mean(1)
            + 0.5 * softplus(lse_fake).mean(1)
        )
        d_loss = loss_lab + self.unlabeled_weight * loss_unl
        self.d_update.zero_grad(set_to_none=True)
        d_loss.sum().backward()
        self.d_update.step()
        self.d_ema_update()
        stats = {"train/d_loss": d_loss.detach(), "train/loss_lab": loss_lab.detach()}
        stats["train/loss_unl"] = loss_unl.detach()
        stats["train/acc"] = (logits_lab.argmax(2) == y_lab).float().mean(1)

        if batch_idx % first.d_steps_per_g_step == 0:
            trainable = [p for p in self.d.parameters() if p.requires_grad]
            for p in trainable:
                p.requires_grad_(False)
            try:
                x_real = batch.get("x_unl2", batch["x_unl"]).flatten(2)
                norms = self.d.norms()
                for _ in range(first.g_steps_per_d_step):
                    g_loss = self._generator_loss(x_real, b_unl, norms, first)
                    self.g_update.zero_grad(set_to_none=True)
                    g_loss.sum().backward()
                    self.g_update.step()
                    self.g_ema_update()
            finally:
                for p in trainable:
                    p.requires_grad_(True)
            stats["train/g_loss"] = g_loss.detach()
        return stats

    def run_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """``step``, or with ``graphs`` its CUDA graph: 3 eager warm-up steps on a side stream,
        then one capture (not executed) and, for that step and every later one, the batch
        copied into the graph's inputs and one replay. The statistics returned are the graph's
        outputs (overwritten by the next replay)."""
        if not self.graphs:
            return self.step(batch, batch_idx)
        if self._graph is None and self._warm_steps < 3:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = self.step(batch, batch_idx)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._warm_steps += 1
            return out
        if self._graph is None:
            self._static_in = {key: value.clone() for key, value in batch.items()}
            self._graph = torch.cuda.CUDAGraph()
            if self.rng == "member":
                for generator in self.generators:
                    self._graph.register_generator_state(generator)
            with torch.cuda.graph(self._graph):
                self._static_out = self.step(self._static_in, 0)
        for key, value in batch.items():
            self._static_in[key].copy_(value)
        self._graph.replay()
        return self._static_out

    def _generator_loss(
        self, x_real: Tensor, count: int, norms: list[Tensor], first: SSLGANModule
    ) -> Tensor:
        """Feature matching per member (N,): ``feature_matching_loss`` over dim 1."""
        fake = self.g(self.draw((count, self.g.latent_dim), "latent"))
        fake_features = self.d(fake, self.draw, norms)[1][first.feature_layer].float()
        with torch.no_grad():
            real_features = self.d(x_real, self.draw, norms)[1][first.feature_layer].float()
        d = fake_features.mean(1) - real_features.mean(1)
        per_feature = d.square() if first.feature_norm == "l2" else d.abs()
        return per_feature.mean(1)

    def _schedulers(self, max_epochs: int) -> list[torch.optim.lr_scheduler.LambdaLR]:
        """The linear decay of ``SSLGANModule.configure_optimizers`` (``lr_decay_epochs``)."""
        decay = self.members[0].module.lr_decay_epochs
        if not decay:
            return []
        start = max(max_epochs - decay, 0)

        def factor(epoch: int) -> float:
            return min(1.0, max(0.0, (max_epochs - epoch) / max(max_epochs - start, 1)))

        return [
            torch.optim.lr_scheduler.LambdaLR(opt, factor)
            for opt in (self.d_optimizer, self.g_optimizer)
        ]

    def fit(
        self,
        max_epochs: int,
        steps_per_epoch: int | None = None,
        max_steps: int = -1,
        time_limit_s: float | None = None,
        on_epoch_end: Callable[[MemberGroup], None] | None = None,
    ) -> None:
        """Train every member until ``max_epochs`` epochs (counted from the group's start, so
        a group loaded from a ``state_dict`` trains the epochs left) of ``steps_per_epoch``
        steps (default: the loader's length, as ``trainer.limit_train_batches`` cuts it),
        stopping after ``max_steps`` steps in all when positive; the last epoch's mean
        statistics per member go to ``Member.stats``. A member's NaN/inf loss stops the group
        (checked each epoch). ``time_limit_s``: no epoch starts that would end after that many
        seconds of this call (judged by the slowest epoch so far); ``stopped_early`` then says
        so. ``on_epoch_end(group)`` runs after every epoch (e.g. to save a checkpoint); its
        time is not counted in ``fit_seconds``."""
        self.d.train()
        self.g.train()
        schedulers = self._schedulers(max_epochs)
        if schedulers and self.epochs:
            with warnings.catch_warnings():  # "scheduler step before optimizer step"
                warnings.simplefilter("ignore", UserWarning)
                for scheduler in schedulers:
                    for _ in range(self.epochs):
                        scheduler.step()
        length = len(self.members[0].loader)
        steps_per_epoch = min(steps_per_epoch or length, length)
        earlier_seconds = self.fit_seconds
        paused = 0.0
        start = time.perf_counter()
        slowest = 0.0
        while self.epochs < max_epochs:
            if 0 < max_steps <= self.global_step:
                break
            if time_limit_s is not None and time.perf_counter() - start + slowest > time_limit_s:
                self.stopped_early = True
                break
            epoch_start = time.perf_counter()
            steps = steps_per_epoch
            if max_steps > 0:
                steps = min(steps, max_steps - self.global_step)
            sums: dict[str, Tensor] = {}
            counts: dict[str, int] = {}
            for batch_idx, batch in enumerate(self.batches(steps)):
                stats = self.run_step(batch, batch_idx)
                for key, value in stats.items():
                    sums[key] = sums[key] + value if key in sums else value.clone()
                    counts[key] = counts.get(key, 0) + 1
                self.global_step += 1
                self.train_images += sum(
                    int(v.shape[1]) for k, v in batch.items() if k.startswith("x")
                )
            self.epochs += 1
            for scheduler in schedulers:
                scheduler.step()
            means = {key: (sums[key] / counts[key]).cpu() for key in sums}
            self._check_finite(means)
            for i, member in enumerate(self.members):
                member.stats = {key: float(value[i]) for key, value in means.items()}
                member.stats["train/loss"] = member.stats["train/d_loss"]
            slowest = max(slowest, time.perf_counter() - epoch_start)
            if on_epoch_end is not None:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.fit_seconds = earlier_seconds + time.perf_counter() - start - paused
                hook_start = time.perf_counter()
                on_epoch_end(self)
                paused += time.perf_counter() - hook_start
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.fit_seconds = earlier_seconds + time.perf_counter() - start - paused

    def _check_finite(self, means: dict[str, Tensor]) -> None:
        for key in ("train/d_loss", "train/g_loss"):
            if key in means and not torch.isfinite(means[key]).all():
                bad = [
                    f"seed={self.members[i].seed} data_seed="
                    f"{getattr(self.members[i].datamodule, 'data_seed', '?')}"
                    for i in torch.nonzero(~torch.isfinite(means[key])).flatten().tolist()
                ]
                raise NonFiniteLossError(
                    f"members: the {key.removeprefix('train/')} became NaN/inf in epoch "
                    f"{self.epochs} for {', '.join(bad)}; lower the learning rate or train "
                    "those runs one at a time to see the step"
                )

    # --------------------------------------------------------------------------- checkpoints
    @torch.no_grad()
    def state_dict(self) -> dict[str, Any]:
        """The group's training state between two epochs (module docstring): tensors (on the
        group's device) and plain Python values only, as ``torch.load(weights_only=True)``
        reads them back. Per-member tensors have the member dimension first."""
        for updater in (self.d_ema_update, self.g_ema_update):
            if isinstance(updater, TensorEMA):
                updater.sync()
        size = len(self.members)
        return {
            "format": GROUP_STATE_FORMAT,
            "size": size,
            "rng": self.rng,
            "capturable": self.capturable,
            "d": self.d.state_dict(),
            "g": self.g.state_dict(),
            "d_ema": None if self.d_ema is None else self.d_ema.state_dict(),
            "g_ema": None if self.g_ema is None else self.g_ema.state_dict(),
            "d_optimizer": self.d_update.state_dict(),
            "g_optimizer": self.g_update.state_dict(),
            "generators": [generator.get_state() for generator in self.generators],
            "loader_epochs": [
                int(getattr(m.loader, "epochs_started", self.epochs)) for m in self.members
            ],
            "stats": [dict(m.stats) for m in self.members],
            "epochs": self.epochs,
            "global_step": self.global_step,
            "train_images_per_member": self.train_images // size,
            "fit_seconds_per_member": self.fit_seconds / size,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any], indices: Sequence[int] | None = None) -> None:
        """Continue from ``state_dict()`` of a group built from the same configs: member i of
        this group takes saved member ``indices[i]`` (default: all, in order; a subset when
        some saved members need no more training). Raises ConfigError when it does not fit."""
        if not isinstance(state, dict) or state.get("format") != GROUP_STATE_FORMAT:
            raise ConfigError(
                "members: the group checkpoint was written by another gendisc version "
                f"(format {state.get('format') if isinstance(state, dict) else '?'}, "
                f"this one reads {GROUP_STATE_FORMAT}); start the group afresh"
            )
        size = int(state["size"])
        indices = list(range(size)) if indices is None else [int(i) for i in indices]
        if len(indices) != len(self.members) or not all(0 <= i < size for i in indices):
            raise ConfigError(
                f"members: members {indices} of a group checkpoint of {size} do not make this "
                f"group of {len(self.members)}"
            )
        if state["rng"] != self.rng or bool(state["capturable"]) != self.capturable:
            raise ConfigError(
                f"members: the group checkpoint was written with rng={state['rng']}, "
                f"capturable/graphs={state['capturable']}; resume with the same "
                "hydra.launcher.rng and hydra.launcher.graphs"
            )
        if len(indices) != size and self.rng == "shared" and int(state["epochs"]) > 0:
            log.info("members: a subset of a rng=shared group continues with new shared draws")

        def pick(value: Any) -> Any:
            return _select_members(value, size, indices)

        self.d.load_state_dict(pick(state["d"]))
        self.g.load_state_dict(pick(state["g"]))
        for name, ema, updater in (
            ("d_ema", self.d_ema, self.d_ema_update),
            ("g_ema", self.g_ema, self.g_ema_update),
        ):
            if (ema is None) != (state[name] is None):
                raise ConfigError(f"members: the group checkpoint's {name} does not fit the model")
            if ema is not None:
                ema.load_state_dict(pick(state[name]))
                if isinstance(updater, TensorEMA):
                    updater.load()
        self.d_update.load_state_dict(pick(state["d_optimizer"]))
        self.g_update.load_state_dict(pick(state["g_optimizer"]))
        generators = state["generators"]
        if self.rng == "member":
            generators = [generators[i] for i in indices]
        for generator, saved in zip(self.generators, generators, strict=True):
            generator.set_state(saved)
        for member, i in zip(self.members, indices, strict=True):
            if hasattr(member.loader, "epochs_started"):
                member.loader.epochs_started = int(state["loader_epochs"][i])
            member.stats = dict(state["stats"][i])
        self.epochs = int(state["epochs"])
        self.global_step = int(state["global_step"])
        self.train_images = int(state["train_images_per_member"]) * len(self.members)
        self.fit_seconds = float(state["fit_seconds_per_member"]) * len(self.members)
        self.stopped_early = False

    # ------------------------------------------------------------------------------ results
    @torch.no_grad()
    def unstack(self) -> list[SSLGANModule]:
        """Copy member i's weights, EMA and batch-norm statistics into its own module (on
        ``device``) and return the modules, ready to be tested like single runs."""
        modules = [m.module for m in self.members]
        self.d.unstack_into([m.discriminator for m in modules])
        self.g.unstack_into([m.generator for m in modules])
        for updater in (self.d_ema_update, self.g_ema_update):
            if isinstance(updater, TensorEMA):
                updater.sync()
        for ema, attr in ((self.d_ema, "d_ema"), (self.g_ema, "g_ema")):
            if ema is None:
                continue
            ema.shadow.unstack_into([getattr(m, attr).shadow for m in modules])
            for module in modules:
                target = getattr(module, attr)
                target.num_updates.fill_(ema.updates())
                target._count = None
        return modules

    def seconds_per_member(self) -> float:
        """The group's training time divided among its members."""
        return self.fit_seconds / len(self.members) if self.members else math.nan
