"""One interface for drawing images from any trained generative module.

Callbacks, metrics, the ``gendisc-sample`` CLI and the augmented classifier use a
:class:`Sampler`: ``sampler(z, y) -> images in [-1, 1]``, ``latents(n, seed)`` and
``labels(n)``. Modules of this package provide ``sampler()`` (the GAN uses its EMA generator
when it has one, the VAE decodes the Bernoulli/Gaussian mean); any other module with a
``generator`` net (e.g. the semi-supervised GAN) is adapted by :func:`sampler_for`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from gendisc.errors import ConfigError


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode (batch norm on running statistics, no noise/dropout) and
    restore their previous modes."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


class Sampler:
    """Draws images from a generative net.

    Args:
        decode: ``(z, y) -> images in [-1, 1]`` (y is None for unconditional models).
        latent: ``(n, generator, device) -> n latents`` from the net's prior.
        nets: modules switched to eval mode while sampling.
        num_classes: classes of a class-conditional model, 0 for an unconditional one.
        device: where ``decode`` runs.
    """

    def __init__(
        self,
        decode: Callable[[Tensor, Tensor | None], Tensor],
        latent: Callable[[int, torch.Generator | None, torch.device], Tensor],
        nets: list[nn.Module],
        num_classes: int,
        device: torch.device | str,
    ) -> None:
        self.decode = decode
        self.latent = latent
        self.nets = nets
        self.num_classes = int(num_classes)
        self.device = torch.device(device)

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def latents(self, n: int, seed: int | None = None) -> Tensor:
        """``n`` latents on the sampling device; with ``seed`` drawn on the CPU from a seeded
        generator (the same on every device), else from the device's global random state."""
        if seed is None:
            return self.latent(n, None, self.device)
        generator = torch.Generator().manual_seed(seed)
        return self.latent(n, generator, torch.device("cpu")).to(self.device)

    def labels(self, n: int) -> Tensor | None:
        """Class-balanced labels 0, 1, ..., K-1, 0, 1, ... (None when unconditional)."""
        if not self.conditional:
            return None
        return torch.arange(n, device=self.device) % self.num_classes

    @torch.no_grad()
    def __call__(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if self.conditional and y is None:
            raise ConfigError("this generator is class-conditional: give the labels to sample")
        if not self.conditional and y is not None:
            raise ConfigError("this generator is unconditional: it cannot sample given labels")
        with eval_mode(*self.nets):
            z = z.to(self.device)
            y = y.to(self.device) if y is not None else None
            return self.decode(z, y).clamp(-1.0, 1.0)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: Tensor | None = None,
        seed: int | None = None,
        batch_size: int = 1000,
    ) -> tuple[Tensor, Tensor | None]:
        """``n`` images (on the sampling device) and their labels (balanced unless given)."""
        if labels is None:
            labels = self.labels(n)
        elif len(labels) != n:
            raise ValueError(f"{len(labels)} labels given for {n} samples")
        z = self.latents(n, seed)
        chunks = []
        for start in range(0, n, batch_size):
            y = labels[start : start + batch_size] if labels is not None else None
            chunks.append(self(z[start : start + batch_size], y))
        images = torch.cat(chunks) if chunks else z.new_zeros((0,))
        return images, labels


def generator_sampler(
    generator: nn.Module, device: torch.device | str, shadow: nn.Module | None = None
) -> Sampler:
    """Sampler over a generator net of ``gendisc.nets`` (``forward(z, y)``, ``sample_latent``);
    ``shadow`` (e.g. its EMA copy) is used in its place when given."""
    net = shadow if shadow is not None else generator
    num_classes = int(getattr(generator, "num_classes", 0))

    def decode(z: Tensor, y: Tensor | None) -> Tensor:
        return net(z, y) if num_classes else net(z)

    def latent(n: int, rng: torch.Generator | None, device: torch.device) -> Tensor:
        return generator.sample_latent(n, device=device, generator=rng)

    return Sampler(decode, latent, [net], num_classes, device)


def sampler_for(module: nn.Module) -> Sampler:
    """The module's own ``sampler()``, else a sampler over its ``generator`` net."""
    if hasattr(module, "sampler"):
        return module.sampler()
    generator = getattr(module, "generator", None)
    if isinstance(generator, nn.Module) and hasattr(generator, "sample_latent"):
        device = next(generator.parameters()).device
        return generator_sampler(generator, device)
    raise ConfigError(
        f"{type(module).__name__} has no generator to sample from: use a checkpoint of "
        "model=gan, model=vae or model=ssl_gan."
    )
