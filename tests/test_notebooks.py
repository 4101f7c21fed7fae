"""The exploration notebooks run top to bottom on a CPU and stay small enough to read as files."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
MAX_BYTES = 300_000  # committed with outputs: small figures only


def test_the_four_notebooks_exist() -> None:
    assert [p.name for p in NOTEBOOKS] == ["01_receptive_field.ipynb", "02_chunk_boundaries.ipynb",
                                           "03_buckets_and_speed.ipynb", "04_pipeline_breakdown.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path) -> None:
    nbformat = pytest.importorskip("nbformat", reason="pip install -e .[notebooks]")
    from nbclient import NotebookClient

    assert path.stat().st_size <= MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes with outputs"
    notebook = nbformat.read(path, as_version=4)
    # no time limit: this test is about the notebook running and drawing, not about how busy the machine is
    NotebookClient(notebook, timeout=None, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    figures = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} drew no figure"
