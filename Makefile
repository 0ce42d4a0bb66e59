# DermaLens: `make app` starts the dashboard, `make test` runs the whole test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP_RUN := $(VENV)/.stamp-runtime
STAMP_DEV := $(VENV)/.stamp-dev

.PHONY: app test lint format bench clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP_RUN): requirements.txt pyproject.toml | $(PY)
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -e .
	touch $@

$(STAMP_DEV): $(STAMP_RUN) requirements-dev.txt
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

app: $(STAMP_RUN)
	$(VENV)/bin/streamlit run app/main.py

test: $(STAMP_DEV)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP_RUN)
	$(PY) benchmarks/data_loading.py

clean-venv:
	rm -rf $(VENV)
