"""Every notebook runs top to bottom, and every plotting cell shows its figure (an image/png output)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _plots(cell) -> bool:
    """A cell that builds a figure with dirtysim.report.plots (``..._figure(...)``)."""
    return cell.cell_type == "code" and "_figure(" in cell.source


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_shows_its_figures(path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    plotting = [c for c in nb.cells if _plots(c)]
    assert plotting, f"{path.name} has no plotting cell"
    for cell in plotting:
        kinds = {kind for out in cell.outputs for kind in out.get("data", {})}
        assert "image/png" in kinds, f"{path.name}: cell {cell.get('id')} shows no figure (outputs: {kinds or 'none'})"
