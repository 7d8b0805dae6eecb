# `make run`  — set up a virtual environment and start the mirror (embedded default config
#               unless ./config.yaml exists; pass CONFIG=path/to/config.yaml to choose one).
# `make test` — set up the same environment with the test tools and run lint + the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: run sync test lint browser postgres bench-serve bench-sync bench-cache bench-votes clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "pypi-mirror needs Python 3.11 or newer ($(PYTHON) is older)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/pypi-mirror serve $(if $(CONFIG),-c $(CONFIG))

sync: $(STAMP)
	$(BIN)/pypi-mirror sync $(if $(CONFIG),-c $(CONFIG))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# tests/test_monitoring.py loads the status page in a real headless Chromium: installed here
# where we can (root on Debian/Ubuntu); elsewhere that one test is skipped with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
			|| echo "chromium could not be installed: the status page browser test will skip"; \
	else \
		echo "no chromium (and not root with apt-get): the status page browser test will skip"; \
	fi

# The PostgreSQL tests start their own throwaway server (tests/pgserver.py) from Debian's
# postgresql package, installed here where we can (root with apt-get); elsewhere they skip.
# (Debian's package may also start its own cluster on 5432: the tests never use it.)
HAVE_POSTGRES = { [ -x "$$(pg_config --bindir 2>/dev/null)/initdb" ] || \
	ls /usr/lib/postgresql/*/bin/initdb || command -v initdb; } >/dev/null 2>&1

postgres:
	@$(HAVE_POSTGRES) || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
			|| echo "postgresql could not be installed: the PostgreSQL tests will skip"; \
	else \
		echo "no PostgreSQL server (and not root with apt-get): the PostgreSQL tests will skip"; \
	fi

# With the server installed, a PostgreSQL test that cannot find it fails instead of skipping.
test: lint browser postgres
	@if $(HAVE_POSTGRES); then export PYPI_MIRROR_REQUIRE_POSTGRES=1; fi; \
		echo "$(BIN)/pytest -q"; $(BIN)/pytest -q

bench-serve: $(STAMP)
	benchmarks/serve

bench-sync: $(STAMP)
	benchmarks/sync

bench-cache: $(STAMP)
	benchmarks/cache

bench-votes: $(STAMP)
	benchmarks/votes

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
