"""notebooks/sensitivity.ipynb executes headless (nbclient) on a hand-made multirun folder and shows
the same numbers as prefopt.analysis; the committed notebook carries outputs executed from the
committed study (docs/results/beta_sensitivity): re-run `jupyter execute --inplace
notebooks/sensitivity.ipynb` whenever those results change.

Run: `.venv/bin/python -m pytest tests/test_analyze_notebook.py -q` (needs nbclient, nbformat, ipykernel).
"""

from pathlib import Path

import nbformat
import pandas as pd
from nbclient import NotebookClient
from test_analyze import SCORES, write_run

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "sensitivity.ipynb"


def test_notebook_executes_on_a_multirun_folder(tmp_path, monkeypatch):
    for method, grid in SCORES.items():
        for beta, scores in grid.items():
            for seed, score in enumerate(scores):
                write_run(tmp_path / "multirun" / method / f"beta={beta},seed={seed}", method, beta, seed, score,
                          steps=20 if method == "rmipo" else 0)
    monkeypatch.setenv("PREFOPT_STUDY", str(tmp_path / "multirun"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not any(o.output_type == "error" for o in c.outputs) for c in code)
    summary = next(c for c in code if "method_summary(" in c.source)
    html = summary.outputs[0]["data"]["text/html"]
    assert "<th>dpo</th>" in html and "<td>0.82</td>" in html  # dpo's best
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # score vs β, reward vs KL, margin and δ over training


def test_committed_notebook_shows_the_committed_study():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.outputs for c in code), "commit the notebook with its outputs (jupyter execute --inplace)"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    html = next(c for c in code if "method_summary(" in c.source).outputs[0]["data"]["text/html"]
    committed = pd.read_csv(NOTEBOOK.parents[1] / "docs" / "results" / "beta_sensitivity" / "sensitivity.csv")
    for method, best in zip(committed["method"], committed["best"]):
        assert f"<th>{method}</th>" in html and f"{best:.6f}" in html, (method, best)
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3
