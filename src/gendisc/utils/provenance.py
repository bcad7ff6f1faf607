"""Where a result came from: code version, libraries, machine and settings of a run.

``run_provenance`` gives the ``run/*`` entries of metrics.json. Git is asked with a short
timeout in the project root; a missing git binary or a project outside a git checkout gives
``run/git_sha = "unknown"`` and ``run/git_dirty = False`` instead of an error.
"""

from __future__ import annotations

import importlib.metadata
import socket
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from gendisc.utils.config import PROJECT_ROOT

UNKNOWN = "unknown"
GIT_TIMEOUT_S = 5.0


def _git(root: Path, *args: str, timeout: float) -> str | None:
    """stdout of ``git <args>`` run in ``root``; None when git is missing, fails or hangs."""
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def git_state(root: Path = PROJECT_ROOT, timeout: float = GIT_TIMEOUT_S) -> dict[str, Any]:
    """``run/git_sha`` (HEAD, 40 hex) and ``run/git_dirty`` (tracked files changed) of ``root``.

    Only a checkout whose top level is ``root`` itself counts (an installed copy of gendisc that
    lies inside some other repository is not that repository's code): otherwise "unknown"/False.
    """
    unknown = {"run/git_sha": UNKNOWN, "run/git_dirty": False}
    root = Path(root)
    top = _git(root, "rev-parse", "--show-toplevel", timeout=timeout)
    if top is None or Path(top.strip()).resolve() != root.resolve():
        return unknown
    sha = (_git(root, "rev-parse", "HEAD", timeout=timeout) or "").strip()
    if len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
        return unknown  # e.g. a repository without commits
    status = _git(root, "status", "--porcelain", "--untracked-files=no", timeout=timeout)
    return {"run/git_sha": sha, "run/git_dirty": bool(status and status.strip())}


def package_version(name: str) -> str:
    """Installed version of a distribution, or "unknown"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN


def device_name(device: torch.device | str) -> str:
    """ "cpu", the CUDA device's name (e.g. "NVIDIA H200"), or the device type ("mps")."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return device.type


def now_iso() -> str:
    """The local time in ISO 8601 with its UTC offset, to the second."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def run_provenance(
    trainer: Any | None = None,
    started_at: str | None = None,
    git: dict[str, Any] | None = None,
    root: Path = PROJECT_ROOT,
) -> dict[str, Any]:
    """The ``run/*`` entries of metrics.json.

    Args:
        trainer: a Lightning Trainer: ``run/device`` (its root device), ``run/precision`` and
            ``run/world_size`` come from it (without one: "cpu", "unknown", 1).
        started_at: when the run started (ISO 8601); default: now.
        git: ``git_state()`` taken earlier (at the start of the run, before the code could
            change); default: asked now.
        root: the project root, where git is asked.
    """
    import lightning

    device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
    return {
        **(git if git is not None else git_state(root)),
        "run/gendisc_version": package_version("gendisc"),
        "run/torch_version": str(torch.__version__),
        "run/lightning_version": str(lightning.__version__),
        "run/device": device_name(device),
        "run/threads": torch.get_num_threads(),
        "run/hostname": socket.gethostname(),
        "run/started_at": started_at or now_iso(),
        "run/precision": str(trainer.precision) if trainer is not None else UNKNOWN,
        "run/world_size": int(trainer.world_size) if trainer is not None else 1,
    }
