"""Every notebook in notebooks/ runs top to bottom, every cell, at its quick setting (`MEDJAX_NOTEBOOK_QUICK=1`: fewer
steps and smaller inputs; the code paths are the same)."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["cine.ipynb", "data.ipynb", "detection.ipynb", "gan.ipynb",
                                           "pathology.ipynb", "performance.ipynb", "privacy.ipynb",
                                           "quickstart.ipynb", "transfer.ipynb", "trust.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("MEDJAX_NOTEBOOK_QUICK", "1")  # the kernel inherits this process's environment
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
