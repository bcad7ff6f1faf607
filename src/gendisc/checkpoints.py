"""Reading checkpoints, and the run configs and modules stored in them: the one place that
calls ``torch.load``.

Every read is ``torch.load(..., weights_only=True)``: gendisc checkpoints hold only tensors and
plain Python values, so reading one never runs code from the file. The run config stored in a
checkpoint is checked by :mod:`gendisc.trusted` before anything is built from it: only trusted
``_target_`` values are instantiated. Every failure becomes one
:class:`~gendisc.errors.ConfigError` that names the file and the setting it came from.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import hydra
import torch
from lightning import LightningModule
from omegaconf import DictConfig, OmegaConf

from gendisc.data.protocol import migrate_stored_validation
from gendisc.errors import ConfigError
from gendisc.trusted import check_trusted
from gendisc.utils.config import migrate_renamed_keys

__all__ = [
    "CONFIG_KEY",
    "check_checkpoint",
    "load_checkpoint",
    "load_module",
    "load_run_config",
    "module_from_checkpoint",
    "read_checkpoint_state",
    "restore_weights",
    "run_config",
]

log = logging.getLogger(__name__)

# the key under which every gendisc checkpoint stores its resolved run config
CONFIG_KEY = "gendisc_config"

_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _first_line(error: BaseException, limit: int = 160) -> str:
    """The error's type and first sentence, for a one-line message."""
    text = str(error).strip().split("\n")[0].split(". ")[0][:limit]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def load_checkpoint(path: str | Path, setting: str) -> dict[str, Any]:
    """The contents of the checkpoint file ``path`` (given by the option ``setting``), on CPU.

    Loads with ``weights_only=True`` only. Raises ConfigError naming the file and ``setting`` for a
    missing file, an unreadable or corrupt one, and one that needs arbitrary Python objects
    unpickled (written by something other than this gendisc version).
    """
    path = Path(path).expanduser()
    where = f"{setting}={path}"
    if not path.is_file():
        raise ConfigError(
            f"{where}: no such file. Give the .ckpt of an earlier run, e.g. "
            "<run dir>/checkpoints/last.ckpt."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        unsafe = _UNSAFE_GLOBAL.search(str(error))
        if isinstance(error, pickle.UnpicklingError) and unsafe:
            raise ConfigError(
                f"{where}: the file stores the Python object {unsafe.group(1)}, which gendisc "
                "does not unpickle (that could run code from the file): it was not written by "
                "this gendisc version. Re-save it holding only tensors and plain values (lists, "
                "dicts, numbers, strings), or train the run again."
            ) from error
        reason = "not a torch file" if isinstance(error, pickle.UnpicklingError) else None
        raise ConfigError(
            f"{where}: cannot read this checkpoint ({reason or _first_line(error)}). The file is "
            "damaged or incomplete (an interrupted copy or save?): copy it again, or use another "
            "checkpoint of the run (<run dir>/checkpoints/)."
        ) from error
    if not isinstance(checkpoint, dict):
        raise ConfigError(
            f"{where}: the file holds a {type(checkpoint).__name__}, not a checkpoint (a dict). "
            "Give a .ckpt written by gendisc-train."
        )
    return checkpoint


def run_config(checkpoint: dict[str, Any], path: str | Path, setting: str) -> DictConfig:
    """The config a checkpoint's run was trained with (stored in it by ``gendisc-train``), once
    every ``_target_`` in it is trusted (:func:`gendisc.trusted.check_trusted`): what this
    returns may be instantiated."""
    if CONFIG_KEY not in checkpoint:
        raise ConfigError(
            f"{setting}={path} holds no gendisc config: was it written by gendisc-train?"
        )
    stored = checkpoint[CONFIG_KEY]
    if not isinstance(stored, dict):
        raise ConfigError(
            f"{setting}={path}: its {CONFIG_KEY} is a {type(stored).__name__}, not a config "
            "(a dict): was it written by gendisc-train?"
        )
    check_trusted(stored, f"{setting}={path}")
    if isinstance(stored.get("model"), dict):
        renamed = migrate_renamed_keys(stored["model"])  # written before an option's rename
        if renamed:
            log.info("%s=%s: stored options renamed: %s", setting, path, ", ".join(renamed))
    if isinstance(stored.get("data"), dict) and migrate_stored_validation(stored["data"]):
        log.info("%s=%s: stored before issue 22: data.val_size=official", setting, path)
    return OmegaConf.create(stored)


def load_run_config(path: str | Path, setting: str = "ckpt_path") -> DictConfig:
    """The run config stored in the checkpoint file ``path`` (reads the file)."""
    return run_config(load_checkpoint(path, setting), path, setting)


def check_checkpoint(path: str | Path, setting: str) -> dict[str, Any]:
    """The checkpoint file ``path``, read weights-only, once the run config it stores (if any)
    is trusted: for files whose config is built from later (``model.generator_ckpt`` when
    fitting starts), checked when the module is built so that a refused file stops a run
    before it writes anything."""
    checkpoint = load_checkpoint(path, setting)
    if CONFIG_KEY in checkpoint:
        run_config(checkpoint, Path(path).expanduser(), setting)
    return checkpoint


def read_checkpoint_state(
    path: str | Path, setting: str = "model.init_from"
) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint file (or of a bare state dict file): only
    its tensors are used, nothing is built from its stored config."""
    checkpoint = load_checkpoint(path, setting)
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(
            f"{setting}={Path(path).expanduser()}: the file holds no state_dict of tensors."
        )
    return state


def restore_weights(
    module: LightningModule, checkpoint: dict[str, Any], path: str | Path, setting: str
) -> None:
    """Load a checkpoint's weights into ``module`` as Lightning does when it restores a module:
    its ``on_load_checkpoint`` hook, then ``load_state_dict`` (strict unless the module says
    otherwise)."""
    if "state_dict" not in checkpoint:
        raise ConfigError(f"{setting}={path}: the checkpoint has no state_dict (no weights).")
    module.on_load_checkpoint(checkpoint)
    try:
        module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    except RuntimeError as error:
        raise ConfigError(
            f"{setting}={path}: its weights do not fit the model rebuilt from its config "
            f"({_first_line(error)}). It was written by another gendisc version: evaluate it "
            "with that version, or train the run again."
        ) from error


def module_from_checkpoint(
    checkpoint: dict[str, Any],
    path: str | Path,
    setting: str = "ckpt_path",
    device: str | torch.device = "cpu",
) -> LightningModule:
    """The LightningModule of a loaded gendisc-train checkpoint, weights loaded, in eval mode.

    The module is rebuilt from the run config stored in the checkpoint, sized with the
    hyper-parameters saved with it (``in_shape``, ``num_classes``), so no data is read.
    """
    cfg = run_config(checkpoint, path, setting)
    hparams = checkpoint.get("hyper_parameters", {})
    missing = [k for k in ("in_shape", "num_classes") if k not in hparams]
    if missing:
        raise ConfigError(f"{setting}={path}: the checkpoint lacks hyper-parameters {missing}")
    module = hydra.utils.instantiate(
        cfg.model,
        in_shape=list(hparams["in_shape"]),
        num_classes=int(hparams["num_classes"]),
        class_names=hparams.get("class_names"),
        _convert_="all",
    )
    restore_weights(module, checkpoint, path, setting)
    return module.to(device).eval()


def load_module(
    path: str | Path, device: str | torch.device = "cpu", setting: str = "ckpt_path"
) -> LightningModule:
    """The LightningModule of the gendisc-train checkpoint file ``path`` (read once)."""
    return module_from_checkpoint(load_checkpoint(path, setting), path, setting, device)
