"""Every notebook in notebooks/ runs top to bottom (they are committed without outputs).

Each runs once a session (the `executed_notebook` fixture); tests/test_docs.py renders the
same executed copies.
"""

from __future__ import annotations

import nbformat
import pytest

from scripts.docs_site import NOTEBOOKS


def test_notebooks_exist():
    assert any(p.name == "01_quickstart.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, executed_notebook):
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        f"{path.name} is committed with outputs; clear them"
    )
    done = nbformat.read(executed_notebook(path), as_version=4)
    code = [cell for cell in done.cells if cell.cell_type == "code"]
    assert code and all(cell.get("execution_count") for cell in code)
    errors = [o for cell in code for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors
