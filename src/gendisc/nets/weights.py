"""Matching a weights file's tensors to a net's by name and shape (transfer learning and
pretrained backbones)."""

from __future__ import annotations

from collections import Counter

from torch import Tensor

__all__ = ["match_weights"]


def _owner_prefixes(own: dict[str, Tensor], state: dict[str, Tensor]) -> Counter[str]:
    """For each owner prefix P (``net.``, ``d_ema.shadow.``, ``""`` ...), how many of the
    file's keys P + k name a net key k with the same shape."""
    counts: Counter[str] = Counter()
    for key, value in state.items():
        parts = key.split(".")
        for i in range(len(parts)):
            name = ".".join(parts[i:])
            if name in own and tuple(own[name].shape) == tuple(value.shape):
                counts[".".join(parts[:i]) + ("." if i else "")] += 1
    return counts


def match_weights(
    own: dict[str, Tensor], state: dict[str, Tensor], skip: tuple[str, ...] = ()
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """``(update, shape_mismatch, missing)`` for a net's ``own`` state dict and a file's
    ``state``. The file's keys are the net's under one owner prefix (``net.``,
    ``discriminator.``, ``encoder.``, none ...): the prefix that names the most net tensors of
    the right shape, a moving average's (``...ema...``) on a tie, since its weights are the ones
    a run evaluated with. Net keys starting with one of ``skip`` are left out."""
    wanted = {name: tensor for name, tensor in own.items() if not name.startswith(skip)}
    counts = _owner_prefixes(wanted, state)
    if not counts:
        return {}, [], list(wanted)
    prefix = max(counts, key=lambda p: (counts[p], "ema" in p))
    update: dict[str, Tensor] = {}
    shape_mismatch, missing = [], []
    for name, tensor in wanted.items():
        source = state.get(prefix + name)
        if source is None:
            missing.append(name)
        elif tuple(source.shape) != tuple(tensor.shape):
            shape_mismatch.append(f"{name} {tuple(source.shape)}->{tuple(tensor.shape)}")
        else:
            update[name] = source
    return update, shape_mismatch, missing
