"""A metric against a swept key, one line per method, with the spread over seeds as error bars."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from gendisc.report.tables import sort_key


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float | np.number)
        and not isinstance(value, bool)
        and not (isinstance(value, float) and math.isnan(value))
    )


def _label(value: Any) -> str:
    return "null" if value is None else str(value)


def plot(
    table: pd.DataFrame,
    metric: str,
    x: str | None = None,
    hue: str | None = None,
    runs: pd.DataFrame | None = None,
    title: str | None = None,
) -> Figure:
    """``metric`` (mean ± std over seeds) against group key ``x``, one line per ``hue`` value.

    ``table`` is ``aggregate``'s output; group keys other than ``x`` and ``hue`` split the lines
    further. A numeric ``x`` gets a numeric axis (log2 when it spans a factor of 16 or more);
    otherwise, or when a value is null (e.g. ``labels_per_class=null``: all labels), its values
    are evenly spaced categories. With ``runs`` (``load_runs``'s table) every completed run is
    drawn as a dot too. Without ``x`` each group is one category.
    """
    group_by = list(table.attrs.get("group_by", []))
    line_keys = [key for key in group_by if key != x]
    if hue in line_keys:
        line_keys.remove(hue)
        line_keys.insert(0, hue)
    if x is None:
        x_values = [tuple(row[k] for k in group_by) for _, row in table.iterrows()]
        labels = [", ".join(_label(v) for v in values) or "all runs" for values in x_values]
        positions = dict(zip(x_values, range(len(x_values)), strict=True))
        numeric = False
    else:
        values = sorted({v for v in table[x]}, key=sort_key)
        numeric = all(_is_number(v) for v in values)
        positions = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
        labels = [_label(v) for v in values]
    figure = Figure(figsize=(6.4, 4.2))  # no pyplot: no global state, any backend (notebooks)
    axes = figure.subplots()
    lines: dict[tuple, list[int]] = {}
    for index, row in table.iterrows():
        key = tuple(row[k] for k in (group_by if x is None else line_keys))
        lines.setdefault(key, []).append(index)
    for line_index, (key, members) in enumerate(
        sorted(lines.items(), key=lambda kv: [sort_key(v) for v in kv[0]])
    ):
        rows = table.loc[members]
        if x is None:
            xs = [positions[tuple(r[k] for k in group_by)] for _, r in rows.iterrows()]
        else:
            xs = [positions[v] for v in rows[x]]
        order = np.argsort(xs)
        xs = np.asarray(xs, dtype=float)[order]
        means = rows[f"{metric} mean"].to_numpy(dtype=float)[order]
        stds = np.nan_to_num(rows[f"{metric} std"].to_numpy(dtype=float)[order])
        name = (
            ""
            if x is None
            else ", ".join(f"{k}={_label(v)}" for k, v in zip(line_keys, key, strict=True))
        )
        colour = f"C{line_index % 10}"
        axes.errorbar(
            xs,
            means,
            yerr=stds,
            marker="o",
            capsize=4,
            color=colour,
            linestyle="-" if x is not None else "none",
            label=name or None,
        )
        if runs is not None:
            _draw_runs(axes, runs, rows, group_by, metric, x, positions, colour)
    if x is not None and numeric:
        spread = [v for v in positions.values() if v > 0]
        if len(spread) == len(positions) and max(spread) / min(spread) >= 16:
            axes.set_xscale("log", base=2)
        axes.set_xticks(list(positions.values()), labels)
    else:
        slanted = len(labels) > 4
        axes.set_xticks(
            range(len(labels)),
            labels,
            rotation=30 if slanted else 0,
            ha="right" if slanted else "center",
            rotation_mode="anchor",
        )
    axes.set_xlabel(x or ", ".join(group_by) or "")
    axes.set_ylabel(metric)
    axes.set_title(title or (f"{metric} vs {x}" if x else metric) + " (mean ± std over seeds)")
    axes.grid(alpha=0.3)
    if any(axes.get_legend_handles_labels()[1]):
        axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _draw_runs(
    axes: Any,
    runs: pd.DataFrame,
    rows: pd.DataFrame,
    group_by: Sequence[str],
    metric: str,
    x: str | None,
    positions: dict,
    colour: str,
) -> None:
    """Each completed run of these groups as a small dot at its group's position."""
    done = runs[runs["status"] == "completed"]
    if metric not in done:
        return
    for _, row in rows.iterrows():
        mask = np.ones(len(done), dtype=bool)
        for key in group_by:
            mask &= np.array([_same(v, row[key]) for v in done[key]], dtype=bool)
        values = pd.to_numeric(done.loc[mask, metric], errors="coerce").dropna()
        where = positions[tuple(row[k] for k in group_by)] if x is None else positions[row[x]]
        axes.scatter([where] * len(values), values, s=10, color=colour, alpha=0.4, zorder=3)


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a == b


def plot_curves(summary: pd.DataFrame, main: str) -> Figure:
    """Validation error (%) against epoch, one line (and colour) per (labels per class, variant,
    precision): the mean over its runs, a band of ± one std, log scale; variant ``main`` (the
    full model) solid, the others dashed.

    ``summary``: columns labels_per_class, variant, precision, epoch (from 0), mean, std, count
    (``paper_table.summarise_curves``).
    """
    figure = Figure(figsize=(7.0, 4.6))
    axes = figure.subplots()
    colours: dict[Any, str] = {}
    for (per_class, variant, precision), line in summary.groupby(
        ["labels_per_class", "variant", "precision"], sort=True
    ):
        colour = colours.setdefault((per_class, variant), f"C{len(colours) % 10}")
        line = line.sort_values("epoch")
        epochs = line["epoch"].to_numpy(dtype=float) + 1  # epoch 1 = after one pass
        mean = line["mean"].to_numpy(dtype=float)
        spread = np.nan_to_num(line["std"].to_numpy(dtype=float))
        runs_in = int(line["count"].max())
        axes.plot(
            epochs,
            mean,
            color=colour,
            linestyle="-" if variant == main else "--",
            label=f"{per_class}/class, {variant}, {precision} ({runs_in} runs)",
        )
        axes.fill_between(
            epochs, np.maximum(mean - spread, 1e-3), mean + spread, color=colour, alpha=0.2
        )
    low, high = axes.get_ylim()
    if low > 0 and high / low > 3:  # a log axis only where the errors span a wide range
        axes.set_yscale("log")
        # ticks read in percent: 1, 2, 5, 10, 20, 50 (not 10^0, 2x10^0)
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axes.yaxis.set_minor_formatter(FuncFormatter(_one_two_five))
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation error (%)")
    axes.set_title("validation error per epoch (mean ± std over seeds)")
    axes.grid(alpha=0.3, which="both")
    if any(axes.get_legend_handles_labels()[1]):
        axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def _one_two_five(value: float, _: Any) -> str:
    """Minor log-axis label: only at 2 and 5 times a power of ten."""
    if value <= 0:
        return ""
    leading = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if round(leading, 6) in (2.0, 5.0) else ""
