# Two entry points for a new user (see README): `make artifacts` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU/gloo reference stack; the Docker image pins torch 2.5.1 + CUDA 12.1 instead.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
SCALE ?= default

.PHONY: setup test test-all artifacts benchmarks gpu-check clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[text,notebooks,test,logging]"
	touch $@

# Unit + integration tests, then every notebook executed by nbmake at smoke scale
# (PASO_SCALE=smoke), writing into a throw-away artifacts directory.
test: setup
	T=$$(mktemp -d) && PASO_SCALE=smoke PASO_ARTIFACTS=$$T/artifacts $(PY) -m pytest -q tests \
	  --nbmake notebooks --nbmake-timeout=900 --basetemp=$$T/pytest --durations=15

test-all: setup
	T=$$(mktemp -d) && PASO_SCALE=smoke PASO_ARTIFACTS=$$T/artifacts $(PY) -m pytest -q -m "slow or not slow" \
	  tests --nbmake notebooks --nbmake-timeout=900 --basetemp=$$T/pytest --durations=15

# SCALE=smoke|default|paper; ONLY="cifar_paso paso_placement" runs those jobs; finished runs of
# the same config and code are reused unless FORCE=1.
artifacts: setup
	$(PY) -m paso_core.reproduce --scale $(SCALE) $(if $(ONLY),--only $(ONLY)) $(if $(FORCE),--force)

# On a CUDA machine (a few minutes): every method once on the visible GPUs, PASO's exactness,
# one canary per engine, against serial on the same device -> artifacts/tables/gpu_check.md
gpu-check: setup
	$(PY) benchmarks/gpu_check.py --out artifacts

benchmarks: setup
	$(PY) benchmarks/paso_scaling.py --out artifacts

clean-runs:
	rm -rf artifacts/runs

# The explorer notebook (notebooks/explore.ipynb) in a real browser: Voilà on a free localhost port,
# driven by headless Chromium (Debian's /usr/bin/chromium: `apt-get install chromium`; PASO_CHROMIUM=
# another binary) through playwright, no browser download. ~30 s on 2 cores; not part of `make test`.
# Screenshots: under the pytest tmp dir and artifacts/tmp/browser/ (git-ignored).
.PHONY: test-browser
test-browser: setup $(VENV)/.browser
	T=$$(mktemp -d) && PASO_BROWSER_REQUIRED=1 PASO_SCALE=smoke PASO_ARTIFACTS=$$T/artifacts $(PY) -m pytest -q -s \
	  -m browser tests/test_browser.py --basetemp=$$T/pytest --durations=5

$(VENV)/.browser: pyproject.toml
	$(PY) -m pip install -q -e ".[browser]"
	touch $@
