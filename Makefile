# Set up, run, check and test mcproxy. `make run`, `make check` and `make test` install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# What ruff lints and formats; mypy checks mcproxy alone.
CHECKED := mcproxy tests bench twisted/plugins

.PHONY: install run check pre-commit test fuzz bench clean chromium ffmpeg redis-server haproxy

install: $(STAMP)

$(STAMP): setup.cfg setup.py
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mcproxy needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e '.[test,check]'
	touch $(STAMP)

run: install
	$(BIN)/twistd -n mcproxy $(ARGS)

chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  command -v google-chrome >/dev/null 2>&1 || { \
	    if [ "$$(id -u)" = 0 ]; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	    else echo "Chromium is missing: install Debian's 'chromium' package (or set MCPROXY_TEST_CHROME)" >&2; exit 1; fi; }

# Screencasts are encoded with ffmpeg when the machine has it; the tests check both ways.
ffmpeg:
	@command -v ffmpeg >/dev/null 2>&1 || { \
	    if [ "$$(id -u)" = 0 ]; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; \
	    else echo "ffmpeg is missing: install Debian's 'ffmpeg' package" >&2; exit 1; fi; }

# The cluster tests and benchmark start redis-server processes of their own, and one test
# runs the shipped HAProxy configuration in front of a cluster.
redis-server haproxy:
	@command -v $@ >/dev/null 2>&1 || { \
	    if [ "$$(id -u)" = 0 ]; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $@ >/dev/null; \
	    else echo "$@ is missing: install Debian's '$@' package" >&2; exit 1; fi; }

# The code's hygiene: lint, formatting and types, with the versions setup.cfg pins.
check: install
	$(BIN)/ruff check $(CHECKED)
	$(BIN)/ruff format --check $(CHECKED)
	$(BIN)/mypy mcproxy

# Runs the same three checks before each commit (.pre-commit-config.yaml), from .venv.
pre-commit: install
	$(BIN)/python -m pip install --quiet 'pre-commit >= 3.5'
	$(BIN)/pre-commit install

test: install check chromium ffmpeg redis-server haproxy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The hypothesis fuzzers (marked `fuzz`) at FUZZ_SCALE times their usual example counts:
# the HTTP, auth and JSON-RPC fuzzers usually run 3,800 cases, so over 100,000 here, and the
# cross-tenant suite 1,050 (pytest prints the total). Then the URL policy against real
# Chromium (run even when the fuzzers fail). Not part of `make test`.
FUZZ_SCALE ?= 27

fuzz: install chromium
	status=0; \
	MCPROXY_FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/python -m pytest -m fuzz $(PYTEST_ARGS) || status=$$?; \
	$(BIN)/python -m pytest tests/test_url_policy_chromium.py $(PYTEST_ARGS) || status=$$?; \
	exit $$status

bench: install chromium redis-server
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
