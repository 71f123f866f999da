"""Where and with what a number was measured: code version, software stack, hardware.

Why: the same config and seed gave digits accuracies 0.9778 on one machine and 0.9750 on
another (CPU kernels round differently); only a record of the commit, the stack and the CPU
lets a reader tell such a difference from a change in the code.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def repo_relative(text: str, artifacts: Path | None = None) -> str:
    """``text`` with this checkout's absolute path (and the artifacts root's, when it lives
    elsewhere) written relative to the repository: ``artifacts/runs/...``, ``notebooks/...``.

    Why: committed artifacts must not carry the build machine's paths (``/home/<user>/...``,
    a ``/tmp`` clone); a reader's checkout resolves the relative ones."""
    if artifacts is not None and artifacts.resolve() != (REPO / "artifacts").resolve():
        text = text.replace(f"{artifacts.resolve()}/", "artifacts/").replace(str(artifacts.resolve()), "artifacts")
    return text.replace(f"{REPO}/", "").replace(str(REPO), ".")


def git_state(repo: Path = REPO) -> dict[str, Any] | None:
    """Commit and whether tracked code differs from it (``artifacts/`` excluded: the main job
    rewrites it); None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!artifacts")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(changed)}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what the platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stack() -> dict[str, Any]:
    """torch (and the CUDA it was built for), NCCL and GPU names (no GPUs: an empty list)."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "torch_cuda_build": torch.version.cuda, "gpus": []}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["nccl"] = ".".join(str(v) for v in torch.cuda.nccl.version())
    return info


def provenance(world_size: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Everything above plus the machine; ``world_size``/``threads`` when a run knows them."""
    out = {**stack(), "git": git_state(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
           "platform": platform.platform()}
    if world_size is not None:
        out["world_size"] = world_size
    if threads is not None:
        out["threads_per_worker"] = threads
    return out
