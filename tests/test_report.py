"""gendisc-report on fixture sweeps written by the test: statuses, grouping, mean/std, files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gendisc.report import (
    aggregate,
    code_version_warnings,
    default_group_by,
    load_runs,
    plot,
    to_markdown,
    write_report,
)
from gendisc.report.cli import main
from gendisc.report.paper_table import (
    RUN_KEY,
    aggregate_table,
    load_spec,
    load_table_runs,
    write_paper_table,
)
from gendisc.report.write import CodeVersionWarning

# (model, batch size, data_seed) -> test/acc; one failed and one unfinished run besides
ACCURACY = {
    ("classifier", 16, 0): 0.70,
    ("classifier", 16, 1): 0.74,
    ("classifier", 16, 2): 0.75,
    ("classifier", 64, 0): 0.80,
    ("classifier", 64, 1): 0.82,
    ("ssl_gan", 16, 0): 0.90,
    ("ssl_gan", 16, 1): 0.94,
    ("ssl_gan", 64, 0): 0.91,
}


def make_run(
    sweep: Path, job: int, overrides: list[str], metrics: dict | None, failure: str | None = None
) -> Path:
    run = sweep / str(job)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if failure is not None:
        (run / "failure.json").write_text(
            json.dumps({"status": "failed", "error_type": "NonFiniteLossError", "error": failure})
        )
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    job = 0
    for (model, batch, seed), accuracy in ACCURACY.items():
        overrides = [f"model={model}", f"data.batch_size={batch}", f"data.data_seed={seed}"]
        metrics = {
            "test/acc": accuracy,
            "time/fit_s": 10.0 * (seed + 1),
            "test/confusion_matrix": [[1, 0], [0, 1]],
            "gen/fid": "nan",
        }
        make_run(sweep, job, overrides, metrics)
        job += 1
    make_run(sweep, job, ["model=ssl_gan", "data.batch_size=64", "data.data_seed=1"], None, "NaN")
    make_run(sweep, job + 1, ["model=ssl_gan", "data.batch_size=64", "data.data_seed=2"], None)
    return sweep


def test_load_runs_reads_overrides_statuses_and_scalar_metrics(sweep):
    runs = load_runs(sweep)
    assert len(runs) == 10 and list(runs["job"][:3]) == ["0", "1", "2"]
    assert runs.attrs["override_keys"] == ["model", "data.batch_size", "data.data_seed"]
    assert runs["status"].value_counts().to_dict() == {
        "completed": 8,
        "failed": 1,
        "incomplete": 1,
    }
    assert runs.loc[8, "error"] == "NaN" and runs.loc[8, "error_type"] == "NonFiniteLossError"
    assert "test/confusion_matrix" not in runs  # lists stay in metrics.json
    assert np.isnan(runs.loc[0, "gen/fid"])  # non-finite values come back as numbers
    assert runs.loc[0, "data.batch_size"] == 16 and isinstance(runs.loc[0, "data.batch_size"], int)


def test_a_failure_newer_than_the_metrics_marks_the_run_failed(tmp_path):
    run = make_run(tmp_path / "s", 0, ["seed=1"], {"test/acc": 0.5})
    old = time.time() - 100
    os.utime(run / "metrics.json", (old, old))
    (run / "failure.json").write_text(json.dumps({"error_type": "RuntimeError", "error": "x"}))
    assert load_runs(tmp_path / "s").loc[0, "status"] == "failed"


def test_aggregate_means_and_sample_stds_over_seeds(sweep):
    runs = load_runs(sweep)
    assert default_group_by(runs) == ["model", "data.batch_size"]  # seeds are aggregated over
    table = aggregate(runs, metrics=["test/acc", "time/fit_s"])
    assert list(zip(table["model"], table["data.batch_size"], strict=True)) == [
        ("classifier", 16),
        ("classifier", 64),
        ("ssl_gan", 16),
        ("ssl_gan", 64),
    ]
    for _, row in table.iterrows():
        values = [
            acc
            for (model, batch, _), acc in ACCURACY.items()
            if (model, batch) == (row["model"], row["data.batch_size"])
        ]
        assert row["test/acc mean"] == pytest.approx(np.mean(values))
        assert row["test/acc n"] == len(values)
        if len(values) > 1:
            assert row["test/acc std"] == pytest.approx(np.std(values, ddof=1))
        else:
            assert np.isnan(row["test/acc std"])
    last = table.iloc[3]
    assert (last["runs"], last["completed"], last["failed"], last["incomplete"]) == (3, 1, 1, 1)
    assert table.iloc[0]["test/acc std"] == pytest.approx(0.026457513, rel=1e-6)
    markdown = to_markdown(table)
    assert "| classifier | 16 | 3 | 0 | 0 | 0.7300 ± 0.0265 | 20.0 ± 10.0 |" in markdown
    assert "| ssl_gan | 64 | 1 | 1 | 1 | 0.9100 | 10.0 |" in markdown


def test_aggregate_by_chosen_keys_pools_the_rest(sweep):
    table = aggregate(load_runs(sweep), group_by=["model"], metrics=["test/acc"])
    classifier = [v for (m, _, _), v in ACCURACY.items() if m == "classifier"]
    assert table.iloc[0]["test/acc mean"] == pytest.approx(np.mean(classifier))
    assert table.iloc[0]["test/acc std"] == pytest.approx(np.std(classifier, ddof=1))
    pooled = aggregate(load_runs(sweep), group_by=[], metrics=["test/acc"])
    assert len(pooled) == 1 and pooled.iloc[0]["test/acc n"] == len(ACCURACY)


def test_plot_draws_one_line_per_method_with_error_bars(sweep):
    runs = load_runs(sweep)
    table = aggregate(runs, metrics=["test/acc"])
    figure = plot(table, "test/acc", x="data.batch_size", hue="model", runs=runs)
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        "model=classifier",
        "model=ssl_gan",
    ]
    assert axes.get_xscale() == "linear" and axes.get_ylabel() == "test/acc"
    first = axes.containers[0]  # errorbar container of the classifier line
    xs, ys = first.lines[0].get_data()
    assert list(xs) == [16, 64] and list(ys) == pytest.approx([0.73, 0.81])


def test_cli_writes_report_files_next_to_the_sweep(sweep, capsys):
    assert main([str(sweep), "--metrics", "test/acc", "time/fit_s"]) == 0
    report = (sweep / "report.md").read_text()
    assert "Runs: 10 (8 completed, 1 failed, 1 incomplete)" in report
    assert "aggregated over data.data_seed" in report
    assert "0.7300 ± 0.0265" in report and "NonFiniteLossError: NaN" in report
    assert "![test/acc vs data.batch_size](plot_test_acc_vs_data.batch_size.png)" in report
    for name in ("report.csv", "runs.csv", "plot_test_acc_vs_data.batch_size.png"):
        assert (sweep / name).stat().st_size > 100, name
    csv_lines = (sweep / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,data.batch_size,runs,completed,failed,incomplete")
    assert "0.7300 ± 0.0265" in capsys.readouterr().out


def test_cli_pivot_lays_a_metric_out_by_the_x_key(sweep, capsys):
    """--pivot: one row per model, one column per batch size, the main table's mean ± std."""
    args = [str(sweep), "--metrics", "time/fit_s", "--x", "data.batch_size", "--no-plots"]
    assert main([*args, "--pivot", "test/acc"]) == 0
    report = (sweep / "report.md").read_text()
    pivot = report.split("### test/acc (mean ± std) by data.batch_size\n\n")[1].splitlines()
    assert pivot[0] == "| model | data.batch_size=16 | data.batch_size=64 |"
    assert pivot[2] == "| classifier | 0.7300 ± 0.0265 | 0.8100 ± 0.0141 |"
    assert pivot[3].startswith("| ssl_gan | 0.9200 ± 0.0283 | 0.9100 |")
    assert main([str(sweep), "--pivot", "test/acc", "--no-plots"]) == 2  # no --x
    assert "--pivot needs --x" in capsys.readouterr().err


