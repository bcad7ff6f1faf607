"""One row per run: its overrides (``.hydra/overrides.yaml``), status and scalar metrics."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

# columns every row has besides its overrides and metrics
RUN_COLUMNS = ["sweep_dir", "run_dir", "job", "status", "error_type", "error"]
# overrides that only pick a repetition: aggregated over, never grouped by
SEED_KEYS = ("seed", "data.data_seed")
# the cell of an override key that a run did not set (it ran with the config's default)
NOT_SET = "(default)"
# metrics reported by default, in this order, when runs have them
DEFAULT_METRICS = [
    "test/acc",
    "test/f1",
    "val/acc_best",
    "gen/fid",
    "gen/is",
    "time/fit_s",
    "time/train_samples_per_s",
    "mem/peak_mb",
]


def find_run_dirs(directory: str | Path) -> list[Path]:
    """Run directories at or below ``directory``: those holding ``.hydra/overrides.yaml``."""
    directory = Path(directory)
    found = {path.parent.parent for path in directory.rglob(".hydra/overrides.yaml")}
    return sorted(found, key=lambda p: [_natural(part) for part in p.relative_to(directory).parts])


def _natural(text: str) -> tuple[int, Any]:
    return (0, int(text)) if text.isdigit() else (1, text)


def parse_overrides(lines: Sequence[str]) -> dict[str, Any]:
    """``key=value`` overrides as {key: value} (deletions skipped; lists and dicts as text)."""
    parsed: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(list(lines)):
        if override.is_delete() or override.key_or_group.startswith("hydra"):
            continue
        key = override.key_or_group
        if override.package:
            key = f"{key}@{override.package}"
        value = override.value()
        if isinstance(value, list | dict):
            value = json.dumps(value)
        parsed[key] = value
    return parsed


# metrics.json keys of the run's provenance (git_sha, versions, host...): kept as written,
# never read as numbers (a version "0.1" or an all-digit hostname stays text)
PROVENANCE_PREFIX = "run/"


def _scalar(value: Any, key: str = "") -> Any:
    """A metrics.json value as a table cell: numbers (non-finite ones were stored as text)."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, str) and key.startswith(PROVENANCE_PREFIX):
        return value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if not math.isfinite(number) else value
    return None  # lists (confusion matrices, per-class values) and dicts stay in the file


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(overrides, row) of one run directory; status: completed, failed or incomplete.

    A run is failed when its failure.json is newer than its metrics.json (a resumed run that
    failed again), completed when it has a metrics.json, else incomplete (running or killed).
    """
    overrides = parse_overrides(
        yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    )
    metrics_file, failure_file = run_dir / "metrics.json", run_dir / "failure.json"
    row: dict[str, Any] = {"run_dir": str(run_dir), "error_type": None, "error": None}
    failed = failure_file.is_file() and (
        not metrics_file.is_file() or failure_file.stat().st_mtime >= metrics_file.stat().st_mtime
    )
    if failed:
        failure = json.loads(failure_file.read_text())
        row.update(
            status="failed", error_type=failure.get("error_type"), error=failure.get("error")
        )
    elif metrics_file.is_file():
        row["status"] = "completed"
        for key, value in json.loads(metrics_file.read_text()).items():
            cell = _scalar(value, key)
            if cell is not None and key not in RUN_COLUMNS:
                row[key] = cell
    else:
        row["status"] = "incomplete"
    return overrides, row


def _cell(text: str) -> Any:
    """A metric cell of a runs.csv: a number where it reads as one, else the text."""
    try:
        return float(text)
    except ValueError:
        return text


def read_runs_csv(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The override keys and rows of a ``runs.csv`` that gendisc-report wrote (runs of an
    earlier session or another machine, kept with their provenance)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = list(frame.columns)
    if columns[:3] != RUN_COLUMNS[:3] or "status" not in columns:
        raise ValueError(
            f"{path}: not a runs.csv of gendisc-report (its columns start {columns[:4]}); give "
            "sweep directories or a runs.csv that gendisc-report wrote"
        )
    keys = columns[3 : columns.index("status")]
    rows = []
    for record in frame.to_dict("records"):
        row: dict[str, Any] = {}
        for column, text in record.items():
            if column in keys:  # "" was null, "(default)" not set
                row[column] = text if text == NOT_SET else yaml.safe_load(text)
            elif text == "":
                row[column] = None
            elif column in RUN_COLUMNS or column.startswith(PROVENANCE_PREFIX):
                row[column] = text
            else:
                row[column] = _cell(text)
        rows.append(row)
    return keys, rows


def load_runs(directories: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Every run under the given sweep (or run) directories, one row each; a ``runs.csv``
    written by gendisc-report stands for the runs it lists (with their provenance).

    Columns: ``sweep_dir``, ``run_dir``, ``job`` (path inside the sweep), ``status``,
    ``error_type``, ``error``, one column per override key (``model``, ``data.batch_size``,
    ...; listed in ``df.attrs["override_keys"]``), one per scalar metric of metrics.json, then
    the run's provenance (``run/git_sha``, ``run/git_dirty``, ``run/device``, ...) as written.
    """
    if isinstance(directories, str | Path):
        directories = [directories]
    rows, keys = [], []
    for directory in directories:
        directory = Path(directory)
        if directory.is_file() and directory.suffix == ".csv":
            csv_keys, csv_rows = read_runs_csv(directory)
            keys += [key for key in csv_keys if key not in keys]
            rows += csv_rows
            continue
        if not directory.is_dir():
            raise FileNotFoundError(f"No such sweep directory or runs.csv: {directory}")
        for run_dir in find_run_dirs(directory):
            overrides, row = read_run(run_dir)
            keys += [key for key in overrides if key not in keys]
            job = run_dir.relative_to(directory).as_posix()
            rows.append({"sweep_dir": str(directory), "job": job, **overrides, **row})
    frame = pd.DataFrame(rows)
    for column in RUN_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype=object)
    metric_columns = [c for c in frame.columns if c not in RUN_COLUMNS and c not in keys]
    metric_columns.sort(key=lambda c: c.startswith(PROVENANCE_PREFIX))  # provenance last
    frame = frame[[*RUN_COLUMNS[:3], *keys, *RUN_COLUMNS[3:], *metric_columns]]
    for key in keys:  # exact values (ints stay ints; null is None); not overridden: default
        frame[key] = pd.Series([row.get(key, NOT_SET) for row in rows], dtype=object)
    frame.attrs["override_keys"] = keys
    return frame


def override_keys(runs: pd.DataFrame) -> list[str]:
    """The override columns of ``load_runs``'s table."""
    return list(runs.attrs.get("override_keys", []))


def is_seed_key(key: str) -> bool:
    """Keys that only choose a repetition: ``seed``, ``data.data_seed``, ``*_seed``."""
    return key in SEED_KEYS or key.rsplit(".", 1)[-1].endswith("seed")


def default_group_by(runs: pd.DataFrame) -> list[str]:
    """Every override key that varies across the runs, except seeds."""
    keys = []
    for key in override_keys(runs):
        values = {json.dumps(v, default=str) for v in runs[key]}
        if len(values) > 1 and not is_seed_key(key):
            keys.append(key)
    return keys


def default_metrics(runs: pd.DataFrame) -> list[str]:
    """The usual metrics that the runs have (test accuracy first, then cost)."""
    return [metric for metric in DEFAULT_METRICS if metric in runs.columns]
