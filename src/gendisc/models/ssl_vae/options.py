"""The options of model=ssl_vae, one sub-config per idea, each read and checked here and only
here (conf/model/ssl_vae.yaml documents every option once):

- ``model.m2``: M2 itself, what every variant shares: the size of z, the likelihood
  p(x | y, z), the weight alpha of the labeled cross-entropy and the Monte Carlo draws;
- ``model.m1``: the M1 front end (M1+M2): the checkpoint of a frozen unconditional VAE;
- ``model.auxiliary``: the auxiliary variable a of ADGM / SDGM.

Every error is one ConfigError naming the option by its full name (``model.m2.likelihood.kind``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gendisc.errors import ConfigError

__all__ = [
    "AUXILIARY_KINDS",
    "AlphaOptions",
    "AuxiliaryOptions",
    "LikelihoodOptions",
    "M1Options",
    "M2Options",
    "read_options",
]

AUXILIARY_KINDS = ("none", "adgm", "sdgm")


def _choice(where: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}={value!r}: choose one of {list(choices)}")


@dataclass(frozen=True)
class LikelihoodOptions:
    """``model.m2.likelihood``: p(x | y, z) (M1+M2: p(z1 | y, z))."""

    kind: str = "bernoulli"
    binarize: bool = False
    sigma: float | None = None
    variance: str = "shared"

    def check(self, where: str) -> None:
        _choice(f"{where}.kind", self.kind, ("bernoulli", "gaussian"))
        _choice(f"{where}.variance", self.variance, ("shared", "decoded"))
        if self.variance == "decoded" and (self.kind != "gaussian" or self.sigma):
            raise ConfigError(
                f"{where}.variance=decoded needs {where}.kind=gaussian and {where}.sigma=null "
                "(the decoder outputs the variance)"
            )

    @property
    def decoded_variance(self) -> bool:
        """Whether the decoder outputs a log-variance per dimension beside the mean."""
        return self.variance == "decoded"


@dataclass(frozen=True)
class AlphaOptions:
    """``model.m2.alpha``: the weight of the labeled cross-entropy."""

    scale: float = 0.1
    value: float | None = None

    def check(self, where: str) -> None:
        if self.scale < 0 or (self.value is not None and self.value < 0):
            raise ConfigError(
                f"{where}.scale={self.scale}, {where}.value={self.value}: the classification "
                "weight must be >= 0"
            )


@dataclass(frozen=True)
class M2Options:
    """``model.m2``: the size of z, the likelihood, alpha and the Monte Carlo draws."""

    latent_dim: int = 16
    likelihood: LikelihoodOptions = field(default_factory=LikelihoodOptions)
    alpha: AlphaOptions = field(default_factory=AlphaOptions)
    mc_samples: int = 1

    def check(self, where: str) -> None:
        self.likelihood.check(f"{where}.likelihood")
        self.alpha.check(f"{where}.alpha")
        if self.latent_dim < 1 or self.mc_samples < 1:
            raise ConfigError(
                f"{where}.latent_dim={self.latent_dim}, {where}.mc_samples={self.mc_samples}: "
                "both must be >= 1"
            )


@dataclass(frozen=True)
class M1Options:
    """``model.m1``: the frozen unconditional VAE M1 whose latent code z1 M2 models."""

    ckpt: str | None = None
    features: str = "sample"

    def check(self, where: str) -> None:
        _choice(f"{where}.features", self.features, ("sample", "mean"))


@dataclass(frozen=True)
class AuxiliaryOptions:
    """``model.auxiliary``: the auxiliary variable a (ADGM, SDGM) or none (M2)."""

    kind: str = "none"
    dim: int = 16
    eval_samples: int = 0

    def check(self, where: str) -> None:
        _choice(f"{where}.kind", self.kind, AUXILIARY_KINDS)
        if self.dim < 1 or self.eval_samples < 0:
            raise ConfigError(
                f"{where}.dim={self.dim}, {where}.eval_samples={self.eval_samples}: need "
                "dim >= 1 and eval_samples >= 0"
            )

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


Options = TypeVar(
    "Options", M2Options, M1Options, AuxiliaryOptions, LikelihoodOptions, AlphaOptions
)


def _read(cls: type[Options], value: Mapping[str, Any] | None, where: str) -> Options:
    """A sub-config's dataclass from its mapping (missing keys: the defaults; nested
    sub-configs read alike); an unknown key or a value that is not a mapping is a ConfigError."""
    if value is None:
        return cls()
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where}={value!r}: {where} is a group of options "
            f"({', '.join(f.name for f in dataclasses.fields(cls))}), e.g. "
            f"{where}.{dataclasses.fields(cls)[0].name}=..."
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; the options: {list(fields)}")
    kwargs = {}
    for name, item in value.items():
        nested = fields[name].default_factory
        kwargs[name] = _read(nested, item, f"{where}.{name}") if callable(nested) else item
    return cls(**kwargs)


def read_options(
    m2: Mapping[str, Any] | None,
    m1: Mapping[str, Any] | None,
    auxiliary: Mapping[str, Any] | None,
) -> tuple[M2Options, M1Options, AuxiliaryOptions]:
    """The three sub-configs read and checked, alone and together."""
    options = (
        _read(M2Options, m2, "model.m2"),
        _read(M1Options, m1, "model.m1"),
        _read(AuxiliaryOptions, auxiliary, "model.auxiliary"),
    )
    for sub, where in zip(options, ("model.m2", "model.m1", "model.auxiliary"), strict=True):
        sub.check(where)
    m2_options, m1_options, _ = options
    likelihood = m2_options.likelihood
    if likelihood.binarize and likelihood.kind != "bernoulli" and not m1_options.ckpt:
        raise ConfigError(
            "model.m2.likelihood.binarize=true needs model.m2.likelihood.kind=bernoulli "
            "(or model.m1.ckpt)"
        )
    if m1_options.ckpt and likelihood.kind != "gaussian":
        raise ConfigError(
            "model.m1.ckpt (M1+M2) models M1's continuous latent code: set "
            "model.m2.likelihood.kind=gaussian"
        )
    return options