def test_cli_group_by_and_out_and_several_sweeps(sweep, tmp_path):
    other = tmp_path / "other"
    make_run(
        other, 0, ["model=classifier", "data.batch_size=16", "data.data_seed=3"], {"test/acc": 0.71}
    )
    out = tmp_path / "out"
    assert main([str(sweep), str(other), "--group-by", "model", "--out", str(out)]) == 0
    table = (out / "report.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in table] == ["model", "classifier", "ssl_gan"]
    assert "Runs: 11" in (out / "report.md").read_text()
    assert (out / "plot_test_acc_vs_group.png").is_file()  # no ordered key: one point per method
    assert not (sweep / "report.md").exists()


def test_a_runs_csv_stands_for_its_runs(sweep, tmp_path):
    """An earlier report's runs.csv (runs of another session, provenance kept) joins new sweep
    directories: the same table as from the run directories themselves."""
    first = tmp_path / "first"
    assert main([str(sweep), "--out", str(first), "--no-plots"]) == 0
    other = tmp_path / "other"
    make_run(
        other, 0, ["model=classifier", "data.batch_size=16", "data.data_seed=3"], {"test/acc": 0.71}
    )
    from_dirs, from_csv = tmp_path / "dirs", tmp_path / "csv"
    assert main([str(sweep), str(other), "--out", str(from_dirs), "--no-plots"]) == 0
    assert main([str(first / "runs.csv"), str(other), "--out", str(from_csv), "--no-plots"]) == 0
    assert (from_csv / "report.csv").read_text() == (from_dirs / "report.csv").read_text()
    earlier = pd.read_csv(first / "runs.csv", dtype=str, keep_default_na=False)
    merged = pd.read_csv(from_csv / "runs.csv", dtype=str, keep_default_na=False)
    assert merged.iloc[: len(earlier)][list(earlier.columns)].equals(earlier)  # rows as written
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main([str(bad)]) == 2


def test_cli_missing_directory_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "No such sweep directory" in capsys.readouterr().err


# ------------------------------------------------------------------- provenance (run/* keys)
SHA_A, SHA_B = "a" * 40, "0123456789" * 4


def provenance(sha: str, dirty: bool = False) -> dict:
    """The run/* entries a run writes into metrics.json (values that look like numbers too)."""
    return {
        "run/git_sha": sha,
        "run/git_dirty": dirty,
        "run/gendisc_version": "0.1",
        "run/hostname": "1234",
        "run/device": "cpu",
        "run/threads": 1,
        "run/started_at": "2024-05-01T12:00:00+02:00",
        "run/precision": "32-true",
        "run/world_size": 1,
    }


@pytest.fixture
def code_sweep(tmp_path: Path) -> Path:
    """classifier: seeds 0, 1 on commit A and seed 2 on commit B; ssl_gan: two runs on A;
    one failed classifier run (no metrics.json, hence no provenance)."""
    sweep = tmp_path / "code_sweep"
    jobs = [
        ("classifier", 0, 0.70, SHA_A),
        ("classifier", 1, 0.72, SHA_A),
        ("classifier", 2, 0.80, SHA_B),
        ("ssl_gan", 0, 0.90, SHA_A),
        ("ssl_gan", 1, 0.92, SHA_A),
    ]
    for job, (model, seed, accuracy, sha) in enumerate(jobs):
        overrides = [f"model={model}", f"data.data_seed={seed}"]
        make_run(sweep, job, overrides, {"test/acc": accuracy, **provenance(sha)})
    make_run(sweep, len(jobs), ["model=classifier", "data.data_seed=3"], None, "NaN")
    return sweep


def test_runs_keep_provenance_as_written(code_sweep):
    runs = load_runs(code_sweep)
    assert set(runs.columns[-9:]) == set(provenance(SHA_A))  # after the metrics
    done = runs[runs["status"] == "completed"]
    assert list(done["run/git_sha"]) == [SHA_A, SHA_A, SHA_B, SHA_A, SHA_A]
    assert done["run/gendisc_version"].tolist() == ["0.1"] * 5  # text, not the number 0.1
    assert done["run/hostname"].tolist() == ["1234"] * 5
    assert done["run/git_dirty"].tolist() == [False] * 5 and runs.loc[2, "run/threads"] == 1
    assert runs.loc[5, "status"] == "failed" and not isinstance(runs.loc[5, "run/git_sha"], str)


def test_cli_warns_when_a_group_mixes_commits(code_sweep, capsys):
    assert main([str(code_sweep), "--metrics", "test/acc", "--no-plots"]) == 0
    err = capsys.readouterr().err
    expected = (
        f"group model=classifier: runs from different or uncommitted code: "
        f"git_sha {SHA_A} (2 runs); {SHA_B} (1 run)"
    )
    assert f"warning: {expected}" in err
    assert "ssl_gan" not in err  # both its runs on one clean commit
    report = (code_sweep / "report.md").read_text()
    assert f"## Warnings\n\n- **Warning**: {expected}\n" in report
    header = (code_sweep / "runs.csv").read_text().splitlines()[0].split(",")
    assert {"run/git_sha", "run/git_dirty", "run/started_at", "run/device"} <= set(header)
    runs_csv = pd.read_csv(code_sweep / "runs.csv", dtype={"run/git_sha": str})
    assert runs_csv["run/git_sha"].tolist()[:3] == [SHA_A, SHA_A, SHA_B]


def test_cli_groups_by_git_sha(code_sweep, capsys):
    out = code_sweep / "by_sha"
    args = [str(code_sweep), "--group-by", "run/git_sha", "--metrics", "test/acc", "--out"]
    assert main([*args, str(out)]) == 0
    assert "warning" not in capsys.readouterr().err  # one clean commit per group
    table = pd.read_csv(out / "report.csv", dtype={"run/git_sha": str})
    assert table["run/git_sha"].tolist()[:2] == [SHA_B, SHA_A]  # sorted as text; null last
    assert pd.isna(table["run/git_sha"].iloc[2]) and table["failed"].tolist() == [0, 0, 1]
    assert table["test/acc mean"].tolist()[:2] == pytest.approx(
        [0.80, np.mean([0.7, 0.72, 0.9, 0.92])]
    )
    assert "Grouped by: run/git_sha;" in (out / "report.md").read_text()
    both = aggregate(load_runs(code_sweep), group_by=["model", "run/git_sha"], metrics=["test/acc"])
    assert list(zip(both["model"], both["run/git_sha"], both["completed"], strict=True)) == [
        ("classifier", SHA_B, 1),
        ("classifier", SHA_A, 2),
        ("classifier", None, 0),
        ("ssl_gan", SHA_A, 2),
    ]


def test_a_dirty_tree_in_a_group_is_warned_about(tmp_path):
    sweep = tmp_path / "dirty"
    make_run(sweep, 0, ["data.data_seed=0"], {"test/acc": 0.5, **provenance(SHA_A)})
    make_run(sweep, 1, ["data.data_seed=1"], {"test/acc": 0.6, **provenance(SHA_A, dirty=True)})
    make_run(sweep, 2, ["data.data_seed=2"], {"test/acc": 0.7})  # an older run: no provenance
    runs = load_runs(sweep)
    assert code_version_warnings(runs, []) == [
        f"group (all runs): runs from different or uncommitted code: git_sha {SHA_A} "
        "(2 runs, 1 from a dirty tree)"
    ]
    with pytest.warns(CodeVersionWarning, match="1 from a dirty tree"):
        written = write_report(sweep, metrics=["test/acc"], plots=False)
    assert "- **Warning**: group (all runs)" in written["report.md"].read_text()
    clean = load_runs(sweep).drop(index=1)
    assert code_version_warnings(clean, []) == []  # one clean run and one without provenance


# ------------------------------------------------------------------- the paper's table (--table)

# (labels per class, ablation, data_seed) -> misclassified test images of 10,000 (finished runs)
TABLE_ERRORS = {
    (10, None, 0): 90,
    (10, None, 1): 95,
    (10, None, 2): 100,
    (10, None, 3): 87,
    (10, None, 4): 93,
    (2, None, 0): 1500,
    (2, None, 1): 2100,
    (2, None, 2): 1200,
    (10, "no_unlabeled", 0): 2500,
    (10, "no_unlabeled", 1): 2700,
    (10, "no_unlabeled", 2): 2650,
}
SHA = "a" * 40


def table_spec(tmp_path: Path, published: dict | None = None) -> Path:
    """A table spec like experiments/salimans_2016/table.yaml, with the test's own figures."""
    spec = {
        "title": "Test table",
        "task_name": "salimans_mnist_table",
        "column_group": "ablation",
        "columns": [
            {"ablation": None, "name": "gendisc"},
            {"ablation": "no_unlabeled", "name": "labels only"},
        ],
        "published": {
            "name": "Paper",
            "source": "table 9 of the test",
            "test_images": 10000,
            "error_percent": published or {20: [7.5, 2.25], 100: [0.61, 0.033]},
        },
    }
    path = tmp_path / "spec" / "table.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def make_table_run(
    root: Path,
    per_class: int,
    ablation: str | None,
    seed: int,
    errors: int | None,
    epochs: int = 300,
    max_epochs: int = 300,
    sha: str = SHA,
    task: str = "salimans_mnist_table",
    curve_epochs: int | None = None,
) -> Path:
    """A run directory as the table sweep leaves it: .hydra files, csv log, metrics.json
    (``errors`` None: no metrics.json yet, a run still going or stopped)."""
    precision = "32-true"
    name = f"lpc{per_class}_seed{seed}_{ablation or 'full'}_{precision}"
    overrides = [f"data.labels_per_class={per_class}", f"data.data_seed={seed}"]
    overrides += [f"ablation={ablation}"] if ablation else []
    run = make_run(root, name, overrides, None)  # type: ignore[arg-type]
    config = {
        "task_name": task,
        "data": {"labels_per_class": per_class, "data_seed": seed},
        "trainer": {"max_epochs": max_epochs, "precision": precision},
    }
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    choices = {"hydra": {"runtime": {"choices": {"ablation": ablation, "data": "mnist"}}}}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(choices))
    logged = epochs if curve_epochs is None else curve_epochs
    log = run / "csv" / "version_0"
    log.mkdir(parents=True)
    pd.DataFrame(
        {"epoch": range(logged), "val/acc": [0.5 + 0.4 * e / max(logged, 1) for e in range(logged)]}
    ).to_csv(log / "metrics.csv", index=False)
    if errors is not None:
        metrics = {
            "test/acc": 1 - errors / 10000,
            "data/test": 10000,
            "data/labeled": per_class * 10,
            "data_seed": seed,
            "epochs": epochs,
            **provenance(sha),
            "run/precision": precision,
        }
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture
def table_runs(tmp_path: Path) -> Path:
    """The finished runs of TABLE_ERRORS and five that must stay out of the table."""
    root = tmp_path / "machine_a"
    for (per_class, ablation, seed), errors in TABLE_ERRORS.items():
        make_table_run(root, per_class, ablation, seed, errors)
    make_table_run(root, 10, None, 5, 50, epochs=120, max_epochs=300)  # earlier budget
    make_table_run(root, 20, None, 0, None, curve_epochs=40)  # still running
    make_table_run(root, 5, None, 0, None, curve_epochs=3).joinpath("failure.json").write_text(
        json.dumps({"error_type": "NonFiniteLossError", "error": "nan"})
    )
    make_table_run(root, 10, "minimax", 0, 40)  # a variant that is no column of the table
    make_table_run(root, 10, None, 9, 10, task="salimans_mnist")  # another experiment
    return root


