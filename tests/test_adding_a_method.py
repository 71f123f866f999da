"""README "Adding a method" is a worked example that is also a test: the listing is the
registered file, and the core knows the method from its declarations alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import paso_core
from paso_core.__main__ import build_parser
from paso_core.config import ConfigError, RunConfig, validate
from paso_core.methods import get_method, method_names

ROOT = Path(__file__).resolve().parent.parent


def test_readme_listing_is_the_method_file() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Adding a method", 1)[1].split("\n## ", 1)[0]
    listing = re.search(r"```python\n(.*?)```", section, re.S)
    assert listing is not None, "README 'Adding a method' has no python listing"
    assert listing.group(1) == (ROOT / "paso_core" / "methods" / "grad_accum.py").read_text()


def test_the_example_is_known_everywhere_from_its_declarations(capsys: pytest.CaptureFixture[str]) -> None:
    spec = get_method("grad_accum")
    assert "grad_accum" in method_names() and spec.options().micro_batches == 2
    cfg = validate(RunConfig.from_dict({"method": "grad_accum", "task": "vision", "micro_batches": 4}))
    assert (cfg.nproc, cfg.options.micro_batches, cfg.micro_batches) == (1, 4, 4)
    with pytest.raises(ConfigError, match="batch_size=64 is not divisible by 3 \\(micro_batches=3\\)"):
        paso_core.run(method="grad_accum", task="vision", micro_batches=3)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    assert "--micro-batches" in capsys.readouterr().out
