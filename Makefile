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

.PHONY: install demo report test test-fast test-slurm test-browser publish lint format dryrun clean

install: $(STAMP)

# torch first and alone: anything that pulls torch later would swap the CPU wheel for a CUDA build.
# open-clip-torch only ships the CLIP BPE vocabulary for the offline tokenizer; --no-deps keeps
# torchvision out. The fid extra (torch-fidelity, Inception FID) pins torchvision to torch 2.13.0's
# release, so torch stays; a torchvision of the other build (CUDA beside a CPU torch) fails at import
# and breaks transformers' image processors, so it is removed again then.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps open-clip-torch==3.3.0
	{ $(PY) -m pip install -q -e '.[fid]' && $(PY) -c 'import torch_fidelity' 2>/dev/null; } || { \
	  $(PY) -m pip uninstall -q -y torch-fidelity torchvision; \
	  echo "torch-fidelity left out: torchvision 0.28.0 from PyPI does not load beside torch $$($(PY) -c 'import torch; print(torch.__version__)'); quality.features: inception needs the same build (CPU: pip install torchvision==0.28.0+cpu --index-url https://download.pytorch.org/whl/cpu, then torch-fidelity==0.4.0); domain and tiny work without it"; }
	touch $(STAMP)

demo: install
	start=$$(date +%s); \
	$(OFFLINE) $(VENV)/bin/snakemake --cores 8 --resources gpu=1 --configfile $(DEMO_CONFIG); \
	$(OFFLINE) $(VENV)/bin/snakemake --cores 1 --configfile $(DEMO_CONFIG) --report results/report/report.html; \
	echo "demo finished in $$(( $$(date +%s) - start )) s: results/report/summary.md, results/report/report.html"

test: install
	$(OFFLINE) $(PY) -m pytest -q --durations=15

test-fast: install
	$(OFFLINE) $(PY) -m pytest -q -m "not e2e"

# Not part of `make test` (root, apt, ~5-10 min): Debian's Slurm + munge + slurmdbd as a one-node
# cluster on loopback, the demo DAG through profiles/slurm, checked with sacct against a local run.
test-slurm: install
	$(OFFLINE) PY=$(PY) tests/slurm/run.sh

# Not part of `make test` (root for apt): the demo's report.html opened in headless Chromium, checked
# for console errors, every summary.md section, Table IV's numbers and decodable figures
# (tests/browser/check_report.py); screenshots go to results/report/.
test-browser: install
	command -v chromium >/dev/null && test -x /usr/bin/chromedriver || \
	  { apt-get update -q && apt-get install -y -q --no-install-recommends chromium chromium-driver; }
	$(PY) -c 'import selenium' 2>/dev/null || $(PY) -m pip install -q selenium
	test -f results/report/report.html || $(MAKE) demo
	$(PY) tests/browser/check_report.py results/report

# The LoRA (with its model card) and the synthetic set (with its datasheet) to the Hugging Face Hub:
# needs publish.repo_id in CONFIG and a token. Never part of the tests.
CONFIG ?= config/config.yaml
publish: install
	$(PY) -m dermsynth.publish --config $(CONFIG)

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
