"""The Makefile's test targets: their temporary directory (runs, logs, executed notebooks,
~0.5 GB for `make test`) is removed when they pass and kept, its path printed, when they fail.
The cleanup snippet is taken from the Makefile itself and run by make."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAKEFILE = (REPO / "Makefile").read_text()
TEST_TARGETS = ("test", "test-all", "test-browser", "test-torch25")


def _definition(name: str) -> str:
    """The variable ``name``'s definition, continuation lines included."""
    match = re.search(rf"^{name} =(?:.*\\\n)*.*\n", MAKEFILE, flags=re.MULTILINE)
    assert match, f"{name} is not defined in the Makefile"
    return match.group(0)


def _recipe(target: str) -> str:
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", MAKEFILE, flags=re.MULTILINE)
    assert match, f"no recipe for {target}"
    return match.group(1)


@pytest.mark.parametrize("target", TEST_TARGETS)
def test_every_test_target_ends_with_the_shared_cleanup(target: str) -> None:
    recipe = _recipe(target)
    assert "T=$$(mktemp -d)" in recipe and recipe.rstrip().endswith("$(KEEP_ON_FAILURE)")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_the_temporary_directory_goes_when_the_command_passes_and_stays_when_it_fails(tmp_path) -> None:
    makefile = tmp_path / "Makefile"
    makefile.write_text(_definition("KEEP_ON_FAILURE") + "".join(
        f"{name}:\n\t@T={tmp_path / name}; mkdir -p $$T; touch $$T/log; {command}; $(KEEP_ON_FAILURE)\n"
        for name, command in (("passes", "true"), ("fails", "(exit 3)"))))
    passed = subprocess.run(["make", "-f", str(makefile), "passes"], capture_output=True, text=True)
    assert passed.returncode == 0 and not (tmp_path / "passes").exists()
    failed = subprocess.run(["make", "-f", str(makefile), "fails"], capture_output=True, text=True)
    assert failed.returncode != 0 and (tmp_path / "fails" / "log").exists()
    assert "exit 3" in failed.stdout and str(tmp_path / "fails") in failed.stdout
