"""Transfer learning: copy matching backbone weights from another run's checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from gendisc.checkpoints import read_checkpoint_state
from gendisc.errors import ConfigError

log = logging.getLogger(__name__)

# Parts of a classifier net that are not backbone: they depend on the task, not the data.
HEAD_PREFIXES = ("head.", "minibatch_disc.")


@dataclass
class TransferReport:
    """What ``load_backbone_weights`` copied and what it left at its initial value."""

    source: str
    loaded: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"init_from {self.source}: loaded {len(self.loaded)} backbone tensors"]
        if self.shape_mismatch:
            lines.append(f"  shape differs, kept initial: {', '.join(self.shape_mismatch)}")
        if self.missing:
            lines.append(f"  not in checkpoint, kept initial: {', '.join(self.missing)}")
        return "\n".join(lines)


def _candidates(key: str) -> list[str]:
    """Names a checkpoint key may have in a bare net: itself and with leading owners stripped."""
    parts = key.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def load_backbone_weights(net: nn.Module, path: str | Path) -> TransferReport:
    """Copy every backbone tensor of ``net`` that a checkpoint has under the same name and shape.

    A checkpoint key matches a net key when it equals it after dropping leading owner names
    (``net.``, ``discriminator.``, ``encoder.`` ...). EMA copies (keys containing ``ema``) are
    preferred when the checkpoint has them, since they are the weights the run evaluated with.
    """
    state = read_checkpoint_state(path)
    report = TransferReport(source=str(path))
    by_name: dict[str, Tensor] = {}
    for key in sorted(state, key=lambda k: "ema" in k):  # EMA last, so it wins
        for name in _candidates(key):
            by_name[name] = state[key]
    own = net.state_dict()
    update = {}
    for name, tensor in own.items():
        if name.startswith(HEAD_PREFIXES):
            continue
        source = by_name.get(name)
        if source is None:
            report.missing.append(name)
        elif source.shape != tensor.shape:
            report.shape_mismatch.append(f"{name} {tuple(source.shape)}->{tuple(tensor.shape)}")
        else:
            update[name] = source
            report.loaded.append(name)
    if not update:
        raise ConfigError(
            f"model.init_from={path}: no backbone weight matches this model by name and shape "
            f"(model has e.g. {list(own)[:3]}; checkpoint has e.g. {list(state)[:3]}). Use a "
            "checkpoint of a run with the same backbone and image shape."
        )
    net.load_state_dict(update, strict=False)
    log.info(report.summary())
    return report
