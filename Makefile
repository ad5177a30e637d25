# The two commands: `make demo` (the main job on synthetic data) and `make test`.
# Both create .venv and install ptxseg into it when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DEMO_DIR ?= demo-output

.PHONY: demo test test-browser test-pacs format install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ptxseg demo --out $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# The real-browser test of the web page: Debian's chromium + Playwright (no browser download).
test-browser: $(STAMP)
	bash scripts/install-browser.sh
	$(BIN)/python -m pytest -q -m browser

# The PACS round trips against a real Orthanc (Debian's orthanc + orthanc-dicomweb packages).
test-pacs: $(STAMP)
	bash scripts/install-orthanc.sh
	$(BIN)/python -m pytest -q -m pacs

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(DEMO_DIR) build dist src/*.egg-info
