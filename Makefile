# Two commands on a fresh machine: `make demo` and `make test`. Both use .venv in the repo root.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
INTEGRATIONS := $(wildcard integrations/*/pyproject.toml)

.PHONY: install sysdeps demo test test-unit lint bench clean-venv

# Debian packages the tests drive: a browser for the review UI, a PostgreSQL server for the shared queue.
BROWSER_PACKAGES := chromium chromium-driver
POSTGRES_PACKAGES := postgresql
DEBIAN_PACKAGES := $(BROWSER_PACKAGES) $(POSTGRES_PACKAGES)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# torch==2.13.0 first: it is the CPU build on this disk; the package's own requirement stays a range.
$(VENV)/.installed: pyproject.toml constraints.txt $(INTEGRATIONS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[all,dev]" $(foreach p,$(INTEGRATIONS),-e "$(dir $(p))[test]")
	$(VENV)/bin/semgrad-guard fetch-default-model
	touch $@

# The tests' tool-calling model (~0.5 GB download, 2 GB converted): `make test` fetches it, `make demo`
# does not (MODEL=qwen2.5-coder-0.5b fetches it on first use).
$(VENV)/.qwen-0.5b: $(VENV)/.installed
	$(VENV)/bin/semgrad-guard fetch-model qwen2.5-coder-0.5b
	touch $@

install: $(VENV)/.installed

# Installs only what is missing; a machine that has them all runs no apt at all.
sysdeps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; fi

# MODEL: a registry name (semgrad-guard models), e.g. make demo MODEL=qwen2.5-coder-0.5b
MODEL ?= default
demo: install
	$(PY) cookbook/langchain_rag_gating.py --model $(MODEL)

# Lint, format and types first (seconds), then every test, the doctests included.
# The PostgreSQL queue tests must run here (missing server binaries fail them instead of skipping).
test: export SEMGRAD_GUARD_REQUIRE_POSTGRES := 1
test: install $(VENV)/.qwen-0.5b sysdeps lint
	$(PY) -m pytest tests
	$(PY) -m pytest --doctest-modules semgrad_guard -q
	cd integrations/langchain-semgrad && ../../$(PY) -m pytest tests && ../../$(PY) -m pytest --doctest-modules langchain_semgrad -q
	cd integrations/llama-index-llms-semgrad && ../../$(PY) -m pytest tests && ../../$(PY) -m pytest --doctest-modules llama_index -q

test-unit: install
	$(PY) -m pytest tests/unit

lint: install
	$(VENV)/bin/ruff check semgrad_guard integrations tests cookbook benchmarks
	$(VENV)/bin/ruff format --check semgrad_guard integrations tests cookbook benchmarks --exclude "*.md"
	$(VENV)/bin/mypy
	set -e; for p in $(INTEGRATIONS); do (cd $$(dirname $$p) && ../../$(VENV)/bin/mypy); done

bench: install
	$(PY) benchmarks/bench_scoring.py
