# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test docs bench lint browser clean

install: $(STAMP)

# torch pinned: that CPU wheel is on disk; a bare `torch` would pull a multi-GB CUDA build. One resolve for
# torch and the extras (the pin holds within it), not two.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/optimlab trace adam --function notes --lr 0.1 --steps 10
	$(BIN)/optimlab tour

# Debian's Chromium for the browser tests, installed when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# pytest-xdist: TEST_WORKERS processes (2, CI's cores; `auto` = one per core, 0 = no workers); tests/conftest.py
# keeps each module's tests that share a module-scoped fixture on one worker (`--dist loadgroup`).
TEST_WORKERS ?= 2

test: install browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The documentation site (MkDocs, Material theme) from docs/ into site/: offline, warnings are errors.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: install
	$(BIN)/optimlab bench

lint: install
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) optimlab-report site .pytest_cache
