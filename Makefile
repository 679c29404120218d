# tlsgate — the two commands that matter: `make run` and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck check venv bench bench-quick clean docs docs-check interop fuzz

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py tlsgate/tls/relay_accel.c tlsgate/tls/relayc_build.py
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

## interop: the full interoperability matrix: every client in examples/ x mosquitto, amqtt and
## a private RabbitMQ node x TLS mode x MQTT 3.1.1/5.0, through tlsgate (see examples/README.md;
## options: make interop INTEROP_ARGS="--brokers mosquitto --clients paho-c -v")
interop: venv
	$(PY) -m interop.run $(INTEROP_ARGS)

## fuzz: every network-facing parser under atheris, FUZZ_SECONDS (60) each; corpus in fuzz/corpus
FUZZ_SECONDS ?= 60
fuzz: venv
	$(PY) -m pip install -q -e '.[fuzz]' || echo "atheris did not install: hypothesis fallback"
	$(PY) -m fuzz.run --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

lint: venv
	$(VENV)/bin/ruff check tlsgate tests interop

## bench: ../shared/bench/compare.sh (HAProxy, nginx, stunnel and tlsgate, one core each, same
## mosquitto, same load tools); the ratio table is also written to benchmarks/results/
BENCH_HARNESS ?= ../shared/bench
bench: venv
	mkdir -p benchmarks/results
	$(BENCH_HARNESS)/compare.sh -- benchmarks/serve-for-bench.sh | tee benchmarks/results/compare-$$(date -u +%Y%m%dT%H%M%SZ).txt

## bench-quick: tlsgate alone, proxy CPU per operation (for iterating on the hot path)
bench-quick: venv
	benchmarks/quick.sh

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
