"""Failed jobs: a ``failure.json`` record in the run directory, and a sweep that goes on."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from gendisc.errors import gendisc_cause
from gendisc.utils.distributed import DDP_MULTIRUN_ENV, global_rank
from gendisc.utils.resume import is_multirun

log = logging.getLogger(__name__)


@contextlib.contextmanager
def exit_on_gendisc_error() -> Iterator[None]:
    """For command-line entry points: a GendiscError, wrapped or not, exits with its one-line
    message instead of a traceback; any other error propagates."""
    try:
        yield
    except Exception as error:
        cause = gendisc_cause(error)
        if cause is None:
            raise
        raise SystemExit(f"error: {cause}") from None


def job_overrides() -> list[str]:
    """The command-line overrides of this Hydra job (none outside Hydra)."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def record_failure(
    output_dir: Path, error: BaseException, name: str = "failure.json", last: Path | None = None
) -> Path:
    """Write ``failure.json`` in the run directory: the error and where the run had got to
    (``last``: the run's last checkpoint file, ``resume.last_checkpoint_file``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    cause = gendisc_cause(error) or error
    record = {
        "status": "failed",
        "error_type": type(cause).__name__,
        "error": str(cause),
        "overrides": job_overrides(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "last_checkpoint": str(last) if last is not None and last.is_file() else None,
        "traceback": "".join(traceback.format_exception(error)),
    }
    path = output_dir / name
    path.write_text(json.dumps(record, indent=2))
    return path


def set_aside_old_failure(output_dir: Path) -> None:
    """A run started again in the directory of a failed one: keep its record as history."""
    old = output_dir / "failure.json"
    if old.is_file():
        old.replace(output_dir / "failure.previous.json")


def handle_failure(
    output_dir: Path, error: Exception, worker: bool, last: Path | None = None
) -> float:
    """Record a failed job; NaN in a multirun so the sweep goes on, else raise again.

    Rank 0 writes ``failure.json``, a DDP worker ``failure_rank<N>.json``. A single run that
    failed on a GendiscError exits with its one-line message instead of a traceback.
    """
    rank = global_rank()
    if worker:  # rank 0 records the job's failure; a worker keeps its own record
        record_failure(output_dir, error, name=f"failure_rank{rank}.json", last=last)
        if os.environ.get(DDP_MULTIRUN_ENV) == "1":
            return math.nan  # a non-zero exit would make Lightning kill the whole sweep
        raise error
    path = record_failure(output_dir, error, last=last) if rank == 0 else output_dir
    if is_multirun():
        log.error(
            "Job failed (%s: %s); recorded in %s; the sweep goes on.",
            type(error).__name__,
            error,
            path,
        )
        return math.nan
    cause = gendisc_cause(error)
    if cause is not None:
        raise SystemExit(f"error: {cause}") from None
    raise error
