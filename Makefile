# tlsgate — the two commands that matter: `make run` and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck check venv bench clean interop

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

## interop: the full interoperability matrix: every client in examples/ x mosquitto, amqtt and
## a private RabbitMQ node x TLS mode x MQTT 3.1.1/5.0, through tlsgate (see examples/README.md;
## options: make interop INTEROP_ARGS="--brokers mosquitto --clients paho-c -v")
interop: venv
	$(PY) -m interop.run $(INTEROP_ARGS)

lint: venv
	$(VENV)/bin/ruff check tlsgate tests

typecheck: venv
	$(VENV)/bin/mypy

check: lint typecheck

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
