# The platform's entry points. `make run` and `make test` install whatever is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

STATE      ?= .state
UV_VERSION := 0.13.8
UV_HOME    := $(STATE)/uv
UV         := $(shell command -v uv 2>/dev/null || echo $(UV_HOME)/bin/uv)
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# portable llama.cpp build (the wheel is cached by uv and reused by later installs)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: help install browser sip run test test-unit lint fmt schemas helm-check bench bench-soak bench-peer bench-stt bench-fuzz bench-fuzz-sip bench-chaos bench-knowledge bench-intents bench-capacity clean

help:
	@echo "make run        install what is missing, start the whole platform (Ctrl-C stops it); the embedded LLM is"
	@echo "                Qwen2.5-Coder-1.5B (1.1 GB, installed and verified on first use), LLM_PROFILE=fast: SmolLM2"
	@echo "make test       install what is missing, run the test suite against real NATS/PostgreSQL"
	@echo "make lint       ruff + mypy"
	@echo "make schemas    regenerate JSON Schemas and the AsyncAPI document"
	@echo "make helm-check lint, render and validate the Helm chart offline"
	@echo "make bench      voice-to-voice / barge-in / bus benchmarks against a running platform"

$(UV_HOME)/bin/uv:
	@bash tools/prereqs.sh
	@echo "==> installing uv $(UV_VERSION) into $(UV_HOME)"
	@python3.11 -m venv $(UV_HOME) && $(UV_HOME)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock schemas/pyproject.toml libs/runtime/pyproject.toml services/*/pyproject.toml dev/*/pyproject.toml | $(UV)
	@bash tools/prereqs.sh
	@echo "==> installing the platform (first time: 8-15 min on 2 cores, llama.cpp is compiled once; uv caches it)"
	$(UV) sync --frozen --python python3.11
	@echo "==> preparing the Moonshine speech model (one-time conversion, cached in $(STATE)/models)"
	@$(PY) -m voice_stt.engines.moonshine_models >/dev/null
	@touch $(STAMP)

install: $(STAMP)

# Chromium for the browser tests of the web console (Debian's package; Playwright never downloads a browser)
browser:
	@bash tools/prereqs.sh browser

# SIPp, the SIP caller of the SIP tests (Debian's sip-tester: sipp plus its G.711 and RFC 4733 DTMF captures)
sip:
	@bash tools/prereqs.sh sip

run: $(STAMP)
	@$(PY) -m voice_devstack run

test: $(STAMP) browser sip
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

schemas: $(STAMP)
	$(PY) -m voice_schemas.generate

helm-check: $(STAMP)
	$(PY) deploy/helm/check.py

bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

bench-soak: $(STAMP)
	$(PY) -m bench.run --soak $(BENCH_ARGS)

bench-peer: $(STAMP)
	$(PY) -m bench.run --peer $(BENCH_ARGS)

# STT accuracy and latency per engine on a fixed phone test set (espeak-ng adds a second, harder voice)
bench-stt: $(STAMP)
	@command -v espeak-ng >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -q espeak-ng >/dev/null 2>&1; } || echo "note: espeak-ng is not installed: its voice is left out"
	$(PY) -m bench.stt_accuracy $(BENCH_ARGS)

# fuzzed Twilio messages and webhooks (100,000) at an ingress of its own during a real call, and control-api under
# every schemathesis check (starts what it needs on free ports; see bench/fuzz.py)
bench-fuzz: $(STAMP)
	$(PY) -m bench.fuzz $(BENCH_ARGS)

# 100,000 malformed and hostile SIP messages at the SIP port during a real SIP call (its own stack on free ports;
# BENCH_ARGS="--messages 5000" for a short run; see bench/fuzz_sip.py)
bench-fuzz-sip: $(STAMP)
	$(PY) -m bench.fuzz_sip $(BENCH_ARGS)

# kill a random stage worker every few seconds during 100 short calls (needs `make run STAGE_REPLICAS=2
# TWILIO_ALLOW_UNSIGNED=true` in another terminal; see bench/chaos.py), then the fuzz volume
bench-chaos: $(STAMP)
	$(PY) -m bench.chaos $(BENCH_ARGS)

# voice-to-voice of cached answers (an intent matched, no LLM request) beside the LLM path (needs `make run`)
bench-intents: $(STAMP)
	$(PY) -m bench.intents $(BENCH_ARGS)

# knowledge retrieval latency at 10,000 chunks (its own database on the local or embedded PostgreSQL)
bench-knowledge: $(STAMP)
	$(PY) -m bench.knowledge $(BENCH_ARGS)

# concurrent calls that ingress + media + the bus carry with stt/brain/tts answering at once (stand-ins), its own
# stack on free ports, callers in their own process; BENCH_ARGS="--steps 10,50 --turns 1" for a short run
bench-capacity: $(STAMP)
	$(PY) -m bench.capacity $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(STATE)
