# Two commands do everything on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install install-llama demo smoke test bench serve peers clean

install: $(VENV)/.installed

# torch is installed first and pinned, so pip takes the CPU wheel instead of several GB of CUDA packages.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Opt-in: llama.cpp serves the bundled teacher only with `teacher.local_server: llama_cpp`; the default path
# never uses it. Compiles llama-cpp-python once (~5-7 min; pip caches the wheel). Pays off only for new-input
# writing on an AVX2-only CPU (0.82-0.84x of transformers' time); label scores were 4-6x slower (docs/teachers.md).
install-llama: install
	$(BIN)/pip install -q -e ".[dev,llama]"

demo: install          ## the main job on the embedded defaults (fresh clone, 2 cores with AVX512-BF16: ~9 min in all)
	$(BIN)/distill run ticket-triage

smoke: install         ## the same pipeline, small profile (~3 min once the model is converted)
	$(BIN)/distill run ticket-triage --profile smoke

serve: install         ## the gateway on the demo's registry (after make demo): http://127.0.0.1:8080
	$(BIN)/distill gateway --port 8080

test: install          ## the test suite (tiny random models, real components)
	$(BIN)/pytest -q

bench: install         ## quick benchmarks (each prints one JSON line last)
	$(BIN)/python benchmarks/train_step.py --quick
	$(BIN)/python benchmarks/train_throughput.py --quick
	$(BIN)/python benchmarks/teacher_throughput.py --quick
	$(BIN)/python benchmarks/teacher_backends.py --quick
	$(BIN)/python benchmarks/dedup_throughput.py --quick
	$(BIN)/python benchmarks/eval_gates.py --quick
	$(BIN)/python benchmarks/registry_io.py --quick
	$(BIN)/python benchmarks/flow_overhead.py --quick
	$(BIN)/python benchmarks/skill_quality.py --quick
	$(BIN)/python benchmarks/teacher_audit.py --quick
	$(BIN)/python benchmarks/confidence_filter.py --quick
	$(BIN)/python benchmarks/constrained_decoding.py --quick
	$(BIN)/python benchmarks/gateway.py --quick
	$(BIN)/python benchmarks/routing.py --quick
	$(BIN)/python benchmarks/pool_cap.py --quick

peers: install         ## the peer clients of benchmarks/teacher_throughput.py --peers (curator in its own venv)
	$(BIN)/pip install -q -e ".[dev,peers]"
	$(PYTHON) -m venv .venv-peers
	.venv-peers/bin/pip install -q "bespokelabs-curator==0.1.31"

clean:
	rm -rf .distill .pytest_cache