def _expected(per_class: int, ablation: str | None) -> np.ndarray:
    return np.array(
        [e for (k, a, _), e in TABLE_ERRORS.items() if (k, a) == (per_class, ablation)], float
    )


def test_paper_table_means_stds_and_counts_of_finished_runs(table_runs, tmp_path):
    spec = load_spec(table_spec(tmp_path))
    runs, curves, notes = load_table_runs([table_runs], spec)
    statuses = runs.set_index("run")["status"]
    assert statuses["lpc10_seed5_full_32-true"] == "earlier budget"
    assert statuses["lpc20_seed0_full_32-true"] == "incomplete"
    assert statuses["lpc5_seed0_full_32-true"] == "failed"
    assert runs.set_index("run").loc["lpc20_seed0_full_32-true", "epochs"] == 40  # from its log
    assert "lpc10_seed9_full_32-true" not in statuses  # task salimans_mnist: left out, noted
    assert any("other tasks" in note for note in notes)
    assert set(curves["run"]) == set(runs["run"])
    table = aggregate_table(runs, spec).set_index("labels")
    assert list(table.index) == [20, 100]  # finished runs only: no 50 or 200 labels row
    for labels, per_class in ((20, 2), (100, 10)):
        errors = _expected(per_class, None)
        row = table.loc[labels]
        assert row["full n"] == len(errors)
        assert row["full test/errors mean"] == pytest.approx(errors.mean())
        assert row["full test/errors std"] == pytest.approx(errors.std(ddof=1))
        assert row["full test/error_pct mean"] == pytest.approx(errors.mean() / 100)
        assert row["full test/error_pct std"] == pytest.approx(errors.std(ddof=1) / 100)
    baseline = _expected(10, "no_unlabeled")
    assert table.loc[100, "no_unlabeled n"] == 3 and table.loc[20, "no_unlabeled n"] == 0
    assert table.loc[100, "no_unlabeled test/errors mean"] == pytest.approx(baseline.mean())
    # the published figures are the spec's
    published = ["full published mean", "full published std"]
    assert tuple(table.loc[100, published]) == (0.61, 0.033)
    assert tuple(table.loc[20, published]) == (7.5, 2.25)
    assert np.isnan(table.loc[100, "no_unlabeled published mean"])  # none given for it


