"""Transfer learning: copy matching backbone weights from another run's checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from gendisc.checkpoints import read_checkpoint_state
from gendisc.errors import ConfigError
from gendisc.nets.classifiers import HEAD_PREFIXES
from gendisc.nets.weights import match_weights

log = logging.getLogger(__name__)


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


def load_backbone_weights(net: nn.Module, path: str | Path) -> TransferReport:
    """Copy every backbone tensor of ``net`` that a checkpoint has under the same name and shape
    (``gendisc.nets.weights.match_weights``: leading owner names such as ``net.`` or
    ``discriminator.`` dropped, EMA copies preferred)."""
    state = read_checkpoint_state(path)
    own = net.state_dict()
    update, shape_mismatch, missing = match_weights(own, state, skip=HEAD_PREFIXES)
    report = TransferReport(
        source=str(path), loaded=list(update), shape_mismatch=shape_mismatch, missing=missing
    )
    if not update:
        raise ConfigError(
            f"model.init_from={path}: no backbone weight matches this model by name and shape "
            f"(model has e.g. {list(own)[:3]}; checkpoint has e.g. {list(state)[:3]}). Use a "
            "checkpoint of a run with the same backbone and image shape."
        )
    net.load_state_dict(update, strict=False)
    log.info(report.summary())
    return report
