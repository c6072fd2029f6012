# Two commands on a fresh machine: `make up` starts the whole stack on the embedded default,
# `make test` runs the tests. Both install what they need into .venv first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

.PHONY: install up test
install: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/meterline up

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q