def test_paper_table_report_layout(table_runs, tmp_path):
    written, mixed = write_paper_table([table_runs], table_spec(tmp_path), out=tmp_path / "out")
    assert mixed == []
    assert set(written) == {"runs.csv", "curves.csv", "report.md", "curves.png"}
    report = written["report.md"].read_text()
    lines = report.splitlines()
    header = next(line for line in lines if line.startswith("| labels"))
    assert header == (
        "| labels | epochs | precision | gendisc: test error % (n) | gendisc: errors | "
        "Paper: test error % | Paper: errors of 10,000 | labels only: test error % (n) | "
        "labels only: errors |"
    )
    rows = [line for line in lines if line.startswith(("| 20 |", "| 100 |"))]
    ours, base = _expected(10, None), _expected(10, "no_unlabeled")
    assert rows[1] == (
        f"| 100 | 300 | 32-true | {ours.mean() / 100:.2f} ± {ours.std(ddof=1) / 100:.2f} (5) | "
        f"{ours.mean():.1f} ± {ours.std(ddof=1):.1f} of 10,000 | 0.61 ± 0.033 | 61 ± 3.3 | "
        f"{base.mean() / 100:.2f} ± {base.std(ddof=1) / 100:.2f} (3) | "
        f"{base.mean():.1f} ± {base.std(ddof=1):.1f} of 10,000 |"
    )
    assert rows[0].endswith("| 7.5 ± 2.25 | 750 ± 225 | - | - |")
    assert "table 9 of the test" in report  # the source, from the spec
    left_out = report.split("## Runs not in the table")[1]
    for name in ("lpc10_seed5_full", "lpc20_seed0_full", "lpc5_seed0_full", "lpc10_seed0_minimax"):
        assert name in left_out
    runs = pd.read_csv(written["runs.csv"])
    assert {"run/precision", "run/git_sha", "epochs", "max_epochs", "test/errors"} <= set(runs)
    assert list(runs.columns[:6]) == ["run", *RUN_KEY]


