"""A run directory whose run finished is left as it is by ``ckpt_path=last``."""

from __future__ import annotations

import json

from gendisc.train import train

TINY = ["trainer.max_epochs=2", "data.labels_per_class=3", "callbacks.rich_progress_bar=null"]


def test_repeating_a_finished_run_with_ckpt_path_last_changes_nothing(make_cfg, tmp_path):
    first = train(make_cfg(TINY))
    metrics_file = tmp_path / "run" / "metrics.json"
    before = metrics_file.read_text()
    stamp = metrics_file.stat().st_mtime_ns
    assert json.loads(before)["epochs"] == 2

    again = train(make_cfg([*TINY, "ckpt_path=last"]))
    assert metrics_file.read_text() == before and metrics_file.stat().st_mtime_ns == stamp
    assert again["test/acc"] == first["test/acc"] == json.loads(before)["test/acc"]

    # more epochs asked for: the run is not finished, so it continues from its checkpoint
    longer = train(make_cfg(["trainer.max_epochs=3", *TINY[1:], "ckpt_path=last"]))
    assert json.loads(metrics_file.read_text())["epochs"] == 3
    assert longer["epochs"] == 3
