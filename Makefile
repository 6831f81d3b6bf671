# make demo       set up and run the end-to-end demo (synthetic data unless DATA_DIR is given)
# make test       set up and run the test suite (what CI runs)
# make test-slow  the slow tests (longer training runs)
# make reproduce  the seed table on ESC-50 (DATA_DIR=..., REPRODUCE_ARGS="--budget-minutes 8 --rows ..."); resumable
# make lock       re-resolve requirements/lock.txt from pyproject.toml (the only way the lock changes)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Every install goes through this lock: a new upstream release can never change a fresh clone's environment.
LOCK := requirements/lock.txt

.PHONY: setup check-env demo reproduce test test-slow lint lock clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --constraint $(LOCK) -e ".[dev]"
	$(PY) -m audio_ssl.utils.environment
	touch $(STAMP)

setup: $(STAMP)

# Fails early, with the fix in the message, when torch / torchaudio / libsndfile cannot be imported.
check-env: $(STAMP)
	$(PY) -m audio_ssl.utils.environment

demo: check-env
	$(VENV)/bin/audio-ssl demo $(if $(DATA_DIR),--data-dir $(DATA_DIR))

# Every row of experiments/reproduce.yaml into results/reproduce/ and the README's seed table; run it again to
# continue after a budget stop (finished folds are skipped). `REPRODUCE_ARGS=--smoke` is the CPU rehearsal.
reproduce: check-env
	$(VENV)/bin/audio-ssl reproduce $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(REPRODUCE_ARGS)

test: check-env
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider

test-slow: check-env
	$(PY) -m pytest -q -m slow -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check audio_ssl tests benchmarks

# Re-resolve the lock from pyproject.toml with pip-tools in a throw-away environment.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet "pip-tools==7.6.2"
	.venv-lock/bin/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url \
		--no-emit-find-links --no-emit-trusted-host -o $(LOCK) pyproject.toml
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) runs .pytest_cache