def test_paper_table_merges_machines_and_regenerates_from_runs_csv(table_runs, tmp_path):
    """Runs from two machines make one table; its runs.csv (plus a new run directory) makes
    the same table again, a run seen twice counted once."""
    spec = table_spec(tmp_path)
    other = tmp_path / "machine_b"
    make_table_run(other, 10, None, 6, 91)
    make_table_run(other, 10, None, 0, 90)  # a copy of machine A's seed 0
    merged, _ = write_paper_table([table_runs, other], spec, out=tmp_path / "merged")
    report = merged["report.md"].read_text()
    assert "lpc10_seed0_full_32-true: found twice" in report
    runs = pd.read_csv(merged["runs.csv"])
    assert (runs["run"] == "lpc10_seed0_full_32-true").sum() == 1
    ours = np.append(_expected(10, None), 91)
    row = next(line for line in report.splitlines() if line.startswith("| 100 |"))
    assert f"{ours.mean() / 100:.2f} ± {ours.std(ddof=1) / 100:.2f} (6)" in row

    again, _ = write_paper_table([merged["runs.csv"]], spec, out=tmp_path / "again")

    def table(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines() if line.startswith("| ")]

    assert table(again["report.md"]) == table(merged["report.md"])
    assert pd.read_csv(again["curves.csv"]).equals(pd.read_csv(merged["curves.csv"]))
    # a seed that finished later elsewhere joins the committed table
    newer = tmp_path / "machine_c"
    make_table_run(newer, 10, None, 5, 88)  # machine A's seed 5 had not finished
    grown, _ = write_paper_table([merged["runs.csv"], newer], spec, out=tmp_path / "grown")
    assert "(7)" in next(row for row in table(grown["report.md"]) if row.startswith("| 100 |"))


