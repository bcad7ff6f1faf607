"""A paper's results table from finished runs: ``gendisc-report --table <spec.yaml> <inputs>``.

The spec (e.g. ``experiments/salimans_2016/table.yaml``) names the runs' ``task_name``, the
config group whose choice tells the table's columns apart (``ablation``: the full model, the
labels-only baseline) and the published figures with their source. Rows are label counts
(``data/labeled``), split further by epoch budget and precision when runs differ in them.

Inputs are run directories (or folders above them) and ``runs.csv`` files written by an earlier
``--table`` report (with their ``curves.csv``), so runs from several machines come together in
one table; a run found twice (same task, labels, data seed, variant, precision) counts once.
A run enters the table only when it is *finished*: its metrics.json was written after
``trainer.max_epochs`` epochs of the configuration it last ran with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from gendisc.errors import ConfigError
from gendisc.report.plots import plot_curves
from gendisc.report.runs import PROVENANCE_PREFIX, find_run_dirs, read_run
from gendisc.report.tables import code_version_warnings

# the columns of runs.csv that identify a run across machines and directories
RUN_KEY = ["task_name", "labels_per_class", "data_seed", "variant", "precision"]
# runs.csv's leading columns, in this order; the rest of metrics.json follows
RUN_COLUMNS = [
    "run",
    *RUN_KEY,
    "labels",
    "status",
    "epochs",
    "max_epochs",
    "test/acc",
    "test/errors",
    "test/error_pct",
    "tested",
    "data/test",
    "run/precision",
    "run/git_sha",
    "run/git_dirty",
    "run/hostname",
    "run/device",
    "time/fit_s",
    "overrides",
    "run_dir",
    "error",
]
# the validation curve kept per run in curves.csv (the EMA discriminator's for ssl_gan)
CURVE_METRIC = "val/acc"
FINISHED = "finished"


@dataclass(frozen=True)
class TableSpec:
    """What a ``--table`` report shows; read from a YAML file by ``load_spec``."""

    path: Path
    title: str
    task_name: str | None
    column_group: str
    # (choice of column_group, column name); the first is compared with the published figures
    columns: list[tuple[str | None, str]]
    published_name: str
    published_source: str
    published_test_images: int
    # variant -> (published name, {total labels: (mean, std) test error in percent}) of each
    # column that has published figures
    column_published: dict[str, tuple[str, dict[int, tuple[float, float | None]]]] = field(
        default_factory=dict
    )

    def variant(self, choice: str | None) -> str:
        """The variant's short name in runs.csv: the choice, or 'full' for none."""
        return variant_name(choice)

    @property
    def published(self) -> dict[int, tuple[float, float | None]]:
        """The figures published for the first column's model."""
        return self.published_of(self.variant(self.columns[0][0]))[1]

    def published_of(self, variant: str) -> tuple[str, dict[int, tuple[float, float | None]]]:
        """(name, figures) published for a column's model; figures empty when none."""
        return self.column_published.get(variant, (self.published_name, {}))


def load_spec(path: str | Path) -> TableSpec:
    """Read a table spec (see ``experiments/salimans_2016/table.yaml``); ConfigError if bad."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"--table {path}: no such file (e.g. experiments/salimans_2016/table.yaml)."
        )
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        group = str(raw["column_group"])
        columns = [(entry[group], str(entry["name"])) for entry in raw["columns"]]
        published = raw.get("published") or {}
        first_figures = _figures(published.get("error_percent"))
        name = str(published.get("name", "published"))
        column_published = {}
        for index, entry in enumerate(raw["columns"]):
            variant = variant_name(entry[group])
            figures = _figures(entry.get("error_percent")) or (first_figures if index == 0 else {})
            if figures:
                column_published[variant] = (str(entry.get("published_name", name)), figures)
        spec = TableSpec(
            path=path,
            title=str(raw.get("title") or "Results"),
            task_name=raw.get("task_name"),
            column_group=group,
            columns=columns,
            published_name=name,
            published_source=str(published.get("source", "")),
            published_test_images=int(published.get("test_images", 0) or 0),
            column_published=column_published,
        )
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise ConfigError(
            f"{path}: not a table spec ({type(error).__name__}: {error}). It needs column_group, "
            "columns (a list of {<column_group>: <choice or null>, name: ...}, each optionally "
            "with its own published_name and error_percent) and published (name, source, "
            "test_images, error_percent: {<labels>: [mean, std]} of the first column)."
        ) from error
    if not columns:
        raise ConfigError(f"{path}: columns is empty; list at least the full model's column.")
    return spec


def variant_name(choice: str | None) -> str:
    """A column's short name in runs.csv: the config group's choice, or 'full' for none."""
    return "full" if choice is None else str(choice)


def _figures(raw: Any) -> dict[int, tuple[float, float | None]]:
    """{labels: (mean, std)} from a spec's ``error_percent: {<labels>: [mean, std]}``."""
    return {
        int(labels): (float(pair[0]), None if pair[1] is None else float(pair[1]))
        for labels, pair in (raw or {}).items()
    }


