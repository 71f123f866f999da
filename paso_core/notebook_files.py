"""The check of the notebooks' papermill parameters that runs inside every notebook.

Why: every notebook must reject a misspelt ``papermill -p`` name, which papermill itself only
warns about ("Passed unknown parameter") before running hours of work with the default instead.
The notebooks are kept as jupytext percent-format ``notebooks/<name>.py`` files paired with
their ``.ipynb`` (``tests/test_notebook_parameters.py`` checks the pairs are in sync); their
parameters cell ends with :data:`SNAPSHOT_LINE` and the next cell is :data:`CHECK_CELL`.
"""

from __future__ import annotations

import re
from typing import Any, MutableMapping

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