def test_paper_table_warns_when_a_cell_mixes_code_versions(tmp_path):
    root = tmp_path / "runs"
    make_table_run(root, 10, None, 0, 90, sha="a" * 40)
    make_table_run(root, 10, None, 1, 95, sha="b" * 40)
    written, mixed = write_paper_table([root], table_spec(tmp_path), out=tmp_path / "out")
    assert len(mixed) == 1 and "a" * 40 in mixed[0] and "b" * 40 in mixed[0]
    assert "## Warnings" in written["report.md"].read_text()


def test_cli_table_and_a_bad_spec(table_runs, tmp_path, capsys):
    assert main(["--table", str(table_spec(tmp_path)), str(table_runs), "--no-plots"]) == 0
    assert (tmp_path / "spec" / "report.md").is_file()  # beside the spec by default
    assert not (tmp_path / "spec" / "curves.png").exists()
    assert "| 100 | 300 | 32-true |" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: no columns\n")
    assert main(["--table", str(bad), str(table_runs)]) == 2
    assert "column_group" in capsys.readouterr().err


def test_paper_table_columns_of_several_experiments_each_beside_its_published_figure(tmp_path):
    """A table of several models (column_group: experiment), each column with its own paper's
    figures; a run that tested both checkpoints enters with its last one (test_last/acc)."""
    root = tmp_path / "runs"
    errors = {("m2", 0): 900, ("m2", 1): 1100, ("adgm", 0): 300, ("adgm", 1): 500}
    for (experiment, seed), count in errors.items():
        run = make_table_run(root, 10, None, seed, count, epochs=10, max_epochs=10)
        name = f"{experiment}_seed{seed}"
        run = run.rename(run.with_name(name))
        choices = {"hydra": {"runtime": {"choices": {"experiment": experiment}}}}
        (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(choices))
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["test_last/acc"] = metrics["test/acc"]
        metrics["test/acc"] = 0.5  # the checkpoint selected on validation: not the table's
        (run / "metrics.json").write_text(json.dumps(metrics))
    spec = {
        "title": "Two models",
        "column_group": "experiment",
        "columns": [
            {
                "experiment": "m2",
                "name": "M2",
                "published_name": "Kingma",
                "error_percent": {100: [11.97, 1.71]},
            },
            {
                "experiment": "adgm",
                "name": "ADGM",
                "published_name": "Maaloe",
                "error_percent": {100: [0.96, 0.02]},
            },
        ],
        "published": {"name": "papers", "source": "REFERENCE.md", "test_images": 10000},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    written, _ = write_paper_table([root], path, out=tmp_path / "out")
    lines = written["report.md"].read_text().splitlines()
    header = next(line for line in lines if line.startswith("| labels"))
    assert header == (
        "| labels | epochs | precision | M2: test error % (n) | M2: errors | Kingma: test error % "
        "| Kingma: errors of 10,000 | ADGM: test error % (n) | ADGM: errors | Maaloe: test error "
        "% | Maaloe: errors of 10,000 |"
    )
    row = next(line for line in lines if line.startswith("| 100 |"))
    m2, adgm = np.array([900.0, 1100.0]), np.array([300.0, 500.0])
    assert row == (
        f"| 100 | 10 | 32-true | 10.00 ± {m2.std(ddof=1) / 100:.2f} (2) | "
        f"1000.0 ± {m2.std(ddof=1):.1f} of 10,000 | 11.97 ± 1.71 | 1197 ± 171 | "
        f"4.00 ± {adgm.std(ddof=1) / 100:.2f} (2) | 400.0 ± {adgm.std(ddof=1):.1f} of 10,000 | "
        "0.96 ± 0.02 | 96 ± 2 |"
    )
    assert set(pd.read_csv(written["runs.csv"])["tested"]) == {"last"}


def test_paper_table_warns_about_runs_tested_on_the_selected_checkpoint(tmp_path):
    root = tmp_path / "runs"
    run = make_table_run(root, 10, None, 0, 90)
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "test_ckpt": "best"}))
    written, _ = write_paper_table([root], table_spec(tmp_path), out=tmp_path / "out")
    assert "tested only the checkpoint selected on validation" in written["report.md"].read_text()


def test_the_salimans_spec_holds_the_papers_mnist_figures():
    spec = load_spec(Path(__file__).resolve().parents[1] / "experiments/salimans_2016/table.yaml")
    assert set(spec.published) == {20, 50, 100, 200}
    assert spec.task_name == "salimans_mnist_table" and spec.columns[0][0] is None
    assert "REFERENCE.md section 3" in spec.published_source


def test_the_ssl_vae_mnist_spec_holds_the_papers_figures():
    root = Path(__file__).resolve().parents[1]
    spec = load_spec(root / "experiments/ssl_vae/mnist/table.yaml")
    assert spec.column_group == "experiment" and spec.task_name is None
    figures = {variant: pair[1][100] for variant, pair in spec.column_published.items()}
    assert figures == {
        "m2_mnist": (11.97, 1.71),
        "m1m2_mnist": (3.33, 0.14),
        "adgm_mnist": (0.96, 0.02),
    }
    for variant, _ in spec.columns:  # every column is an experiment config
        assert (root / "conf/experiment" / f"{variant}.yaml").is_file(), variant
