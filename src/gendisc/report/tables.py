"""Aggregate runs over seeds: mean, sample standard deviation, counts; markdown tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

COUNT_COLUMNS = ["runs", "completed", "failed", "incomplete"]


def sort_key(value: Any) -> tuple[int, Any]:
    """Order of group values: numbers ascending, then text, then null (e.g. 'all labels')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, "")
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, int | float | np.number):
        return (0, float(value))
    return (1, str(value))


def _missing_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def group_runs(runs: pd.DataFrame, group_by: Sequence[str]) -> dict[tuple, list[int]]:
    """{group values: row indices}, sorted by the values (null last).

    Keys are override keys or metrics.json columns such as ``run/git_sha``; a run without the
    value (a failed run has no metrics.json) falls in the group of null.
    """
    missing = [key for key in group_by if key not in runs.columns]
    if missing:
        raise KeyError(f"group-by keys not found in the runs' overrides or metrics.json: {missing}")
    groups: dict[tuple, list[int]] = {}
    for index, row in runs.iterrows():
        values = tuple(_missing_to_none(row[key]) for key in group_by)
        groups.setdefault(values, []).append(index)
    return {
        values: groups[values]
        for values in sorted(groups, key=lambda vs: [sort_key(v) for v in vs])
    }


def code_version_warnings(runs: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    """One line per group whose runs may not come from the same code.

    That is a group with two or more runs that recorded their provenance (``run/git_sha``,
    ``run/git_dirty`` in metrics.json) whose git_sha values differ, or one of which ran from
    a dirty tree (uncommitted changes). Runs without provenance are not compared.
    """
    if "run/git_sha" not in runs.columns:
        return []
    lines = []
    for values, indices in group_runs(runs, group_by).items():
        members = runs.loc[indices]
        members = members[members["run/git_sha"].map(lambda v: isinstance(v, str))]
        if len(members) < 2:
            continue
        dirty = members.get("run/git_dirty", pd.Series(False, index=members.index))
        dirty = dirty.map(lambda v: bool(v) if isinstance(v, bool | np.bool_) else False)
        shas = list(dict.fromkeys(members["run/git_sha"]))
        if len(shas) == 1 and not dirty.any():
            continue
        parts = []
        for sha in shas:
            count = int((members["run/git_sha"] == sha).sum())
            unclean = int(dirty[members["run/git_sha"] == sha].sum())
            part = f"{sha} ({count} run{'s' if count > 1 else ''}"
            part += f", {unclean} from a dirty tree)" if unclean else ")"
            parts.append(part)
        group = ", ".join(
            f"{k}={'null' if v is None else v}" for k, v in zip(group_by, values, strict=True)
        )
        lines.append(
            f"group {group or '(all runs)'}: runs from different or uncommitted code: "
            f"git_sha {'; '.join(parts)}"
        )
    return lines


def aggregate(
    runs: pd.DataFrame, group_by: Sequence[str] | None = None, metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per group: run counts and, per metric, mean, std (ddof=1) and n.

    Only completed runs enter the statistics; ``failed`` and ``incomplete`` count the others.
    ``std`` is NaN when a group has a single value. Columns: the group keys, ``runs``,
    ``completed``, ``failed``, ``incomplete``, then ``<metric> mean``, ``<metric> std``,
    ``<metric> n`` for each metric. Groups are sorted by their keys (null last).
    """
    from gendisc.report.runs import default_group_by, default_metrics

    group_by = list(default_group_by(runs) if group_by is None else group_by)
    metrics = list(default_metrics(runs) if metrics is None else metrics)
    groups = group_runs(runs, group_by)
    rows = []
    for values, indices in groups.items():
        members = runs.loc[indices]
        status = members["status"]
        row: dict[str, Any] = dict(zip(group_by, values, strict=True))
        row.update(
            runs=len(members),
            completed=int((status == "completed").sum()),
            failed=int((status == "failed").sum()),
            incomplete=int((status == "incomplete").sum()),
        )
        done = members[status == "completed"]
        for metric in metrics:
            column = done[metric] if metric in done else pd.Series(dtype=float)
            sample = pd.to_numeric(column, errors="coerce").dropna().to_numpy(dtype=float)
            row[f"{metric} mean"] = sample.mean() if len(sample) else math.nan
            row[f"{metric} std"] = sample.std(ddof=1) if len(sample) > 1 else math.nan
            row[f"{metric} n"] = len(sample)
        rows.append(row)
    table = pd.DataFrame(
        rows,
        columns=[*group_by, *COUNT_COLUMNS]
        + [f"{metric} {stat}" for metric in metrics for stat in ("mean", "std", "n")],
    )
    for key in group_by:  # keep group values exact (no int -> float, None stays None)
        table[key] = pd.Series([row[key] for row in rows], dtype=object)
    table.attrs.update(group_by=group_by, metrics=metrics)
    return table


def _decimals(value: float) -> int:
    magnitude = abs(value)
    return 0 if magnitude >= 1000 else 1 if magnitude >= 10 else 4


def format_number(value: float, decimals: int | None = None) -> str:
    """4 decimals below 10, 1 below 1000, none above; '-' for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{_decimals(value) if decimals is None else decimals}f}"


def format_mean_std(mean: float, std: float) -> str:
    """'0.8123 ± 0.0100' (the std with the mean's decimals); the mean alone without a spread."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return format_number(mean)
    decimals = _decimals(mean)
    return f"{format_number(mean, decimals)} ± {format_number(std, decimals)}"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null" if value is None else "-"
    return str(value).replace("|", "\\|")


def to_markdown(table: pd.DataFrame) -> str:
    """The aggregated table as markdown: group keys, n, failed, then 'mean ± std' per metric.

    ``n`` counts completed runs; an ``incomplete`` column (killed or running runs) is added only
    when there are any.
    """
    group_by = table.attrs.get("group_by", [])
    metrics = table.attrs.get("metrics", [])
    counts = ["completed", "failed"] + (["incomplete"] if table["incomplete"].sum() else [])
    header = [*group_by, "n", *counts[1:], *metrics]
    align = "|" + "---|" * len(group_by) + "---:|" * (len(counts) + len(metrics))
    lines = ["| " + " | ".join(header) + " |", align]
    for _, row in table.iterrows():
        cells = [_cell(row[key]) for key in group_by]
        cells += [str(int(row[count])) for count in counts]
        cells += [format_mean_std(row[f"{m} mean"], row[f"{m} std"]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pivot_markdown(table: pd.DataFrame, metric: str, x: str) -> str:
    """``metric``'s mean ± std from the aggregated table laid out wide: one row per group of the
    other group keys, one column per value of ``x`` (e.g. methods x labels per class)."""
    group_by = table.attrs.get("group_by", [])
    if x not in group_by:
        raise KeyError(f"--pivot needs --x to be one of the group keys {group_by}, not {x!r}")
    rows = [key for key in group_by if key != x]
    columns = sorted({_missing_to_none(v) for v in table[x]}, key=sort_key)
    cells: dict[tuple, dict[Any, str]] = {}
    for _, row in table.iterrows():
        label = tuple(row[key] for key in rows)
        cells.setdefault(label, {})[_missing_to_none(row[x])] = format_mean_std(
            row[f"{metric} mean"], row[f"{metric} std"]
        )
    header = [" / ".join(rows) or "runs", *(f"{x}={_cell(value)}" for value in columns)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(columns)]
    for label in sorted(cells, key=lambda values: tuple(sort_key(v) for v in values)):
        by_x = cells[label]
        name = " / ".join(_cell(value) for value in label) or "all"
        lines.append("| " + " | ".join([name, *(by_x.get(v, "-") for v in columns)]) + " |")
    return "\n".join(lines)
