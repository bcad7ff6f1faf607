"""Sweep reports: load the runs of multirun directories, aggregate over seeds, table and plot.

    from gendisc.report import load_runs, aggregate, plot, write_report
    runs = load_runs(["outputs/train/multiruns/<sweep>"])   # one row per run
    table = aggregate(runs, group_by=["model"], metrics=["test/acc"])
    write_report(["outputs/train/multiruns/<sweep>"])       # report.md, report.csv, PNGs
    write_paper_table(["outputs/salimans_mnist_table"], "experiments/salimans_2016/table.yaml")

Nothing here imports torch: reports load fast (the console script is ``gendisc-report``).
"""

from gendisc.report.paper_table import load_spec, load_table_runs, write_paper_table
from gendisc.report.plots import plot, plot_curves
from gendisc.report.runs import (
    SEED_KEYS,
    default_group_by,
    default_metrics,
    find_run_dirs,
    load_runs,
    override_keys,
)
from gendisc.report.tables import aggregate, code_version_warnings, format_mean_std, to_markdown
from gendisc.report.write import plot_axes, write_report

__all__ = [
    "SEED_KEYS",
    "aggregate",
    "code_version_warnings",
    "default_group_by",
    "default_metrics",
    "find_run_dirs",
    "format_mean_std",
    "load_runs",
    "load_spec",
    "load_table_runs",
    "override_keys",
    "plot",
    "plot_axes",
    "plot_curves",
    "to_markdown",
    "write_paper_table",
    "write_report",
]
