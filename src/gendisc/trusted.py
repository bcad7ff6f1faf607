"""Which ``_target_`` values gendisc instantiates from a config that came out of a file.

A checkpoint stores the run config it was trained with (``gendisc_config``); ``gendisc-eval``,
``gendisc-sample``, ``model.m1.ckpt`` and ``model.generator_ckpt`` rebuild modules from it with
``hydra.utils.instantiate``, which calls whatever ``_target_`` names. Loading the file
weights-only stops code in its pickle, not code named by its config, so every stored config is
checked here first: each ``_target_`` at any depth (``_partial_`` ones and those inside lists
included) must be trusted, else :class:`UntrustedConfigError` is raised before anything is
built. Configs the user types (command line, ``conf/``) are not checked: they are the user's.

A target is trusted when it is

- one that ``conf/`` names (the configs gendisc ships: its modules, nets, data, callbacks,
  and the third-party classes they use, e.g. ``torch.optim.Adam``, Lightning's loggers);
- a class, not a function, of one of the families in :data:`TRUSTED_FAMILIES`;
- named in the environment variable ``GENDISC_TRUSTED_TARGETS`` (comma-separated; a name ending
  in ``.`` trusts everything under it): the user's own classes, e.g. ``mylab.models.``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hydra.utils import get_class

from gendisc.errors import ConfigError
from gendisc.utils.config import PROJECT_ROOT

__all__ = [
    "TRUSTED_ENV",
    "TRUSTED_FAMILIES",
    "UntrustedConfigError",
    "check_trusted",
    "conf_targets",
    "is_trusted",
    "targets",
]

TRUSTED_ENV = "GENDISC_TRUSTED_TARGETS"

# module prefix -> the base classes a target under it must subclass, and why building one from a
# file is safe. Only classes qualify: a function (e.g. a downloader) could write anywhere.
TRUSTED_FAMILIES: dict[str, tuple[tuple[str, ...], str]] = {
    "gendisc.": (
        (
            "torch.nn.Module",
            "lightning.pytorch.LightningModule",
            "lightning.pytorch.LightningDataModule",
            "torch.optim.Optimizer",
        ),
        "gendisc's nets, modules, data modules and optimisers compute; the files they read "
        "(checkpoints, datasets) go through these same checks",
    ),
    "torch.optim.": (
        ("torch.optim.Optimizer", "torch.optim.lr_scheduler.LRScheduler"),
        "optimisers and schedulers hold parameters and numbers only",
    ),
    "torch.nn.": (("torch.nn.Module",), "layers compute only"),
    "torchmetrics.": (("torchmetrics.Metric",), "metrics compute only"),
    "lightning.pytorch.": (
        ("lightning.pytorch.Callback", "lightning.pytorch.loggers.Logger"),
        "run configs name Lightning callbacks and loggers; gendisc never attaches one built "
        "from a file's config to a trainer (gendisc-eval takes them from its own config)",
    ),
}


class UntrustedConfigError(ConfigError):
    """A config read from a file names something gendisc does not build from files."""


def targets(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``(key, _target_ value)`` in a plain config (dicts and lists, any depth); the key
    is the dotted path of the dict holding the target, e.g. ``model.optimizer``,
    ``model.layers[2]``."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path or "<root>", node["_target_"]
        for key, value in node.items():
            yield from targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            yield from targets(value, f"{path}[{index}]")


def interpolations(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string holding an OmegaConf interpolation (``${...}``) in a plain config: stored
    run configs are resolved when written, and a resolver (``oc.decode``) could make a target
    appear only when the config is used."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from interpolations(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            yield from interpolations(value, f"{path}[{index}]")
    elif isinstance(node, str) and "${" in node:
        yield path, node


@functools.cache
def conf_targets(conf_dir: Path = PROJECT_ROOT / "conf") -> frozenset[str]:
    """Every ``_target_`` that a YAML file under ``conf_dir`` names (read once)."""
    found: set[str] = set()
    for file in sorted(conf_dir.rglob("*.yaml")):
        content = yaml.safe_load(file.read_text())
        found.update(str(value) for _, value in targets(content) if isinstance(value, str))
    return frozenset(found)


def _user_trusted(name: str) -> bool:
    entries = [e.strip() for e in os.environ.get(TRUSTED_ENV, "").split(",") if e.strip()]
    return any(name == e or (e.endswith(".") and name.startswith(e)) for e in entries)


@functools.cache
def _in_family(name: str) -> bool:
    """Whether ``name`` is a class of a trusted family (imports only modules of that family)."""
    for prefix, (bases, _) in TRUSTED_FAMILIES.items():
        if not name.startswith(prefix):
            continue
        try:
            cls = get_class(name)  # raises for a function or a missing name
        except Exception:
            return False
        return any(issubclass(cls, get_class(base)) for base in bases)
    return False


def is_trusted(name: Any) -> bool:
    """Whether gendisc instantiates ``_target_: name`` from a config read from a file."""
    if not isinstance(name, str) or not name or name != name.strip():
        return False
    return name in conf_targets() or _user_trusted(name) or _in_family(name)


def check_trusted(config: Any, source: str) -> None:
    """Refuse a config read from a file (``source``, e.g. ``ckpt_path=<file>``) that names an
    untrusted ``_target_`` or holds an interpolation; one error lists every offending key."""
    refused = [
        f"{key}._target_={value!r}" for key, value in targets(config) if not is_trusted(value)
    ]
    hidden = [f"{key}={value!r}" for key, value in interpolations(config)]
    problems = []
    if refused:
        problems.append(
            f"names {'; '.join(refused)}, which gendisc does not build from a file (only "
            "gendisc's own classes and the third-party classes its configs use)"
        )
    if hidden:
        problems.append(
            f"holds the interpolation {'; '.join(hidden)} (gendisc-train stores run configs "
            "resolved, so another program wrote it)"
        )
    if problems:
        raise UntrustedConfigError(
            f"{source}: its stored config {' and '.join(problems)}. Nothing was built. Use a "
            "checkpoint whose config uses gendisc's own targets and plain values (re-save it so, "
            "or train the run again); if you trust this file and the class, name it in "
            f"{TRUSTED_ENV}. Configs typed on the command line or in conf/ are trusted as before."
        )
