# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv (once) and install evalkit into it with its test extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,compress]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m evalkit.demo

test: $(STAMP)
	$(BIN)/python -m pytest
