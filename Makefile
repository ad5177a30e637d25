# The two commands: `make demo` (the main job on synthetic data) and `make test`.
# Both create .venv and install ptxseg into it when needed, from the committed lock
# (requirements/dev.txt: exact versions with hashes), so a fresh machine gets the versions the
# tests passed with. `make lock` refreshes the lock from pyproject.toml's ranges.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/dev.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)
DEMO_DIR ?= demo-output

.PHONY: demo test docs test-browser test-pacs test-faults test-conformance test-viewer viewer format install lock clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --require-hashes -r $(LOCK)
	$(BIN)/pip install --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ptxseg demo --out $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python tools/function_sizes.py --check src/ptxseg
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir build/site-check
	$(BIN)/python -m pytest -q

# The documentation site (MkDocs + Material, mkdocs.yml) into site/, offline.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The real-browser test of the web page: Debian's chromium + Playwright (no browser download).
test-browser: $(STAMP)
	bash scripts/install-browser.sh
	$(BIN)/python -m pytest -q -m browser

# The PACS round trips against a real Orthanc (Debian's orthanc + orthanc-dicomweb packages).
test-pacs: $(STAMP)
	bash scripts/install-orthanc.sh
	$(BIN)/python -m pytest -q -m 'pacs and not slow'

# `ptxseg listen` under kill -9 and a stopped destination (docs/pacs.md); prints its figures.
test-faults: $(STAMP)
	bash scripts/install-orthanc.sh
	$(BIN)/python -m pytest -q -rP -m 'slow and pacs' tests/integration/test_listen_faults.py

# Every DICOM output (predict, serve, dicomweb, listen, repair-uids) through dciodvfy, the DICOM
# validator of Debian's dicom3tools: 0 errors, and only the warnings docs/conformance.md explains.
test-conformance: $(STAMP)
	bash scripts/install-dicom3tools.sh
	$(BIN)/python -m pytest -q -m conformance

# The OHIF viewer that `ptxseg view` serves: npm's @ohif/app at the version and sha512 that
# viewer/package-lock.json pins, into viewer/node_modules (not part of the wheel).
viewer:
	bash scripts/install-viewer.sh

# The results in a radiologist's viewer: Orthanc (Debian) + the pinned OHIF under `ptxseg view`,
# driven by Playwright in Debian's chromium; screenshots in test-artifacts/viewer/.
test-viewer: $(STAMP)
	bash scripts/install-orthanc.sh
	bash scripts/install-browser.sh
	bash scripts/install-dicom3tools.sh
	bash scripts/install-viewer.sh
	$(BIN)/python -m pytest -q -m viewer

# Resolve pyproject.toml's ranges (the dev and browser extras) to exact versions with hashes.
lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --extra dev --extra browser --generate-hashes --allow-unsafe \
		--strip-extras --no-emit-index-url --no-emit-find-links \
		-c requirements/constraints.txt -o $(LOCK) pyproject.toml

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(DEMO_DIR) build dist site src/*.egg-info
