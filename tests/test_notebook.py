"""notebooks/analysis.ipynb runs top to bottom on a real sweep and is committed without outputs."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbclient import NotebookClient

from gendisc.utils.config import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "notebooks" / "analysis.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_shows_the_tables_and_plots_of_a_sweep(tiny_sweep, monkeypatch):
    monkeypatch.setenv("GENDISC_SWEEP_DIRS", str(tiny_sweep))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    outputs = [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]
    assert not [o for o in outputs if o.output_type == "error"]
    text = json.dumps(
        [o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in outputs]
    )
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert str(tiny_sweep) in text
    # the aggregated table: one row per swept gamma, the failed job counted
    assert "| model.scheduler.gamma | n | failed | test/acc |" in markdown
    assert "| 1 | 1 | 0 |" in markdown and "| 1e+30 | 0 | 1 | - |" in markdown
    assert "NonFiniteLossError" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # test/acc and the cost metrics against gamma
