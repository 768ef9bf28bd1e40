"""notebooks/sensitivity.ipynb executes headless (nbclient) on a hand-made multirun folder and shows
the same numbers as prefopt.analysis.

Run: `.venv/bin/python -m pytest tests/test_analyze_notebook.py -q` (needs nbclient, nbformat, ipykernel).
"""

from pathlib import Path

import nbformat
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
