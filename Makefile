# Two entry points for a new user (see README): `make artifacts` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU/gloo reference stack; the Docker image pins torch 2.5.1 + CUDA 12.1 instead.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
SCALE ?= default

.PHONY: setup test test-all artifacts benchmarks clean-runs

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

artifacts: setup
	$(PY) -m paso_core.reproduce --scale $(SCALE)

benchmarks: setup
	$(PY) benchmarks/paso_scaling.py --out artifacts

clean-runs:
	rm -rf artifacts/runs
