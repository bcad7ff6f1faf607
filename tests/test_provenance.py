"""run/* provenance: git state of the project root (with fallbacks), libraries, device, settings."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import time
from datetime import datetime
from pathlib import Path

import lightning
import pytest
import torch

from gendisc.utils.provenance import git_state, run_provenance

KEYS = {
    "run/git_sha",
    "run/git_dirty",
    "run/gendisc_version",
    "run/torch_version",
    "run/lightning_version",
    "run/device",
    "run/threads",
    "run/hostname",
    "run/started_at",
    "run/precision",
    "run/world_size",
}
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
}


def git(root: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    return result.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git checkout with one commit of one file."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / "code.py").write_text("x = 1\n")
    git(root, "add", "code.py")
    git(root, "commit", "-q", "-m", "first")
    return root


def test_git_state_of_a_clean_then_changed_checkout(repo):
    sha = git(repo, "rev-parse", "HEAD")
    assert re.fullmatch(r"[0-9a-f]{40}", sha)
    assert git_state(repo) == {"run/git_sha": sha, "run/git_dirty": False}
    (repo / "notes.txt").write_text("untracked files do not make the code dirty")
    assert git_state(repo)["run/git_dirty"] is False
    (repo / "code.py").write_text("x = 2\n")
    assert git_state(repo) == {"run/git_sha": sha, "run/git_dirty": True}
    git(repo, "commit", "-q", "-am", "second")
    state = git_state(repo)
    assert state["run/git_sha"] != sha and state["run/git_dirty"] is False


def test_outside_a_checkout_the_state_is_unknown(tmp_path, repo):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_state(plain) == {"run/git_sha": "unknown", "run/git_dirty": False}
    # a folder inside some other checkout is not that checkout's project root
    inner = repo / "installed"
    inner.mkdir()
    assert git_state(inner) == {"run/git_sha": "unknown", "run/git_dirty": False}
    empty = tmp_path / "empty"  # a repository without commits has no HEAD
    empty.mkdir()
    git(empty, "init", "-q")
    assert git_state(empty) == {"run/git_sha": "unknown", "run/git_dirty": False}


def test_missing_or_hanging_git_gives_unknown_quickly(repo, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # no git on the PATH
    assert git_state(repo) == {"run/git_sha": "unknown", "run/git_dirty": False}
    fake = bin_dir / "git"  # a git that hangs (e.g. on a stale network file system)
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    start = time.perf_counter()
    assert git_state(repo, timeout=0.3) == {"run/git_sha": "unknown", "run/git_dirty": False}
    assert time.perf_counter() - start < 5


def test_run_provenance_keys_and_formats(repo):
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    record = run_provenance(trainer, started_at="2024-05-01T12:00:00+02:00", root=repo)
    assert set(record) == KEYS
    assert record["run/git_sha"] == git(repo, "rev-parse", "HEAD")
    assert record["run/git_dirty"] is False
    assert record["run/precision"] == "bf16-mixed" and record["run/world_size"] == 1
    assert record["run/device"] == "cpu" and record["run/threads"] == torch.get_num_threads()
    assert record["run/torch_version"] == torch.__version__
    assert record["run/lightning_version"] == lightning.__version__
    assert re.fullmatch(r"\d+\.\d+.*", record["run/gendisc_version"])
    assert record["run/hostname"] == socket.gethostname()
    assert record["run/started_at"] == "2024-05-01T12:00:00+02:00"
    # given git state (taken at the start of the run) is kept; the start time defaults to now
    later = run_provenance(git={"run/git_sha": "a" * 40, "run/git_dirty": True}, root=repo)
    assert later["run/git_sha"] == "a" * 40 and later["run/git_dirty"] is True
    started = datetime.fromisoformat(later["run/started_at"])
    assert started.tzinfo is not None
    assert abs((datetime.now(started.tzinfo) - started).total_seconds()) < 60
