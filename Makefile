# unrecord: `make demo` and `make test` work on a fresh machine; both set up .venv first
# (`make demo` only the runtime and scikit-image, `make test` everything).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-stamp
UV := $(VENV)/bin/uv
# uv resolves what pip would (the two environments were compared package by package on
# 2026-12-02) and installs it in seconds rather than minutes; pip remains the fallback.
# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set (as on this
# project's machines), nothing would ever be compiled, and every process the tests start
# would compile Beam and TensorFlow from source again (a 20-minute suite took 34).
INSTALL = $(UV) pip install --quiet --compile-bytecode --python $(PY) \
  $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))

.PHONY: setup demo-setup lean-venv chromium test demo bench reliability fuzz clean \
  flink-up flink-down s3server

setup: $(STAMP)
demo-setup: $(DEMO_STAMP)

$(UV):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv

# Re-install whenever pyproject.toml changes; a stamp records a finished install.
# Everything the tests and benchmarks use: TensorFlow, emulators, Airflow, ...
$(STAMP): pyproject.toml | $(UV)
	$(INSTALL) -e '.[test]' || $(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Only what the demo runs: the job's runtime and scikit-image's photographs.
$(DEMO_STAMP): pyproject.toml | $(UV)
	$(INSTALL) -e '.[demo]' || $(PY) -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

# What `make demo` installs on a fresh machine, as a second venv for the tests
# (tests/test_logs.py): the runtime alone logs differently from the full test venv.
# Built once, again only when pyproject.toml changes (17-50 s from cold with uv's cache,
# on a busy 2-core machine).
LEAN_VENV := build/lean-venv
LEAN_STAMP := $(LEAN_VENV)/.installed-stamp
lean-venv: $(LEAN_STAMP)

$(LEAN_STAMP): pyproject.toml | $(UV)
	rm -rf $(LEAN_VENV)
	$(UV) venv --quiet --python $(PY) $(LEAN_VENV)
	$(UV) pip install --quiet --compile-bytecode --python $(LEAN_VENV)/bin/python \
	  $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) -e '.[demo]'
	touch $(LEAN_STAMP)

# bench.incremental_launch's S3 server (gofakes3, in memory): Go, its modules from the Go
# module proxy at the first build (about 30 s), again only when its sources change.
S3SERVER := build/s3server
s3server: $(S3SERVER)

$(S3SERVER): bench/s3server/main.go bench/s3server/go.mod bench/s3server/go.sum
	mkdir -p build
	cd bench/s3server && go build -o ../../$(S3SERVER) .

# Headless Chromium renders _report.html in a test; installed from Debian when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	   chromium >/dev/null) || \
	  echo "make: chromium could not be installed; the report screenshot test will say so"

# The Flink tests need the local cluster: up before pytest (if it cannot start, those
# tests fail and say so), down after it whatever pytest did; pytest's exit status is make's.
# Two pytest workers: most tests wait on a job's start-up, so two keep both cores busy;
# the tests that share the cluster's two slots run on one of them (xdist_group 'flink').
PYTEST_WORKERS ?= 2
test: setup chromium lean-venv s3server
	$(MAKE) flink-up; $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup; \
	  status=$$?; $(MAKE) flink-down; exit $$status

# A local Flink 1.19.3 cluster (JobManager, a TaskManager with 2 slots) and Beam's Flink
# job server on 127.0.0.1 (REST 8081, job endpoint 8099), all under build/flink/: the jar
# is built with Maven from deploy/flink/job-server/pom.xml (again only when it changes),
# Flink comes from PyPI once. Both targets are idempotent; down stops exactly those pids.
flink-up: setup
	$(PY) deploy/flink/local_cluster.py up

flink-down:
	@if [ -x $(PY) ]; then $(PY) deploy/flink/local_cluster.py down; \
	  else python3 deploy/flink/local_cluster.py down; fi

# unrecord beside its peers (loop, thread pool, tf.data, naive Beam) and the encode floor on
# TensorFlow-written data; rewrites docs/benchmarks.md's whole-job section and its plot.
# About 20-25 minutes on 2 cores, then the scale case (10^5 and 10^6 images, JSONL and
# Parquet manifests; about 3 minutes), then the shards case (files, tar and Parquet at
# 10^6 images locally and 15,000 on the S3 emulator; rewrites docs/shards.md's table).
# `make test` runs the first harness with --quick.
bench: setup s3server
	$(PY) -m bench.run; status=$$?; $(PY) -m bench.scale || status=1; \
	  $(PY) -m bench.shards || status=1; exit $$status

# The reliability tests alone, printing the figures docs/reliability.md records.
reliability: setup
	$(PY) -m pytest -s -q tests/test_corruption.py tests/test_bombs.py \
	  tests/test_crash_safety.py tests/test_reasons.py tests/test_isolation.py \
	  tests/test_fuzz.py tests/test_atheris.py tests/test_scheduler_promises.py \
	  tests/test_airflow_schedule.py tests/test_storage_faults.py

# Coverage-guided fuzzing for as long as you like (default one hour): FUZZ_SECONDS=36000.
FUZZ_SECONDS ?= 3600
fuzz: setup
	mkdir -p fuzz_corpus
	$(PY) tests/fuzz/fuzz_pipeline.py -max_total_time=$(FUZZ_SECONDS) fuzz_corpus/

# Exports a bundled sample of real photographs (scikit-image's, no download) with the job,
# then draws demo_out/contact_sheet.png from the written files.
demo: demo-setup
	$(PY) -m beam_jobs.demo --folder demo_out

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
