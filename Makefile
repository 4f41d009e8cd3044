# One entry point for people and CI. `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo lint typecheck test pytest bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

DEMO_ARGS ?=
demo: $(STAMP)
	$(VENV)/bin/imagestudio demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench testkit
	$(VENV)/bin/ruff format --check src tests bench testkit
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	scripts/ensure-services
	scripts/ensure-browser
	scripts/run-pytest $(VENV)

test: lint typecheck pytest

bench: $(STAMP)
	scripts/ensure-services
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache imagestudio-demo bench/out
