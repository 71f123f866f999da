"""Finishing and writing the generated notebooks, shared by ``notebooks/build_*.py``, and
the check of their papermill parameters that runs inside the notebooks.

Why: every builder must give the same kernel metadata and stable cell ids (so rebuilding
yields an identical, diff-able file) and must validate before writing; and every notebook
must reject a misspelt ``papermill -p`` name, which papermill itself only warns about
("Passed unknown parameter") before running hours of work with the default instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, MutableMapping

import nbformat

from .config import ConfigError

#: Kernel global holding the names defined once the ``parameters`` cell has run.
PARAMETER_SNAPSHOT = "_names_before_papermill"
#: Last line of every ``parameters`` cell. papermill injects its cell right *after* that
#: cell, so a name that is new after injection was passed with ``-p`` but never declared.
#: A parenthesised walrus is not a ``name = value`` line, so ``papermill --help-notebook``
#: does not list it as a parameter; the ``;`` keeps the kernel from displaying the set.
SNAPSHOT_LINE = f"({PARAMETER_SNAPSHOT} := set(globals()));  # not a parameter: lets unknown -p names be rejected"
#: The cell right after the parameters cell (and so after papermill's injected one).
CHECK_CELL = """\
# papermill only warns about a -p name this notebook does not have; stop here instead, before any work.
from paso_core.notebook_files import check_parameters

check_parameters(globals())
"""
# Names the kernel itself defines: dunders, and IPython's history (_, __, ___, _i, _ii, _iii,
# _1, _i1, _oh, _dh, _ih), which grows as cells run.
_KERNEL_NAMES = re.compile(r"__\w+__|_{1,3}|_i{1,3}|_i?\d+|_[oid]h")


def parameters_cells(source: str) -> list[nbformat.NotebookNode]:
    """The code cell tagged ``parameters`` (papermill's anchor), ending with :data:`SNAPSHOT_LINE`,
    and the :data:`CHECK_CELL` that follows it."""
    cell = nbformat.v4.new_code_cell(source.rstrip("\n") + "\n" + SNAPSHOT_LINE)
    cell.metadata["tags"] = ["parameters"]
    return [cell, nbformat.v4.new_code_cell(CHECK_CELL)]


def _kernel_hidden_names() -> set[str]:
    """The names IPython put into the namespace before any cell ran (empty outside IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return set()
    shell = get_ipython()
    return set(getattr(shell, "user_ns_hidden", ()) or ()) if shell is not None else set()


def check_parameters(namespace: MutableMapping[str, Any]) -> None:
    """Raise ConfigError naming every papermill parameter the notebook does not declare.

    Called first in the cell after the parameters, with ``globals()``: every name that is
    new since :data:`SNAPSHOT_LINE` was injected by papermill, except the kernel's own and
    this function's import. The error lists the declared parameters (the names the
    parameters cell defined). It consumes the snapshot, so running the cell again
    interactively checks nothing (the namespace then holds later cells' variables too).
    """
    before = namespace.pop(PARAMETER_SNAPSHOT, None)
    if before is None:
        return
    hidden = _kernel_hidden_names()

    def is_parameter(name: str) -> bool:
        return not (name in hidden or _KERNEL_NAMES.fullmatch(name) or namespace[name] is check_parameters)

    declared = [n for n in namespace if n in before and is_parameter(n)]
    unknown = [n for n in namespace if n not in before and is_parameter(n)]
    if unknown:
        raise ConfigError(f"unknown notebook parameter(s) {unknown} (papermill -p); this notebook's "
                          f"parameters are: {', '.join(declared)}")


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
