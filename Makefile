# Two commands do all the set-up: `make run` (dashboard on the demo database) and `make test` (every check).
# Both create the local virtualenv .venv on first use; nothing has to be installed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint bench bench-receiver demo screenshot clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(STAMP)
	$(BIN)/tokentrail serve

demo: $(STAMP)
	$(BIN)/tokentrail demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP)
	bash scripts/ensure-chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

screenshot: $(STAMP)  # refresh docs/overview.png (the README's picture) from the browser test
	bash scripts/ensure-chromium
	TOKENTRAIL_README_SHOT=1 $(BIN)/python -m pytest tests/test_browser.py -q

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

bench-receiver: $(STAMP)
	$(BIN)/python bench/receiver.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts
