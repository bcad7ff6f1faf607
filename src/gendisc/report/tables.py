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
    missing = [key for key in group_by if key not in runs.columns]
    if missing:
        raise KeyError(f"group-by keys not found in the runs' overrides: {missing}")
    groups: dict[tuple, list[int]] = {}
    for index, row in runs.iterrows():
        groups.setdefault(tuple(row[key] for key in group_by), []).append(index)
    rows = []
    for values in sorted(groups, key=lambda vs: [sort_key(v) for v in vs]):
        members = runs.loc[groups[values]]
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
