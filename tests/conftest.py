"""Shared fixtures: every test writes runs and artifacts under a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def isolated_artifacts(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    monkeypatch.setenv("PASO_ARTIFACTS", str(root))
    return root


@pytest.fixture(scope="session")
def paso_cache(tmp_path_factory: pytest.TempPathFactory):
    """One throw-away cache for the session: the BPE tokenizer is trained once, then reused."""
    old = os.environ.get("PASO_CACHE")
    os.environ["PASO_CACHE"] = str(tmp_path_factory.mktemp("paso_cache"))
    yield
    if old is None:
        os.environ.pop("PASO_CACHE", None)
    else:
        os.environ["PASO_CACHE"] = old
