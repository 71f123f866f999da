"""An unknown papermill parameter stops every notebook in the cell after its parameters.

papermill itself only warns ("Passed unknown parameter") and runs the whole notebook with
the default instead, which at paper scale is hours of work on the wrong setting.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from paso_core.config import ConfigError
from paso_core.notebook_files import CHECK_CELL, PARAMETER_SNAPSHOT, SNAPSHOT_LINE, check_parameters

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))


def _after_parameters_cell(namespace: dict) -> dict:
    namespace[PARAMETER_SNAPSHOT] = set(namespace)  # what SNAPSHOT_LINE does
    return namespace


# ---------------------------------------------------------------------------- the check
def test_unknown_parameter_is_named_with_the_valid_ones() -> None:
    ns = _after_parameters_cell({"__name__": "__main__", "P": None, "scale": None})
    ns.update({"P": 7, "tresh": 0.1, "_i2": "# Parameters", "_": None, "check_parameters": check_parameters})
    with pytest.raises(ConfigError, match=r"unknown notebook parameter\(s\) \['tresh'\].*parameters are: "
                                          r"P, scale$"):
        check_parameters(ns)


def test_known_parameters_and_kernel_names_pass() -> None:
    ns = _after_parameters_cell({"P": None, "scale": None})
    ns.update({"P": 7, "scale": "paper", "_i2": "", "_3": 1, "__": None, "_oh": {}})
    check_parameters(ns)
    assert PARAMETER_SNAPSHOT not in ns  # consumed: running the cell again checks nothing
    ns["later_variable"] = 1
    check_parameters(ns)


def test_without_the_snapshot_nothing_is_checked() -> None:
    check_parameters({"anything": 1})


# ---------------------------------------------------------------------------- the notebooks
def _cells(name: str) -> tuple[list, int]:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    return nb.cells, tagged[0]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_check_cell_follows_the_parameters_cell(name: str) -> None:
    """The snapshot ends the parameters cell and the check is the next cell, before any work;
    papermill still infers exactly the declared ``name = None`` lines as parameters."""
    papermill = pytest.importorskip("papermill.translators")
    cells, index = _cells(name)
    params = cells[index]
    assert params.source.splitlines()[-1] == SNAPSHOT_LINE
    assert cells[index + 1].cell_type == "code" and cells[index + 1].source.rstrip() == CHECK_CELL.rstrip()
    assert not any(c.cell_type == "code" for c in cells[:index])
    inferred = [p.name for p in papermill.PythonTranslator.inspect(params)]
    declared = [line.split("=")[0].strip() for line in params.source.splitlines() if " = None" in line]
    assert inferred == declared and "scale" in inferred


@pytest.mark.parametrize("name", ["optex_comparison"])
def test_papermill_with_an_unknown_parameter_fails_in_the_check_cell(name: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A real papermill run (a few seconds: kernel start and one import) stops at the check
    cell, names the bad parameter, lists the valid ones, and starts no run. One notebook:
    every notebook has the same two lines (test_check_cell_follows_the_parameters_cell)."""
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("PASO_ARTIFACTS", str(tmp_path / "artifacts"))
    cells, index = _cells(name)
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"scale": "smoke", "nonexistent_param": 1}, cwd=str(ROOT),
                                   kernel_name="python3", progress_bar=False)
    assert err.value.ename == "ConfigError" and "check_parameters(globals())" in err.value.source
    assert "['nonexistent_param']" in err.value.evalue and "scale" in err.value.evalue
    assert not (tmp_path / "artifacts" / "runs").exists()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_notebook_and_its_percent_script_hold_the_same_cells(name: str) -> None:
    """``notebooks/<name>.py`` (jupytext percent format, linted with the package) and the
    ``.ipynb`` papermill runs are one notebook: same cells, kinds, sources and tags."""
    jupytext = pytest.importorskip("jupytext")
    script = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"

    def cells(nb) -> list[tuple[str, str, list[str]]]:
        return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]

    assert cells(script) == cells(notebook), f"run: jupytext --sync notebooks/{name}.py"


# ---------------------------------------------------------------------------- scale tables
def _scale_rows(notebook: str) -> dict[str, dict[str, str]]:
    """The notebook's Markdown table of scales, as {scale: {column: cell}}."""
    lines = [line[2:] for line in (ROOT / "notebooks" / f"{notebook}.py").read_text().splitlines()
             if line.startswith("# | ")]
    header = next(line for line in lines if line.startswith("| scale |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| `")]
    return {cells[0].strip("`"): dict(zip(columns, cells)) for cells in rows if len(cells) == len(columns)}


@pytest.mark.parametrize(("notebook", "module", "workers_column"),
                         [("optex_comparison", "optex", "workers"), ("optex_ablation", "optex_ablation", "N")])
def test_optex_scale_tables_state_the_presets(notebook: str, module: str, workers_column: str) -> None:
    """The scale table a reader sees before running is the preset the notebook runs."""
    import importlib

    presets = importlib.import_module(f"paso_core.experiments.{module}").PRESETS
    rows = _scale_rows(notebook)
    assert set(rows) == set(presets)
    for scale, preset in presets.items():
        row = rows[scale]
        assert [f.strip() for f in row["functions"].split(",")] == list(preset["functions"]), scale
        assert (int(row["d"].replace(" ", "")), int(row["T"].replace(" ", "")), int(row[workers_column]),
                int(row["seeds"])) == (preset["dim"], preset["steps"], preset["nproc"], len(preset["seeds"])), scale
