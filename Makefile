# scratchpilot — the two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
SHARED_DATA ?= $(abspath ../shared/data)
export SCRATCHPILOT_DATA ?= $(SHARED_DATA)
export SDL_VIDEODRIVER ?= dummy
export SDL_AUDIODRIVER ?= dummy
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test fuzz bench lint install-all install-dev system-deps arduino-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed-all: $(PY) pyproject.toml
	$(PIP) install -e '.[all]'
	touch $@

$(VENV)/.installed-dev: $(PY) pyproject.toml
	$(PIP) install -e '.[all,dev]'
	touch $@

install-all: $(VENV)/.installed-all
install-dev: $(VENV)/.installed-dev

# Debian packages the tests drive for real (a headless browser, a PostgreSQL server for the shared tuning
# study); installed only when missing.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql for the tuning tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	@$(MAKE) --no-print-directory -C arduino system-deps

# The Arduino sketch alone: host unit test of its protocol and failsafe, and the Uno build.
arduino-test:
	$(MAKE) -C arduino test

demo: install-all
	$(VENV)/bin/scratchpilot demo --out runs/demo

test: install-dev system-deps
	$(PY) -m pytest -q

# The hypothesis suites (tests/test_fuzz_*.py) with ten times the examples `make test` runs, and their statistics.
fuzz: install-dev
	SCRATCHPILOT_FUZZ_SCALE=10 $(PY) -m pytest -q tests/test_fuzz_*.py --hypothesis-show-statistics

bench: install-dev
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/run_all.py

lint: install-dev
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
