"""Finishing and writing the generated notebooks, shared by ``notebooks/build_*.py``.

Why: every builder must give the same kernel metadata and stable cell ids (so rebuilding
yields an identical, diff-able file) and must validate before writing.
"""

from __future__ import annotations

from pathlib import Path

import nbformat


def finish_notebook(cells: list, id_prefix: str) -> nbformat.NotebookNode:
    """A notebook of ``cells`` with the python3 kernel and ids ``<id_prefix>-NN``."""
    nb = nbformat.v4.new_notebook(cells=cells)
    for i, cell in enumerate(nb.cells):
        cell.id = f"{id_prefix}-{i:02d}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def write_notebook(nb: nbformat.NotebookNode, target: Path) -> Path:
    """Validate ``nb`` and write it to ``target``."""
    nbformat.validate(nb)
    nbformat.write(nb, target)
    return target
