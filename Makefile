# tlsgate — the two commands that matter: `make run` and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck check venv bench clean docs docs-check fuzz

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,demo]'
	touch $(STAMP)

## run: start tlsgate with the embedded demo config (dev certs + embedded broker)
run: venv
	$(VENV)/bin/tlsgate serve

## test: the whole test suite (needs mosquitto, mosquitto-clients, openssl: see .ci/run)
test: venv
	$(PY) -m pytest -q -ra

## fuzz: every network-facing parser under atheris, FUZZ_SECONDS (60) each; corpus in fuzz/corpus
FUZZ_SECONDS ?= 60
fuzz: venv
	$(PY) -m pip install -q -e '.[fuzz]' || echo "atheris did not install: hypothesis fallback"
	$(PY) -m fuzz.run --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

lint: venv
	$(VENV)/bin/ruff check tlsgate tests

typecheck: venv
	$(VENV)/bin/mypy

check: lint typecheck

## docs: regenerate the configuration reference (English and Chinese) from the config schema
docs: venv
	$(VENV)/bin/tlsgate config-reference -o docs/configuration.md
	$(VENV)/bin/tlsgate config-reference --lang zh -o docs/zh/configuration.md

## docs-check: the committed reference is what the schema generates; the docs' snippets run
docs-check: venv
	$(VENV)/bin/tlsgate config-reference --check
	$(VENV)/bin/tlsgate config-reference --lang zh --check
	$(PY) -m pytest -q -ra tests/docs

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
