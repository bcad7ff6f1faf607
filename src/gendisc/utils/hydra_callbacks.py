"""Hydra callbacks: things done once per sweep, outside any single job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gendisc.callbacks.run_report import print_results_table


class SweepSummary(Callback):
    """At the end of a multirun, print every job's results side by side (one column a job)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs, labels = [], []
        for job_dir in sorted(sweep_dir.iterdir(), key=lambda p: (len(p.name), p.name)):
            overrides_file = job_dir / ".hydra" / "overrides.yaml"
            if not overrides_file.is_file():
                continue
            overrides = [o for o in OmegaConf.load(overrides_file) if not o.startswith("hydra.")]
            labels.append(overrides)
            metrics_file, failure_file = job_dir / "metrics.json", job_dir / "failure.json"
            if metrics_file.is_file():
                runs.append(json.loads(metrics_file.read_text()))
            elif failure_file.is_file():
                runs.append(
                    {"test/acc": "failed: " + json.loads(failure_file.read_text())["error"][:40]}
                )
            else:
                runs.append({})
        if runs:
            shared = set.intersection(*(set(label) for label in labels)) if labels else set()
            names = [" ".join(o for o in label if o not in shared) or "job" for label in labels]
            print_results_table(*runs, names=names, title=f"Sweep {sweep_dir}")
