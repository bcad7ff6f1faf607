"""How far each model of this folder's table got, and where its curve points.

Reads ``runs.csv`` and ``curves.csv`` (written by ``gendisc-report --table table.yaml ...``) and
prints, per column (experiment): the mean held-out error at its first and last epoch, the
least-squares slope of the mean error against log10(epoch) over the second half of the epochs
(points per tenfold more epochs) and that line's value at the paper's epoch budget. A straight
line in log-epochs is a crude guide, not a prediction: read it as "the trend so far".

    python experiments/ssl_vae/mnist/extrapolate.py [folder]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

# passes over the unlabeled data in the papers (Kingma et al. 2014: 3000; Maaløe et al. 2016: 1000)
PAPER_EPOCHS = {"m2_mnist": 3000, "m1m2_mnist": 3000, "adgm_mnist": 1000, "sdgm_mnist": 1000}


def trends(folder: Path) -> pd.DataFrame:
    """One row per variant: epochs, first/last mean error (%), slope per decade, extrapolation."""
    runs = pd.read_csv(folder / "runs.csv")
    runs = runs[runs["status"] == "finished"]
    curves = pd.read_csv(folder / "curves.csv").merge(runs[["run", "variant"]], on="run")
    curves["error_pct"] = 100.0 * (1.0 - curves["val/acc"])
    rows = []
    for variant, frame in curves.groupby("variant"):
        mean = frame.groupby("epoch")["error_pct"].mean()
        epochs = mean.index.to_numpy() + 1  # epoch 1 = after one pass
        half = epochs >= epochs.max() / 2
        slope, intercept = np.polyfit(np.log10(epochs[half]), mean.to_numpy()[half], 1)
        budget = PAPER_EPOCHS.get(str(variant))
        rows.append(
            {
                "variant": variant,
                "seeds": frame["run"].nunique(),
                "epochs": int(epochs.max()),
                "first_error_pct": round(float(mean.iloc[0]), 2),
                "last_error_pct": round(float(mean.iloc[-1]), 2),
                "slope_per_decade": round(float(slope), 2),
                "paper_epochs": str(budget) if budget else None,
                "line_at_paper_epochs": (
                    round(float(intercept + slope * np.log10(budget)), 2) if budget else None
                ),
            }
        )
    return pd.DataFrame(rows)


if __name__ == "__main__":
    here = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    table = trends(here)
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join("-" if pd.isna(v) else str(v) for v in row) + " |")
