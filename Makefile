# Pagelane — every target installs what it needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8080
WORKERS ?= 2
# Test processes (pytest-xdist): most tests wait on real workers, so more than the cores pays;
# tests/conftest.py gives each process its own Redis databases (at most 4).
TEST_PROCESSES ?= 3
PYTEST_PARALLEL = -n $(TEST_PROCESSES) --dist loadgroup
# System packages (the image has the same): Tesseract with the language packs the corpus needs;
# LibreOffice, its Python-UNO bridge and fonts for Office and web documents (the `-nogui`
# variants lack the UI files Writer needs when driven over UNO: docs/engine.md).
APT_PACKAGES := tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd tesseract-ocr-fra \
	tesseract-ocr-deu tesseract-ocr-nld tesseract-ocr-chi-sim \
	libreoffice-writer libreoffice-calc libreoffice-impress python3-uno \
	fonts-dejavu-core fonts-liberation2
# Only to build gunicorn-h1c (gunicorn's C request parser), which is published as source only.
BUILD_PACKAGES := gcc python3-dev
# The browser tests of the web console (tests/console): Playwright drives this Chromium.
TEST_PACKAGES := chromium

.DEFAULT_GOAL := help
.PHONY: help install system-deps run test test-fast test-api test-console lint format typecheck check-imports \
	check-unasync check-self-contained check bench \
	bench-api bench-extract bench-fairness bench-throughput bench-client bench-sandbox \
	bench-quotes bench-slices bench-events services clean

help: ## List every target
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

system-deps: ## apt-get install Tesseract, language packs, a C compiler and Chromium (when missing and apt is usable)
	@missing=$$(for p in $(APT_PACKAGES) $(BUILD_PACKAGES) $(TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "please install: $$missing" >&2; exit 1; fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: system-deps $(STAMP) ## Create .venv and install Pagelane with its dev tools

run: install ## Bring the whole service up on embedded defaults (SQLite, embedded Redis, local blobs)
	$(BIN)/pagelane up --port $(PORT) --workers $(WORKERS)

services: ## Start the machine's Postgres and Redis if they are not running (tests need them)
	@bash .ci/services.sh

test: install services ## Run the whole suite (Postgres, Redis, S3 on moto, real workers, Tesseract)
	$(BIN)/pytest -q $(PYTEST_PARALLEL)

test-fast: install services ## The suite without the slow fault-injection tests
	PAGELANE_SKIP_SLOW=1 $(BIN)/pytest -q $(PYTEST_PARALLEL)

test-api: install services ## Only the API tests (both database backends)
	$(BIN)/pytest -q tests/api

test-console: install services ## The web console in a real browser (Debian chromium + Playwright); screenshots in tests/console/artifacts/
	$(BIN)/pytest -q tests/console

lint: install ## ruff: lint rules, and the format every file must already have
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## Reformat every file (ruff format) and apply ruff's safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install ## mypy
	$(BIN)/mypy service tasks ocr pagelane bench

check-imports: install ## The import contracts (layers, no Flask in workers, no cycles): import-linter
	$(BIN)/lint-imports

check-unasync: install ## The sync client (pagelane/_sync) is what pagelane/_async generates
	$(BIN)/python -m pagelane._codegen --check

check-self-contained: ## tests/, bench/, .ci/ and this Makefile read nothing outside the repository
	$(PYTHON) .ci/check_self_contained.py

check: lint typecheck check-imports check-unasync check-self-contained ## Everything CI checks before the tests (pre-commit runs it too)

bench: bench-api bench-extract bench-fairness bench-throughput bench-client bench-sandbox \
	bench-quotes bench-slices bench-events ## Every benchmark (prints ratios)

bench-api: install services ## API latency: 10,000-id submits, polling, bulk registration
	$(BIN)/python -m bench.api

bench-extract: install ## Engine speed, OCR quality, OCR vs bare tesseract, Office warm vs cold
	$(BIN)/python bench/extract_speed.py
	$(BIN)/python bench/ocr_quality.py
	$(BIN)/python -m bench.ocr_speed
	$(BIN)/python -m bench.office_speed

bench-sandbox: install ## Per-item cost of the capped extraction child (500 one-page PDFs)
	$(BIN)/python -m bench.sandbox

bench-quotes: install services ## A quote of 1,000 one-page PDFs vs the workers just opening them
	$(BIN)/python -m bench.quotes

bench-slices: install services ## A long scan sliced vs unsliced, worker RSS, kills mid-document
	$(BIN)/python -m bench.slices

bench-fairness: install services ## Customer B's time-to-start behind A's 10,000 items
	$(BIN)/python -m bench.fairness

bench-throughput: install services ## Pages/s through the whole system vs the bare engine; the sandbox's cost
	$(BIN)/python -m bench.throughput

bench-client: install ## `pagelane run` on 500 text PDFs and on a mixed folder vs the server alone (embedded stack)
	$(BIN)/python bench/client_e2e.py

bench-events: install services ## Commit → SSE / webhook latency; 500 open SSE streams on one API process
	$(BIN)/python -m bench.events

clean: ## Remove the virtualenv, caches and the embedded data dir
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .pagelane *.egg-info
