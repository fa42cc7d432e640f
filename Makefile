# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
# Everything else here is a step of theirs, or a gate contributors run alone.

PYTHON ?= python3
# Material prints a banner about a future MkDocs on every build; it says
# nothing about this site.
export NO_MKDOCS_2_WARNING := 1
VENV := .venv
BIN := $(VENV)/bin
# Marker that the venv holds what pyproject.toml asks for.
INSTALLED := $(VENV)/.installed
# Each set-up step notes how long it took here; the test run prints them.
TIMED := scripts/timed
export DORKOS_DOCS_STATE ?= .cache
SETUP_TIMES := $(DORKOS_DOCS_STATE)/setup-times.tsv

.PHONY: serve site test verdict check lock lint typecheck host browser images necessity tested-with bench soak conformance clean

# uv installs the packages: pip took about a minute of a cold run's five on
# two cores, uv about a quarter of that (it downloads side by side). It
# installs exactly what uv.lock names, hashes checked; `--locked` fails when
# pyproject.toml asks for something the lock does not hold (run `make lock`).
UV_VERSION := 0.13.9
$(INSTALLED): pyproject.toml uv.lock
	$(TIMED) "Python packages (venv, uv pip install from uv.lock)" sh -ec '\
	  $(PYTHON) -m venv $(VENV); \
	  $(BIN)/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"; \
	  $(BIN)/uv export --quiet --locked --all-extras --format requirements-txt -o $(VENV)/locked.txt; \
	  $(BIN)/uv pip install --quiet --python $(BIN)/python -r $(VENV)/locked.txt'
	touch $@

## lock: move every Python dependency (or only PACKAGE=name) to its newest release pyproject.toml allows; rewrites uv.lock
lock: $(INSTALLED)
	$(BIN)/uv lock $(if $(PACKAGE),--upgrade-package $(PACKAGE),--upgrade)

## serve: build the site and serve it on http://127.0.0.1:8000 with live reload
serve: $(INSTALLED)
	$(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8000

## site: build the site into site/, failing on any warning or missing snippet
site: $(INSTALLED)
	$(BIN)/mkdocs build --strict

## host: a running Docker engine and the image build tools (installs them as root on Debian)
host:
	scripts/prepare-host

## browser: Debian's Chromium and certutil for the browser checks (installs them as root on Debian)
# After host: both use apt, which allows one at a time.
browser: host
	scripts/prepare-browser

## images: build (or reuse) the proxy images the tests run
images: $(INSTALLED) host
	$(BIN)/python -m harness.proxies.registry

## necessity: measure what each config line is for; rewrites data/necessity.json and generated/
necessity: $(INSTALLED) host images
	$(BIN)/python -m harness.tables.necessity --write

## tested-with: run every snippet on every proxy version, and dorkos-proxy-check through them; rewrites data/tested-with.json, data/proxy-check.json and generated/
tested-with: $(INSTALLED) host images
	scripts/run-pytest $(BIN)/pytest docs tests/test_reader_path.py tests/test_proxy_check.py --write-tested-with

## bench: added latency and concurrent streams per proxy; rewrites data/bench.json
bench: $(INSTALLED) host images
	$(BIN)/python -m harness.tables.bench --write

## soak: 500 streams per config for ten minutes; rewrites data/soak.json
soak: $(INSTALLED) host images
	$(BIN)/python -m harness.tables.soak --write

## conformance: the mock against a real DorkOS, then the published configs in front of it (DORKOS_SOURCE: a built checkout; DORKOS_NODE: Node 22+); rewrites data/conformance.json, data/behind-proxies.json
conformance: $(INSTALLED) host images browser
	$(BIN)/python -m harness.upstream.conformance --write

## lint / typecheck: ruff and mypy over the Python code; the CI workflow against its schema and zizmor
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/zizmor --offline --quiet --persona=pedantic .github/workflows/

typecheck: $(INSTALLED)
	$(BIN)/mypy

## test: everything (venv, engine, images, browser, lint, site build, all tests)
# The set-up steps run side by side (the engine's packages download while
# Python packages install, images build while the linters run); then the tests.
test:
	@mkdir -p $(dir $(SETUP_TIMES)) && printf 'make test\t%s\t\n' "$$(date +%s.%N)" >$(SETUP_TIMES)
	$(MAKE) --no-print-directory -j4 --output-sync=line lint typecheck site images browser
	DORKOS_DOCS_SETUP_TIMES=$(SETUP_TIMES) DORKOS_DOCS_SITE=site \
	  scripts/run-pytest $(BIN)/pytest

## verdict: one snippet on every version of its proxy, alone (SNIPPET=snippets/haproxy/dorkos.cfg)
verdict: $(INSTALLED) host images
	@test -n "$(SNIPPET)" || { echo "make verdict: say which, e.g. SNIPPET=snippets/haproxy/dorkos.cfg" >&2; exit 2; }
	scripts/run-pytest $(BIN)/pytest docs --snippet $(SNIPPET)

## check: what CI runs
check: test

clean:
	rm -rf site .cache/build .pytest_cache .mypy_cache .ruff_cache
