"""``gendisc-report <sweep dirs...>``: aggregate multirun results over seeds into a report."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from gendisc.errors import ConfigError
from gendisc.report.paper_table import write_paper_table
from gendisc.report.write import CodeVersionWarning, write_report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gendisc-report",
        description="Tabulate and plot the runs of Hydra multirun directories: mean ± std over "
        "seeds per group, failed runs counted. Writes report.md, report.csv, runs.csv and PNGs.",
    )
    parser.add_argument(
        "dirs",
        nargs="+",
        help="sweep (or run) directories, and runs.csv files of earlier reports (runs of "
        "another session or machine, with their provenance; with --table, of --table reports)",
    )
    parser.add_argument(
        "--table",
        default=None,
        metavar="SPEC",
        help="a paper's table (e.g. experiments/salimans_2016/table.yaml): one row per label "
        "count, finished runs only, beside the published figures; writes runs.csv, curves.csv, "
        "report.md and curves.png into --out (default: the spec's folder)",
    )
    parser.add_argument(
        "--group-by",
        nargs="*",
        default=None,
        help="override keys, or provenance keys such as run/git_sha, to group by (default: "
        "every swept key except seeds; give none to pool all runs)",
    )
    parser.add_argument(
        "--metrics", nargs="+", default=None, help="metrics.json keys (default: test/acc, cost...)"
    )
    parser.add_argument("--x", default=None, help="group key on the plots' x axis")
    parser.add_argument("--hue", default=None, help="group key for one line each (default: model)")
    parser.add_argument("--out", default=None, help="output directory (default: the first dir)")
    parser.add_argument("--title", default=None, help="report title")
    parser.add_argument("--no-plots", action="store_true", help="write tables only")
    parser.add_argument(
        "--pivot",
        nargs="+",
        default=(),
        metavar="METRIC",
        help="also a wide table of each METRIC in report.md: a row per group of the other keys, "
        "a column per value of --x (e.g. methods x labels per class)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``gendisc-report``."""
    args = parse_args(argv)
    if args.table is not None:
        return _paper_table(args)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CodeVersionWarning)
            written = write_report(
                args.dirs,
                out=args.out,
                group_by=args.group_by,
                metrics=args.metrics,
                x=args.x,
                hue=args.hue,
                plots=not args.no_plots,
                title=args.title,
                pivot=args.pivot,
            )
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        print(written["report.md"].read_text())
        print("Wrote " + ", ".join(str(path) for path in written.values()))
    except BrokenPipeError:  # e.g. piped into head: the files are written; exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    for warning in caught:  # after the report, where they are seen
        if issubclass(warning.category, CodeVersionWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return 0


def _paper_table(args: argparse.Namespace) -> int:
    """``--table``: the paper-layout report."""
    try:
        written, mixed = write_paper_table(
            args.dirs, args.table, out=args.out, plots=not args.no_plots
        )
    except (FileNotFoundError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(written["report.md"].read_text())
    print("Wrote " + ", ".join(str(path) for path in written.values()))
    for line in mixed:
        print(f"warning: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
