# unrecord: `make demo` and `make test` work on a fresh machine; both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test demo clean

setup: $(STAMP)

# Re-install whenever pyproject.toml changes; the stamp records a finished install.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest

# Exports a bundled sample of real photographs (scikit-image's, no download) with the job.
demo: setup
	$(PY) -m beam_jobs.demo --folder demo_out

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
