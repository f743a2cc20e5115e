# The two README commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test unit lint up down status bench clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## virtualenv with the pinned dependencies, package installed editable

demo: install      ## end-to-end demo on an embedded local Kafka
	$(BIN)/llmspend demo

test: install      ## every test; integration tests start the local broker if none answers
	$(BIN)/python -m pytest

unit: install      ## fast tests only, no broker
	$(BIN)/python -m pytest -m "not integration"

lint: install
	$(BIN)/ruff check pipeline schemas jobs tests bench

up: install
	$(BIN)/llmspend up

down: install
	$(BIN)/llmspend down

status: install
	$(BIN)/llmspend status

clean: down
	rm -rf .llmspend
