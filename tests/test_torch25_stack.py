"""The pinned GPU stack (torch 2.5.1) outside Docker: the image's entry point dispatches each
command and refuses an unknown one; the Dockerfile, environment.yml and the constraints file
agree on the stack; the stack check's verdicts (which engine failures are expected on an old
torch, which are real) and its exit status.

The stack itself is exercised by ``make test-torch25`` (a venv with constraints/torch25.txt):
the unit tests listed in constraints/torch25_tests.txt and every engine's canary there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
CONSTRAINTS = ROOT / "constraints" / "torch25.txt"
sys.path.insert(0, str(ROOT / "benchmarks"))
import torch25_check  # noqa: E402


def entry(*args: str, dry: bool = True, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHON": sys.executable, **env}
    environ.pop("PASO_ENTRYPOINT_DRY_RUN", None)
    if dry:
        environ["PASO_ENTRYPOINT_DRY_RUN"] = "1"
    return subprocess.run(["bash", str(ENTRYPOINT), *args], capture_output=True, text=True, timeout=120,
                          cwd="/", env=environ)


def pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.M))


# ----------------------------------------------------------------------------- the entry point
@pytest.mark.parametrize("args,expected", [
    ((), r"-m paso_core\.reproduce --scale default$"),             # the image's CMD
    (("artifacts",), r"-m paso_core\.reproduce --scale default$"),
    (("artifacts", "smoke", "--only", "cifar_paso"), r"-m paso_core\.reproduce --scale smoke --only cifar_paso$"),
    (("artifacts", "--force"), r"-m paso_core\.reproduce --scale default --force$"),
    (("gpu-check",), r"benchmarks/gpu_check\.py --out /results$"),
    (("stack-check", "--task", "synthetic"), r"benchmarks/torch25_check\.py --out /results --task synthetic$"),
    (("test", "-x"), r"-m pytest -q tests --ignore=tests/\S+\.py .* -x$"),
])
def test_entrypoint_dispatches_each_command_from_the_checkout(args: tuple[str, ...], expected: str) -> None:
    proc = entry(*args, PASO_ARTIFACTS="/results")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(f"cd {ROOT} && {sys.executable} "), line   # the package's commands run from the checkout
    assert re.search(expected, line), line


def test_entrypoint_test_runs_the_suite_less_what_the_list_leaves_out() -> None:
    """The list's arguments are passed as they are (a node id's brackets are not a glob), and
    every file or test it leaves out still exists (a stale entry would leave out nothing)."""
    listed = [line.strip() for line in (ROOT / "constraints" / "torch25_tests.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert listed[0] == "tests" and len(listed) > 1
    for arg in listed[1:]:
        option, _, target = arg.partition("=")
        assert option in ("--ignore", "--deselect"), arg
        path, _, name = target.partition("::")
        assert (ROOT / path).is_file(), arg
        assert not name or f"def {name.split('[')[0]}(" in (ROOT / path).read_text(), arg
    line = entry("test").stdout.strip()
    assert line.split(" -m pytest -q ", 1)[1].split() == [re.sub(r"([\[\]])", r"\\\1", a) for a in listed]


def test_entrypoint_passes_other_programs_through_and_runs_them() -> None:
    assert entry("bash", "-c", "pwd").stdout.strip() == "bash -c pwd"   # as given, no cd into the checkout
    proc = entry("echo", "hello from", "the image", dry=False)
    assert proc.returncode == 0 and proc.stdout == "hello from the image\n"
    proc = entry("bash", "-c", "pwd", dry=False)
    assert proc.stdout.strip() == "/"   # a passthrough runs where it was started, not in the checkout


def test_entrypoint_refuses_an_unknown_command_and_a_bad_scale() -> None:
    proc = entry("artefacts", dry=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "unknown command 'artefacts'" in proc.stderr and "artifacts test stack-check gpu-check help" in proc.stderr
    proc = entry("artifacts", "huge", dry=False)
    assert proc.returncode == 2 and "unknown scale 'huge'" in proc.stderr


def test_entrypoint_help_lists_every_command() -> None:
    proc = entry("help", dry=False)
    assert proc.returncode == 0
    for command in ("artifacts [SCALE]", "test", "stack-check", "gpu-check", "COMMAND [ARGS...]"):
        assert f"entrypoint.sh {command}" in proc.stdout


def test_entrypoint_gpu_check_really_runs_the_script() -> None:
    """Not a dry run: on a machine without CUDA the GPU check itself says why it cannot run."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the check would run for minutes")
    proc = entry("gpu-check", dry=False, PASO_ARTIFACTS=str(ROOT / "artifacts"))
    assert proc.returncode == 2 and "no CUDA device is visible" in proc.stderr