# ---------------------------------------------------------------------------------- reading
def _select(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _unless_interpolation(value: Any) -> Any:
    """A config value, or None when it is an unresolved interpolation."""
    return None if isinstance(value, str) and "${" in value else value


def read_curve(run_dir: Path, metric: str = CURVE_METRIC) -> pd.DataFrame:
    """(epoch, metric) per validation epoch from the run's newest CSV log (``csv/version_N``)."""
    logs = sorted(
        run_dir.glob("csv/version_*/metrics.csv"),
        key=lambda p: int(p.parent.name.split("_")[-1]) if p.parent.name[8:].isdigit() else -1,
    )
    if not logs:
        return pd.DataFrame(columns=["epoch", metric])
    frame = pd.read_csv(logs[-1])
    if metric not in frame or "epoch" not in frame:
        return pd.DataFrame(columns=["epoch", metric])
    frame = frame[["epoch", metric]].dropna()
    frame["epoch"] = frame["epoch"].astype(int)
    return frame.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def run_name(row: dict[str, Any]) -> str:
    """``lpc<labels per class>_seed<data seed>_<variant>_<precision>``, as the run's folder."""
    return (
        f"lpc{row.get('labels_per_class')}_seed{row.get('data_seed')}_"
        f"{row.get('variant')}_{row.get('precision')}"
    )


def read_table_run(run_dir: Path, spec: TableSpec) -> tuple[dict[str, Any], pd.DataFrame]:
    """(runs.csv row, validation curve) of one run directory.

    status: ``finished`` (metrics.json written after max_epochs epochs), ``failed``,
    ``incomplete`` (no metrics.json: running or stopped) or ``earlier budget`` (a metrics.json
    from fewer epochs than the configuration it last ran with: a resumed run under way).
    """
    _, row = read_run(run_dir)
    hydra_dir = run_dir / ".hydra"
    config = yaml.safe_load((hydra_dir / "config.yaml").read_text()) or {}
    hydra_file = hydra_dir / "hydra.yaml"
    choices = {}
    if hydra_file.is_file():
        hydra = yaml.safe_load(hydra_file.read_text()) or {}
        choices = _select(hydra, "hydra.runtime.choices") or {}
    curve = read_curve(run_dir)
    completed = row["status"] == "completed"
    lines = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or []
    out: dict[str, Any] = {
        "task_name": _unless_interpolation(config.get("task_name")),
        "labels_per_class": _unless_interpolation(_select(config, "data.labels_per_class")),
        "data_seed": row.get("data_seed", _unless_interpolation(_select(config, "data.data_seed"))),
        "variant": spec.variant(choices.get(spec.column_group)),
        "precision": row.get("run/precision") or str(_select(config, "trainer.precision")),
        "labels": row.get("data/labeled"),
        "max_epochs": _unless_interpolation(_select(config, "trainer.max_epochs")),
        "epochs": row.get("epochs") if completed else len(curve),
        "overrides": " ".join(str(line) for line in lines),
        "run_dir": str(run_dir),
        "error": f"{row['error_type']}: {row['error']}" if row.get("error_type") else None,
    }
    if row["status"] != "completed":
        out["status"] = row["status"]
    elif out["max_epochs"] is not None and out["epochs"] != out["max_epochs"]:
        out["status"] = "earlier budget"
    else:
        out["status"] = FINISHED
    # the model after the last epoch: test_last/* when the run tested both checkpoints
    tested_acc = row.get("test_last/acc", row.get("test/acc"))
    if tested_acc is not None and row.get("data/test"):
        tested = int(row["data/test"])
        errors = round((1.0 - float(tested_acc)) * tested)
        out.update({"test/errors": errors, "test/error_pct": 100.0 * errors / tested})
    out["tested"] = (
        "last"
        if "test_last/acc" in row
        else row.get("test_ckpt") or _unless_interpolation(config.get("test_ckpt"))
    )
    for key, value in row.items():
        if key not in out and key not in ("error_type",):
            out[key] = value
    out["run"] = run_name(out)
    curve = curve.assign(run=out["run"])
    return out, curve


def load_table_runs(
    inputs: list[str | Path], spec: TableSpec
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(runs, curves, notes) from run directories and earlier runs.csv files, one row a run.

    Runs of another ``task_name`` than the spec's are left out (counted in the notes). A run
    found more than once keeps its most advanced copy (finished first, then most epochs, then
    a run directory before a runs.csv row); the others are noted.
    """
    rows: list[dict[str, Any]] = []
    curves: list[pd.DataFrame] = []
    for source in inputs:
        source = Path(source)
        if source.is_file():
            frame = pd.read_csv(source)
            missing = [c for c in [*RUN_KEY, "run", "status"] if c not in frame]
            if missing:
                raise ConfigError(
                    f"{source}: not a runs.csv of gendisc-report --table (no {missing}); give "
                    "run directories or the runs.csv that such a report wrote."
                )
            for record in frame.to_dict("records"):
                record = {k: (None if _is_nan(v) else v) for k, v in record.items()}
                rows.append({**record, "_from_csv": True})
            curve_file = source.with_name("curves.csv")
            if curve_file.is_file():
                curves.append(pd.read_csv(curve_file))
        elif source.is_dir():
            for run_dir in find_run_dirs(source):
                row, curve = read_table_run(run_dir, spec)
                rows.append({**row, "_from_csv": False})
                curves.append(curve)
        else:
            raise FileNotFoundError(f"No such run directory or runs.csv: {source}")
    notes: list[str] = []
    if spec.task_name is not None:
        other = [r for r in rows if r.get("task_name") != spec.task_name]
        if other:
            notes.append(
                f"{len(other)} run(s) of other tasks than {spec.task_name} left out "
                f"(e.g. {other[0].get('run_dir')})."
            )
        rows = [r for r in rows if r.get("task_name") == spec.task_name]
    kept: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = tuple(_key_value(row.get(k)) for k in RUN_KEY)
        best = kept.get(key)
        if best is None or _rank(row) > _rank(best):
            if best is not None:
                notes.append(f"{row['run']}: found twice; kept {row.get('run_dir')}.")
            kept[key] = row
        else:
            notes.append(f"{row['run']}: found twice; kept {best.get('run_dir')}.")
    runs = pd.DataFrame([{k: v for k, v in r.items() if k != "_from_csv"} for r in kept.values()])
    for column in RUN_COLUMNS:
        if column not in runs:
            runs[column] = pd.Series(dtype=object)
    extra = sorted(c for c in runs.columns if c not in RUN_COLUMNS)
    extra.sort(key=lambda c: c.startswith(PROVENANCE_PREFIX))
    runs = runs[[*RUN_COLUMNS, *extra]]
    runs = runs.sort_values(
        ["variant", "labels_per_class", "data_seed", "precision"],
        key=lambda s: s.map(lambda v: (1, str(v)) if isinstance(v, str) else (0, v)),
    ).reset_index(drop=True)
    kept_names = set(runs["run"])
    curve = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    if curve.empty:
        curve = pd.DataFrame(columns=["run", "epoch", CURVE_METRIC])
    curve = curve[curve["run"].isin(kept_names)].drop_duplicates(["run", "epoch"], keep="first")
    return runs, curve[["run", "epoch", CURVE_METRIC]].reset_index(drop=True), notes


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _key_value(value: Any) -> Any:
    """A key cell comparable between run directories and runs.csv (1 == 1.0 == '1')."""
    if value is None or _is_nan(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return int(number) if number.is_integer() else number


def _rank(row: dict[str, Any]) -> tuple:
    epochs = row.get("epochs")
    return (
        row.get("status") == FINISHED,
        -1 if epochs is None or _is_nan(epochs) else float(epochs),
        not row.get("_from_csv", False),
    )


# ------------------------------------------------------------------------------- the table
ROW_KEYS = ["labels", "max_epochs", "precision"]


def aggregate_table(runs: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """One row per (labels, epochs, precision) of finished runs; per column (variant) of the
    spec: n and mean / sample std (ddof=1) of the test error in percent and in errors, and the
    published mean / std of that column's model for that label count (NaN when none)."""
    finished = runs[runs["status"] == FINISHED]
    variants = [spec.variant(choice) for choice, _ in spec.columns]
    finished = finished[finished["variant"].isin(variants)]
    rows = []
    groups = finished.groupby([finished[k].map(_key_value) for k in ROW_KEYS], sort=True)
    for values, members in groups:
        row: dict[str, Any] = dict(zip(ROW_KEYS, values, strict=True))
        tested = sorted({int(t) for t in members["data/test"].dropna()})
        row["test images"] = tested[0] if len(tested) == 1 else None
        for variant in variants:
            sample = members[members["variant"] == variant]
            for metric in ("test/error_pct", "test/errors"):
                numbers = pd.to_numeric(sample[metric], errors="coerce").dropna().to_numpy(float)
                row[f"{variant} {metric} mean"] = numbers.mean() if len(numbers) else math.nan
                row[f"{variant} {metric} std"] = (
                    numbers.std(ddof=1) if len(numbers) > 1 else math.nan
                )
            row[f"{variant} n"] = len(sample)
            mean, std = spec.published_of(variant)[1].get(int(row["labels"]), (math.nan, None))
            row[f"{variant} published mean"] = mean
            row[f"{variant} published std"] = math.nan if std is None else std
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, std: float, decimals: int) -> str:
    if _is_nan(mean):
        return "-"
    text = f"{mean:.{decimals}f}"
    return text if _is_nan(std) else f"{text} ± {std:.{decimals}f}"


def _published_pm(mean: float, std: float, scale: float = 1.0) -> str:
    if _is_nan(mean):
        return "-"
    text = f"{mean * scale:g}"
    return text if _is_nan(std) else f"{text} ± {std * scale:g}"


def table_markdown(table: pd.DataFrame, spec: TableSpec) -> str:
    """The paper's layout: a row per label count; for each column of the spec its test error
    in percent (mean ± std, n runs) and in errors on the test set; the published figures
    beside each column that has them."""
    header = ["labels", "epochs", "precision"]
    cells_of = []
    for choice, name in spec.columns:
        variant = spec.variant(choice)
        header += [f"{name}: test error % (n)", f"{name}: errors"]
        cells_of.append(variant)
        published_name, figures = spec.published_of(variant)
        if figures:
            header += [
                f"{published_name}: test error %",
                f"{published_name}: errors of {spec.published_test_images:,}",
            ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for _, row in table.iterrows():
        tested = row["test images"]
        cells = [str(row["labels"]), str(row["max_epochs"]), str(row["precision"])]
        for variant in cells_of:
            n = int(row[f"{variant} n"])
            percent = _pm(
                row[f"{variant} test/error_pct mean"], row[f"{variant} test/error_pct std"], 2
            )
            errors = _pm(row[f"{variant} test/errors mean"], row[f"{variant} test/errors std"], 1)
            cells += [f"{percent} ({n})" if n else "-", f"{errors} of {tested:,}" if n else "-"]
            if spec.published_of(variant)[1]:
                mean, std = row[f"{variant} published mean"], row[f"{variant} published std"]
                cells += [
                    _published_pm(mean, std),
                    _published_pm(mean, std, spec.published_test_images / 100.0),
                ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- writing
def write_paper_table(
    inputs: list[str | Path],
    spec_path: str | Path,
    out: str | Path | None = None,
    plots: bool = True,
) -> tuple[dict[str, Path], list[str]]:
    """Write ``runs.csv``, ``curves.csv``, ``report.md`` and ``curves.png`` into ``out``
    (default: the spec's folder). Returns (written paths by name, warnings): runs of one table
    cell from different git commits or a dirty tree."""
    spec = load_spec(spec_path)
    runs, curves, notes = load_table_runs(list(inputs), spec)
    if runs.empty:
        raise FileNotFoundError(f"No runs of {spec.task_name or 'the table'} under {inputs}")
    out = Path(out or spec.path.parent)
    out.mkdir(parents=True, exist_ok=True)
    written = {name: out / name for name in ("runs.csv", "curves.csv", "report.md")}
    table = aggregate_table(runs, spec)
    finished = runs[runs["status"] == FINISHED]
    mixed = code_version_warnings(finished, ["labels", "max_epochs", "precision", "variant"])
    selected = finished[finished["tested"] == "best"]
    if len(selected):
        notes.append(
            f"{len(selected)} finished run(s) tested only the checkpoint selected on validation "
            f"(test_ckpt=best), not the last (e.g. {selected['run'].iloc[0]}): run with "
            "test_ckpt=last or both."
        )
    lines = [
        f"# {spec.title}",
        "",
        "Generated by `gendisc-report --table` from `runs.csv` (one row per run); do not edit. "
        "Test error on all test images of the model after the last epoch (`test_last/acc` "
        "when a run tested both checkpoints, else `test/acc`); mean ± sample "
        "std (ddof=1) over finished runs (data seeds), n in brackets; errors = misclassified "
        "test images.",
        f"Published: {spec.published_name}, {spec.published_source}.",
        "",
        table_markdown(table, spec) if not table.empty else "(no finished runs yet)",
        "",
        f"Runs: {len(runs)} ({len(finished)} finished). Code versions of the finished runs: "
        + (", ".join(f"`{sha}`" for sha in dict.fromkeys(finished["run/git_sha"].dropna())) or "-")
        + "; precisions: "
        + (", ".join(f"`{p}`" for p in dict.fromkeys(finished["precision"].dropna())) or "-")
        + ".",
    ]
    if mixed or notes:
        lines += ["", "## Warnings", ""]
        lines += ["- " + line.replace("|", "\\|") for line in [*mixed, *notes]]
    if plots and not curves.empty:
        figure = plot_curves(summarise_curves(curves, runs), spec.variant(spec.columns[0][0]))
        written["curves.png"] = out / "curves.png"
        figure.savefig(written["curves.png"], dpi=110)
        lines += [
            "",
            "## Validation error per epoch",
            "",
            f"1 - `{CURVE_METRIC}` (the evaluated model: for ssl_gan the EMA of D) on the "
            "validation split, per epoch, from each run's CSV log; mean (line) and ± std (band) "
            "over the runs that reached the epoch, finished or not.",
            "",
            "![validation error per epoch](curves.png)",
        ]
    variants = [spec.variant(choice) for choice, _ in spec.columns]
    others = runs[(runs["status"] != FINISHED) | ~runs["variant"].isin(variants)]
    if len(others):
        lines += ["", "## Runs not in the table", ""]
        lines += ["| run | status | epochs | of | where |", "|---|---|---:|---:|---|"]
        for _, row in others.iterrows():
            status = row["status"]
            if row["variant"] not in variants:
                status += f" ({spec.column_group}={row['variant']}: no column of the table)"
            lines.append(
                f"| `{row['run']}` | {status} | {_count(row['epochs'])} | "
                f"{_count(row['max_epochs'])} | `{row['run_dir']}` |"
            )
    runs.to_csv(written["runs.csv"], index=False)
    curves.to_csv(written["curves.csv"], index=False)
    written["report.md"].write_text("\n".join(lines) + "\n")
    return written, mixed


def _count(value: Any) -> str:
    if value is None or _is_nan(value):
        return "-"
    return str(int(float(value)))


def summarise_curves(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Validation error in percent per (labels, variant, precision, epoch): mean, std, n."""
    info = runs.set_index("run")[["labels_per_class", "variant", "precision"]]
    frame = curves.join(info, on="run")
    frame["error_pct"] = 100.0 * (1.0 - frame[CURVE_METRIC].astype(float))
    grouped = frame.groupby(["labels_per_class", "variant", "precision", "epoch"])["error_pct"]
    summary = grouped.agg(["mean", "std", "count"]).reset_index()
    summary["std"] = summary["std"].where(summary["count"] > 1, np.nan)
    return summary
