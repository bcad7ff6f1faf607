"""report.md, report.csv, runs.csv and PNG plots for one or more sweep directories."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from gendisc.report.plots import plot
from gendisc.report.runs import default_group_by, default_metrics, is_seed_key, load_runs
from gendisc.report.tables import aggregate, code_version_warnings, pivot_markdown, to_markdown


class CodeVersionWarning(UserWarning):
    """The runs of one group come from different git commits or from a dirty tree."""


# keys that name the method compared, in order of preference, for the plots' lines
METHOD_KEYS = ("model", "experiment", "hparams_search")


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def plot_axes(
    table: pd.DataFrame, x: str | None = None, hue: str | None = None
) -> tuple[list[str | None], str | None]:
    """(x keys, line key) for plots of an aggregated table.

    The line key (``hue``) defaults to the method (``model``, else ``experiment``) when grouped
    by; the x keys default to every other group key whose values are quantities (numbers, or
    null such as 'all labels'), else [None]: one point per group.
    """
    group_by = list(table.attrs.get("group_by", []))
    if hue is None:
        hue = next((key for key in METHOD_KEYS if key in group_by), None)
    if x is not None:
        return [x], hue
    ordered = [
        key
        for key in group_by
        if key != hue
        and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool))
            for v in table[key]
        )
    ]
    return ordered or [None], hue


def write_report(
    directories: str | Path | Iterable[str | Path],
    out: str | Path | None = None,
    group_by: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    x: str | None = None,
    hue: str | None = None,
    plots: bool = True,
    title: str | None = None,
    pivot: Sequence[str] = (),
) -> dict[str, Path]:
    """Load the runs, aggregate them over seeds and write the report files into ``out``.

    ``out`` defaults to the first directory (that of a ``runs.csv`` given first). Returns the written paths by name: ``report.md``,
    ``report.csv`` (the aggregated table), ``runs.csv`` (one row per run) and one PNG per
    (metric, x key): ``plot_<metric>_vs_<key>.png``. ``group_by`` takes override keys and
    provenance keys (``run/git_sha``, ...). A group whose runs come from different git commits
    (or a dirty tree) gets a ``CodeVersionWarning`` and a warning line in report.md. Each
    metric of ``pivot`` also gets a wide table: one row per group of the other keys, one column
    per value of ``x``.
    """
    directories = [directories] if isinstance(directories, str | Path) else list(directories)
    runs = load_runs(directories)
    if runs.empty:
        raise FileNotFoundError(f"No runs (.hydra/overrides.yaml) under {directories}")
    group_by = default_group_by(runs) if group_by is None else list(group_by)
    metrics = default_metrics(runs) if metrics is None else list(metrics)
    metrics += [metric for metric in pivot if metric not in metrics]
    table = aggregate(runs, group_by, metrics)
    first = Path(directories[0])
    out = Path(out or (first.parent if first.is_file() else first))
    out.mkdir(parents=True, exist_ok=True)
    written = {"report.csv": out / "report.csv", "runs.csv": out / "runs.csv"}
    table.to_csv(written["report.csv"], index=False)
    runs.to_csv(written["runs.csv"], index=False)

    images = []
    if plots and metrics:
        x_keys, method = plot_axes(table, x, hue)
        for metric in metrics:
            if table[f"{metric} n"].sum() == 0:
                continue
            for x_key in x_keys:
                figure = plot(table, metric, x=x_key, hue=method, runs=runs)
                name = f"plot_{_file_part(metric)}_vs_{_file_part(x_key or 'group')}.png"
                figure.savefig(out / name, dpi=110)
                written[name] = out / name
                images.append((metric, x_key, name))

    seeds = [k for k in runs.attrs["override_keys"] if is_seed_key(k)]
    counts = runs["status"].value_counts()
    lines = [
        f"# {title or 'Sweep report'}",
        "",
        "Sweeps: " + ", ".join(f"`{d}`" for d in directories),
        "",
        f"Runs: {len(runs)} ({counts.get('completed', 0)} completed, "
        f"{counts.get('failed', 0)} failed, {counts.get('incomplete', 0)} incomplete). "
        f"Grouped by: {', '.join(group_by) or '(all runs together)'}; aggregated over "
        f"{', '.join(seeds) or 'the runs of each group'}: mean ± sample standard deviation "
        "(ddof=1) over the completed runs; n = completed runs.",
        "",
        to_markdown(table),
    ]
    for metric in pivot:
        if x is None:
            raise ValueError("--pivot needs --x: the group key whose values become columns")
        lines += ["", f"### {metric} (mean ± std) by {x}", "", pivot_markdown(table, metric, x)]
    mixed = code_version_warnings(runs, group_by)
    if mixed:
        lines += ["", "## Warnings", ""]
        lines += ["- **Warning**: " + line.replace("|", "\\|") for line in mixed]
    for line in mixed:
        warnings.warn(line, CodeVersionWarning, stacklevel=2)
    if images:
        lines += ["", "## Plots", ""]
        lines += [f"![{metric} vs {x_key or 'group'}]({name})" for metric, x_key, name in images]
    failed = runs[runs["status"] != "completed"]
    if len(failed):
        lines += ["", "## Runs without results", "", "| run | status | error |", "|---|---|---|"]
        for _, row in failed.iterrows():
            error = f"{row['error_type']}: {row['error']}" if row["error_type"] else ""
            error = " ".join(str(error).split())[:300].replace("|", "\\|")
            lines.append(f"| `{row['run_dir']}` | {row['status']} | {error} |")
    written["report.md"] = out / "report.md"
    written["report.md"].write_text("\n".join(lines) + "\n")
    return written