# ----------------------------------------------------------------------------- one stack everywhere
def test_dockerfile_and_environment_use_the_constraints_and_the_same_torch() -> None:
    constraints = pins(CONSTRAINTS.read_text())
    assert constraints["torch"] == "2.5.1" and constraints["torchvision"] == "0.20.1"
    assert constraints["transformers"].startswith("4."), "transformers 5 refuses torch < 2.6"
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM pytorch/pytorch:(\S+)-cuda", dockerfile, flags=re.M)
    assert base and base.group(1) == constraints["torch"]
    assert "COPY constraints ./constraints" in dockerfile
    assert re.search(r"pip install .*-c constraints/torch25\.txt", dockerfile)
    workdir = re.search(r"^WORKDIR (\S+)$", dockerfile, flags=re.M).group(1)
    assert f'ENTRYPOINT ["{workdir}/docker/entrypoint.sh"]' in dockerfile and 'CMD ["artifacts"]' in dockerfile
    assert os.access(ENTRYPOINT, os.X_OK)   # COPY keeps the mode: the image runs it as it is here
    env = (ROOT / "environment.yml").read_text()
    assert f"pytorch={constraints['torch']}" in env and f"torchvision={constraints['torchvision']}" in env
    assert "pytorch-cuda=12.1" in env
    assert re.search(r"^\s+- -c constraints/torch25\.txt$", env, flags=re.M)


# ----------------------------------------------------------------------------- the stack check's verdicts
def test_known_broken_engines_depend_on_torch_and_device() -> None:
    for method in ("fsdp2", "fsdp2_tp", "pp", "model_parallel"):
        assert torch25_check.known_broken(method, "2.5.1+cu124")
        assert torch25_check.known_broken(method, "2.14.1") is None
        assert torch25_check.known_broken(method, "2.14.1", device="cuda") is None
    # on CUDA only the import is missing (FSDP2 before 2.6); the CPU/gloo problems are gloo's
    assert torch25_check.known_broken("fsdp2_tp", "2.5.1", device="cuda") is None  # via _composable.fsdp
    assert "CUDA for streams" in torch25_check.known_broken("fsdp2", "2.5.1")
    assert torch25_check.known_broken("fsdp2", "2.7.1", device="cuda") is None
    assert torch25_check.known_broken("pp", "2.5.1", device="cuda") is None
    assert "162338" in torch25_check.known_broken("fsdp2", "2.7.1")
    assert torch25_check.known_broken("fsdp2", "2.9.1") is None and torch25_check.known_broken("pp", "2.9.1")
    for method in ("serial", "ddp", "fsdp", "tp", "paso", "pipedream", "local_sgd"):
        assert torch25_check.known_broken(method, "2.5.1") is None


def _row(method: str, status: str) -> dict:
    return {"case": f"canary-{method}", "method": method, "status": status, "world_size": 2,
            "rel_displacement_err": 0.5 if status == "differs" else 0.0, "rtol": 1e-5, "loss_rel_err": 0.0,
            "detail": "boom" if status == "error" else ""}


def test_only_unexpected_failures_fail_the_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A known-broken engine that is refused, crashes or differs is reported and tolerated; any
    other engine that does not match serial makes the check exit 1."""
    table = torch25_check.classify([_row("ddp", "pass"), _row("pp", "refused"), _row("fsdp2", "differs"),
                                    _row("fsdp2_tp", "error"), _row("model_parallel", "pass")], "2.5.1")
    assert list(table["verdict"]) == ["reliable", "known broken", "known broken", "known broken",
                                      "reliable (listed broken)"]
    assert "fully_shard" in table.loc[2, "why"] and "relative error 0.5" in table.loc[2, "why"]
    assert torch25_check.verdict("differs", None) == torch25_check.verdict("error", None) == "FAIL"

    def fake(rows):
        monkeypatch.setattr(torch25_check, "run_cases", lambda cases, root: rows)
        monkeypatch.setattr(torch25_check.torch, "__version__", "2.5.1")
        monkeypatch.setattr(torch25_check.torch.cuda, "is_available", lambda: False)

    fake([_row("ddp", "pass"), _row("fsdp2", "differs"), _row("pp", "refused")])
    assert torch25_check.main(["--out", str(tmp_path / "ok")]) == 0
    md = (tmp_path / "ok" / "tables" / "torch25_check.md").read_text()
    assert "known broken" in md and "1 reliable, 2 known broken" in md
    fake([_row("ddp", "differs"), _row("pp", "refused")])
    assert torch25_check.main(["--out", str(tmp_path / "bad")]) == 1
    fake([_row("tp", "error")])
    assert torch25_check.main(["--out", str(tmp_path / "bad2")]) == 1
