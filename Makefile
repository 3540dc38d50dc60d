# The two commands: `make run` starts the console, `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The ML execution environment (serve.py and the other workers/jobs programs): a separate virtualenv.
ML_VENV ?= .venv-ml
ML_STAMP := $(ML_VENV)/.installed
TEST_DATA_DIR ?= $(CURDIR)/.data-test
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install ml-env run test lint unit sqlite smoke bench reliability messages clean backup restore bundle bundle-check

install: $(STAMP)

$(STAMP): pyproject.toml build-constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25.3"
	$(PY) -m pip install --quiet --build-constraint build-constraints.txt -e '.[dev]'
	touch $(STAMP)

ml-env: $(ML_STAMP)

$(ML_STAMP): requirements-ml.txt
	test -x $(ML_VENV)/bin/python || $(PYTHON) -m venv $(ML_VENV)
	$(ML_VENV)/bin/python -m pip install --quiet --upgrade "pip>=25.3"
	$(ML_VENV)/bin/python -m pip install --quiet -r requirements-ml.txt
	touch $(ML_STAMP)

run: $(STAMP)
	$(PY) manage.py runconsole

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# Without REDIS_URL the suite runs beside a private redis-server (console.devserver.embedded_redis).
define with_redis
$(if $(REDIS_URL),,$(PY) -m console.devserver.embedded_redis --data-dir $(TEST_DATA_DIR) --) $(1)
endef

# Two steps: most tests, then the `serial` ones (the fault matrix) alone. TEST_PROCESSES=2 runs the first step in two
# processes (pytest-xdist; each its own database, Redis database and DATA_DIR: tests/support/parallel.py). Not the
# default yet: full runs in two processes still fail tests that depend on what ran before them in the same process
# (docs/architecture.md, "Tests"). 0 runs it in this process, in the order one process always used.
TEST_PROCESSES ?= 0
unit: $(STAMP) $(ML_STAMP)
	DATA_DIR=$(TEST_DATA_DIR) $(call with_redis,$(PY) -m pytest --durations=30 -n $(TEST_PROCESSES) --dist loadgroup \
		-m "not heavy and not bundle and not serial" $(PYTEST_ARGS))
	DATA_DIR=$(TEST_DATA_DIR) $(call with_redis,$(PY) -m pytest --durations=30 -m "serial and not heavy and not bundle" \
		$(PYTEST_ARGS))

# Migrations and database triggers also run on SQLite, whatever DATABASE_URL says.
sqlite: $(STAMP)
	DATA_DIR=$(TEST_DATA_DIR) DATABASE_URL= $(call with_redis,$(PY) -m pytest -m both_databases -p no:cacheprovider $(PYTEST_ARGS))

smoke: $(STAMP)
	$(PY) scripts/smoke_run.py

test: lint unit sqlite smoke

bench: $(STAMP) $(ML_STAMP)
	DATA_DIR=$(TEST_DATA_DIR) $(call with_redis,$(PY) bench/run.py)

# The whole fault matrix, 20 trials of each fault with the long outages (hours); `make bench` runs 2 of each.
reliability: $(STAMP) $(ML_STAMP)
	FAULT_REPETITIONS=20 DATA_DIR=$(TEST_DATA_DIR) $(call with_redis,$(PY) bench/run.py faults)

# Back up the running console into BACKUP_DIR (or OUTPUT=dir); restore one into an empty database and DATA_DIR with
# `make restore BACKUP=<backup directory>` (FORCE=1 drops what the database holds). docs/operations.md, "Backup and restore".
backup: $(STAMP)
	$(PY) manage.py backup $(if $(OUTPUT),--output-dir $(OUTPUT))

restore: $(STAMP)
	@test -n "$(BACKUP)" || { echo "usage: make restore BACKUP=<backup directory> [FORCE=1]" >&2; exit 2; }
	$(PY) manage.py restore $(if $(FORCE),--force) "$(BACKUP)"

messages: $(STAMP)
	$(PY) manage.py makemessages -l zh_Hans --ignore '.venv/*' --ignore '.data*'
	$(PY) manage.py compilemessages -l zh_Hans --ignore '.venv/*'

clean:
	rm -rf $(TEST_DATA_DIR) test-artifacts

# The offline bundle (docs/operations.md, "Installing with no network"): wheels of both environments, the images on a
# debootstrapped Debian base, the compose and monitoring files, install.sh and SHA256SUMS, under build/bundle/.
bundle: $(STAMP)
	PYTHON=$(PY) scripts/bundle.sh $(BUNDLE_OUT)

# The bundle built from scratch and installed in a network namespace with no route out (root; about 12 minutes and
# 4 GB moved, so not in `make test`): tests/deploy/test_bundle_offline.py.
bundle-check: $(STAMP)
	DATA_DIR=$(TEST_DATA_DIR) $(call with_redis,$(PY) -m pytest -p no:cacheprovider -m bundle -s tests/deploy/test_bundle_offline.py $(PYTEST_ARGS))
