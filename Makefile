# Two commands matter: `make demo` and `make test`. Both install what they need, once:
# Debian packages when missing, a virtual environment (kept in the user's cache and reused
# while pyproject.toml is unchanged), and the Kafka broker's jars from Maven Central.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE ?= $(HOME)/.cache/shadowstream
VENV ?= $(CACHE)/venv
PY := $(VENV)/bin/python
# Reinstall when pyproject.toml changes or the checkout moves (the install is editable).
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)-$(shell pwd | sha1sum | cut -c1-8)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
COMPOSE_VERSION := v2.29.7
PYTEST_ARGS ?=

.PHONY: help bootstrap system venv browser kafka-jars compose-plugin demo test test-faults test-kafka4 test-unit test-integration lint bench clean

help:
	@echo "make demo   bring the stack up and run the pipeline (installs what it needs)"
	@echo "make test   unit and integration tests against real Kafka, Redis and Prometheus"
	@echo "make test-faults   the slow fault tests (broker restart, Redis down 30 s)"
	@echo "make test-kafka4   the integration tests against a Kafka 4 broker"
	@echo "make lint   ruff;  make bench  benchmarks;  make clean  stop the stack, drop the venv"

bootstrap: system venv kafka-jars

system:
	@missing=""; \
	for pair in java:openjdk-17-jre-headless mvn:maven redis-server:redis-server prometheus:prometheus promtool:prometheus; do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(STAMP)

# The HTML report is checked in a real browser: Debian's chromium, driven by playwright.
browser:
	@command -v chromium >/dev/null || { echo "installing Debian package: chromium"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing Python packages into $(VENV) (torch is large: the first time takes minutes)"
	@$(VENV)/bin/pip install -q --upgrade pip
	@$(VENV)/bin/pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

kafka-jars: venv
	@$(VENV)/bin/shadow stack fetch

# `docker compose config` validates docker-compose.yml; no engine is needed for that. Where the
# client has no compose plugin, build it once from the Go module proxy.
compose-plugin:
	@docker compose version >/dev/null 2>&1 || { \
	  echo "building the docker compose plugin $(COMPOSE_VERSION) (once, a few minutes)"; \
	  GOBIN=$(CACHE)/bin GOFLAGS=-buildvcs=false go install github.com/docker/compose/v2/cmd@$(COMPOSE_VERSION) && \
	  mkdir -p $(HOME)/.docker/cli-plugins && cp $(CACHE)/bin/cmd $(HOME)/.docker/cli-plugins/docker-compose; }

demo: bootstrap
	@$(VENV)/bin/shadow demo

test: bootstrap compose-plugin browser
	$(PY) -m pytest tests/unit tests/integration -m "not faults" $(PYTEST_ARGS)

# The integration tests against a Kafka 4 broker (log4j2 backend) instead of 3.9.1.
KAFKA4_VERSION ?= 4.1.1
test-kafka4: bootstrap compose-plugin
	SHADOW_KAFKA_VERSION=$(KAFKA4_VERSION) $(PY) -m pytest tests/integration -m "not faults" $(PYTEST_ARGS)

# The slow fault tests (broker restart, Redis down 30 s) through the whole pipeline.
test-faults: bootstrap
	$(PY) -m pytest tests/integration -m faults $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: bootstrap compose-plugin browser
	$(PY) -m pytest tests/integration -m "not faults" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	@for b in bench/bench_*.py; do m=$$(basename $$b .py); echo "== $$m"; $(PY) -m bench.$$m || exit 1; done

clean:
	-@test -x $(VENV)/bin/shadow && $(VENV)/bin/shadow stack down
	rm -rf $(VENV)
