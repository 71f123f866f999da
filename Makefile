# Two entry points for a new user (see README): `make artifacts` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU/gloo reference stack; the Docker image pins torch 2.5.1 + CUDA 12.1 instead.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
SCALE ?= default

.PHONY: setup test test-all artifacts benchmarks gpu-check clean-runs setup-torch25 test-torch25

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[text,notebooks,test,logging]"
	touch $@

# Unit + integration tests, then every notebook executed by nbmake at smoke scale
# (PASO_SCALE=smoke), writing into a throw-away artifacts directory.
# The suite's runs, logs and notebooks (~0.5 GB) go to a temporary directory, removed when the
# suite passes and kept, with its path printed, when it fails.
KEEP_ON_FAILURE = rc=$$?; if [ $$rc -eq 0 ]; then rm -rf "$$T"; \
	else echo "$@: failed (exit $$rc); its runs, logs and executed notebooks are kept in $$T"; fi; exit $$rc

test: setup
	@T=$$(mktemp -d); PASO_SCALE=smoke PASO_ARTIFACTS=$$T/artifacts $(PY) -m pytest -q tests \
	  --nbmake notebooks --nbmake-timeout=900 --basetemp=$$T/pytest --durations=15; $(KEEP_ON_FAILURE)

test-all: setup
	@T=$$(mktemp -d); PASO_SCALE=smoke PASO_ARTIFACTS=$$T/artifacts $(PY) -m pytest -q -m "slow or not slow" \
	  tests --nbmake notebooks --nbmake-timeout=900 --basetemp=$$T/pytest --durations=15; $(KEEP_ON_FAILURE)

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
# Screenshots: artifacts/tmp/browser/ (git-ignored), and under the pytest tmp dir when the test fails.
.PHONY: test-browser
test-browser: setup $(VENV)/.browser
	@T=$$(mktemp -d); PASO_BROWSER_REQUIRED=1 PASO_SCALE=smoke PASO_ARTIFACTS=$$T/artifacts $(PY) -m pytest -q -s \
	  -m browser tests/test_browser.py --basetemp=$$T/pytest --durations=5; $(KEEP_ON_FAILURE)

$(VENV)/.browser: pyproject.toml
	$(PY) -m pip install -q -e ".[browser]"
	touch $@

# The Docker image's stack (torch 2.5.1 + constraints/torch25.txt) in a venv of its own, CPU only:
# the unit tests that hold on that torch (constraints/torch25_tests.txt says which and why), then
# every engine's first-step canary against serial, run case by case (benchmarks/torch25_check.py).
# Engines known broken there (FSDP2 before torch 2.6 on any device: no public fully_shard; on CPU/gloo
# FSDP2 before 2.9 and pipelining before 2.10) are named "known broken" in the table and do not fail
# the target; anything else that fails does (exit 1). Tests and canary go through docker/entrypoint.sh,
# as in the image.
# OUT=dir keeps the table as dir/tables/torch25_check.{md,csv,json} (default: a temporary directory);
# CANARY_TASK=synthetic|vision. torch 2.5.1 from PyPI is a CUDA build: the venv is ~6 GB.
VENV25 ?= .venv-torch25
PY25 := $(VENV25)/bin/python
CANARY_TASK ?= vision

setup-torch25: $(VENV25)/.installed

$(VENV25)/.installed: pyproject.toml constraints/torch25.txt
	$(PYTHON) -m venv $(VENV25)
	$(PY25) -m pip install -q -c constraints/torch25.txt torch torchvision
	$(PY25) -m pip install -q -e ".[text,notebooks,test]" -c constraints/torch25.txt
	touch $@

test-torch25: setup-torch25
	@T=$$(mktemp -d); rc=0; tests=ok; engines=ok; \
	PYTHON=$(abspath $(PY25)) PASO_SCALE=smoke PASO_ARTIFACTS=$$T/artifacts docker/entrypoint.sh test \
	  -p no:cacheprovider --basetemp=$$T/pytest || { rc=1; tests=FAILED; }; \
	PYTHON=$(abspath $(PY25)) PASO_ARTIFACTS=$(if $(OUT),$(abspath $(OUT)),$$T/artifacts) docker/entrypoint.sh \
	  stack-check --task $(CANARY_TASK) || { rc=1; engines=FAILED; }; \
	echo "test-torch25: unit tests $$tests, engine check $$engines (torch $$($(PY25) -c 'import torch; print(torch.__version__)'))"; \
	(exit $$rc); $(KEEP_ON_FAILURE)
