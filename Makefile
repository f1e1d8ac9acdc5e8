# The whole set-up: `make run` serves the API, `make test` checks everything.
# (The bench extra installs DBOS, the peer the run benchmark compares with; mypy checks bench/.)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest format bench clean

$(STAMP): setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

run: $(STAMP)
	STEPWELL_DEV=1 $(BIN)/stepwell serve --dev

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m bench.runs
	$(BIN)/python -m bench.schedules
	$(BIN)/python -m bench.upload
	$(BIN)/python -m bench.predict

clean:
	rm -rf $(VENV) var
