"""notebooks/sensitivity.ipynb executes headless (nbclient) on a hand-made multirun folder and shows
the same numbers as prefopt.analysis; the committed notebook carries outputs executed from the
committed study (docs/results/beta_sensitivity): re-run `.venv/bin/jupyter execute --inplace
notebooks/sensitivity.ipynb` whenever those results change (`make notebook` runs it into outputs/ instead).
`PREFOPT_STUDY` relative to the directory the command ran in is found although the kernel runs in notebooks/.

Run: `.venv/bin/python -m pytest tests/test_analyze_notebook.py -q` (needs nbclient, nbformat, ipykernel).
"""

from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from test_analyze import SCORES, write_run

from prefopt.analysis import resolve_study

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "sensitivity.ipynb"


def write_multirun(folder: Path) -> None:
    for method, grid in SCORES.items():
        for beta, scores in grid.items():
            for seed, score in enumerate(scores):
                write_run(folder / method / f"beta={beta},seed={seed}", method, beta, seed, score,
                          steps=20 if method == "rmipo" else 0)


def execute() -> list:
    """Run the notebook as `jupyter execute` does (the kernel in notebooks/); its code cells."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return [c for c in notebook.cells if c.cell_type == "code"]


def test_notebook_executes_on_a_multirun_folder(tmp_path, monkeypatch):
    write_multirun(tmp_path / "multirun")
    monkeypatch.setenv("PREFOPT_STUDY", str(tmp_path / "multirun"))
    code = execute()
    assert all(not any(o.output_type == "error" for o in c.outputs) for c in code)
    summary = next(c for c in code if "method_summary(" in c.source)
    html = summary.outputs[0]["data"]["text/html"]
    assert "<th>dpo</th>" in html and "<td>0.82</td>" in html  # dpo's best
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # score vs β, reward vs KL, the cost of tuning, margin and δ over training


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
    assert len(images) == 4


def test_a_relative_study_is_resolved_from_where_the_command_ran(tmp_path, monkeypatch):
    """PREFOPT_STUDY=multirun/x: from the shell's directory (PWD), else the current one, else the root."""
    default = ROOT / "docs" / "results" / "beta_sensitivity" / "runs.csv"
    (tmp_path / "work" / "multirun" / "x").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # as the kernel, in notebooks/
    monkeypatch.setenv("PWD", str(tmp_path / "work"))  # the shell the command ran in
    assert resolve_study("multirun/x", default) == tmp_path / "work" / "multirun" / "x"
    assert resolve_study(None, default) == default and resolve_study("", default) == default
    assert resolve_study(str(tmp_path / "elsewhere"), default) == tmp_path / "elsewhere"  # absolute: as it is
    assert resolve_study("docs/results/beta_sensitivity/runs.csv", default) == default  # from the root
    monkeypatch.delenv("PWD")
    assert resolve_study("../work/multirun/x", default) == tmp_path / "work" / "multirun" / "x"  # from cwd
    with pytest.raises(FileNotFoundError, match=r"PREFOPT_STUDY=multirun/nope: not found in .*elsewhere"):
        resolve_study("multirun/nope", default)


@pytest.mark.slow
def test_the_notebook_reads_a_relative_study_from_another_directory(tmp_path, monkeypatch):
    """`cd work && PREFOPT_STUDY=multirun jupyter execute .../notebooks/sensitivity.ipynb`: the kernel runs
    in notebooks/, the study is found where the command ran (the hand-made one: dpo's best is .82)."""
    write_multirun(tmp_path / "work" / "multirun")
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("PWD", str(tmp_path / "work"))
    monkeypatch.setenv("PREFOPT_STUDY", "multirun")
    code = execute()
    assert "name='handmade'" in code[0].outputs[0]["data"]["text/plain"]
    html = next(c for c in code if "method_summary(" in c.source).outputs[0]["data"]["text/html"]
    assert "<th>dpo</th>" in html and "<td>0.82</td>" in html
