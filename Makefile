# Two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-crash test-ray bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bottleneck demo

# Two pytest workers (pytest-xdist): one process keeps only one of the two cores busy (measured: 5:41 serial).
test: $(STAMP)
	$(BIN)/ruff check bottleneck tests
	$(BIN)/python -m pytest -q -n 2 --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m slow

# The crash-test harness: every write of extract, train-head, sweep and merge failed or killed in turn.
test-crash: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m crash

# The Ray engine's tests: installs the optional [ray] extra first (`make test` skips them).
test-ray: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,ray]"
	$(BIN)/python -m pytest -q -m ray

bench: $(STAMP)
	$(BIN)/bottleneck bench

clean:
	rm -rf $(VENV) demo_data runs cache/*.h5 cache/*.journal cache/*.lock
