# Set up, run and test mcproxy. `make run` and `make test` install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test fuzz bench clean chromium ffmpeg

install: $(STAMP)

$(STAMP): setup.cfg setup.py
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mcproxy needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e '.[test]'
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

test: install chromium ffmpeg
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

bench: install chromium
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
