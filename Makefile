# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv (once) and install evalkit into it with its test extras; pip shows its
# progress (the first install downloads torch and takes a few minutes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test

$(STAMP): setup.py
	@echo "[setup 1/3] creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "[setup 2/3] upgrading pip"
	$(BIN)/python -m pip install --upgrade pip
	@echo "[setup 3/3] installing evalkit and its test extras (torch, numba, sentencepiece, ...): a few minutes"
	$(BIN)/python -m pip install -e '.[test,compress]'
	touch $(STAMP)
	@echo "[setup] done: $(VENV) is ready"

demo: $(STAMP)
	$(BIN)/python -m evalkit.demo

# pytest.ini adds -rs: every skipped test is listed with its reason, then the "N passed" line.
test: $(STAMP)
	$(BIN)/python -m pytest
