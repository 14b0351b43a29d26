# The two set-up commands of the README: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# the demo and the tests never reach for a model hub
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
DEMO_CONFIG := config/demo.yaml

.PHONY: install demo report test test-fast test-slurm lint format dryrun clean

install: $(STAMP)

# torch first and alone: anything that pulls torch later would swap the CPU wheel for a CUDA build.
# open-clip-torch only ships the CLIP BPE vocabulary for the offline tokenizer; --no-deps keeps
# torchvision out.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps open-clip-torch==3.3.0
	touch $(STAMP)

demo: install
	start=$$(date +%s); \
	$(OFFLINE) $(VENV)/bin/snakemake --cores 8 --resources gpu=1 --configfile $(DEMO_CONFIG); \
	$(OFFLINE) $(VENV)/bin/snakemake --cores 1 --configfile $(DEMO_CONFIG) --report results/report/report.html; \
	echo "demo finished in $$(( $$(date +%s) - start )) s: results/report/summary.md, results/report/report.html"

test: install
	$(OFFLINE) $(PY) -m pytest -q

test-fast: install
	$(OFFLINE) $(PY) -m pytest -q -m "not e2e"

# Not part of `make test` (root, apt, ~5-10 min): Debian's Slurm + munge + slurmdbd as a one-node
# cluster on loopback, the demo DAG through profiles/slurm, checked with sacct against a local run.
test-slurm: install
	$(OFFLINE) PY=$(PY) tests/slurm/run.sh

dryrun: install
	$(VENV)/bin/snakemake -n --quiet rules

lint: install
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/ruff check workflow tests benchmarks
	$(VENV)/bin/snakefmt --check Snakefile rules

format: install
	$(VENV)/bin/ruff format workflow tests benchmarks
	$(VENV)/bin/snakefmt Snakefile rules

clean:
	rm -rf results .snakemake
