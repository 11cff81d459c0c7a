# atmaCup #11 era-from-photo pipeline. `make help` lists the targets; `make -n <target>` shows the
# exact commands, which a person can rerun by hand.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules --warn-undefined-variables

# ---- what users set -------------------------------------------------------------------------
DATA ?= data/raw#          raw competition files (train.csv, test.csv, ..., photos/)
WORK ?= work#              every stage writes WORK/<stage>/
GPUS ?=#                   comma-separated GPU ids (0,1,2,3); empty: CPU
PROFILE ?= $(if $(GPUS),full,cpu)#  full (the recipe) | cpu (2 cores) | smoke (tests)
FOLD ?= 0#                 make fold: 0 1 2 all
TASK ?= target#            make fold: target onehot sortingdate word2vec
PYTHON ?= python3#         the interpreter that builds .venv

# ---- derived --------------------------------------------------------------------------------
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/requirements.txt
SYSDEPS_STAMP := $(VENV)/sysdeps
DIR_DEMO := $(WORK)/00_demo_data
DIR_VALID := $(WORK)/00_validate
DIR_FOLDS := $(WORK)/01_sgkfold
# Real data when DATA holds a train.csv; otherwise the generated demo set.
RAW := $(if $(wildcard $(DATA)/train.csv),$(DATA),$(DIR_DEMO))
RAW_STAMP := $(if $(wildcard $(DATA)/train.csv),$(DATA)/train.csv,$(DIR_DEMO)/DONE)
ifeq ($(RAW),$(DIR_DEMO))
ifneq ($(filter all demo validate folds,$(or $(MAKECMDGOALS),help)),)
$(info No train.csv in DATA=$(DATA): using generated demo data in $(DIR_DEMO) (PROFILE=$(PROFILE)).)
endif
endif

.PHONY: help all setup test clean demo validate folds FORCE

help: ## list the targets (the default goal)
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: DATA=$(DATA) WORK=$(WORK) GPUS=$(GPUS) PROFILE=$(PROFILE) FOLD=$(FOLD) TASK=$(TASK)"

all: folds ## the whole pipeline, every stage that exists (demo data when DATA has no train.csv)

# ---- environment: .venv rebuilt only when requirements.txt changes -------------------------
$(VENV_STAMP): requirements.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	cp requirements.txt $@

$(SYSDEPS_STAMP): | $(VENV_STAMP)
	@command -v convert >/dev/null && command -v mogrify >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing ImageMagick with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq imagemagick >/dev/null; \
	  else echo "ImageMagick (convert, mogrify) is missing: install it (apt-get install imagemagick)" >&2; exit 1; fi; }
	convert -version | head -1 > $@

setup: $(VENV_STAMP) $(SYSDEPS_STAMP) ## build .venv from requirements.txt and check ImageMagick

# ---- stages ---------------------------------------------------------------------------------
$(DIR_DEMO)/DONE: | $(VENV_STAMP)
	$(PY) 00_demo_data.py --out $(DIR_DEMO)

# source.txt changes only when the data's content does (checked on every run, in ~0.1 s); a WORK
# built from other data is refused rather than silently rebuilt over hours of training.
$(DIR_VALID)/source.txt: $(RAW_STAMP) FORCE | $(VENV_STAMP)
	@$(PY) common.py fingerprint --data $(RAW) --out $(DIR_VALID)

$(DIR_VALID)/DONE: $(DIR_VALID)/source.txt
	$(PY) common.py validate --data $(RAW) --out $(DIR_VALID)

$(DIR_FOLDS)/DONE: $(DIR_VALID)/DONE
	$(PY) 01_sgkfold.py --data $(RAW) --out $(DIR_FOLDS)

demo: $(DIR_DEMO)/DONE ## generate the demo raw data set (00_demo_data.py)
validate: $(DIR_VALID)/DONE ## check the raw data once: files, columns, ids, targets, photo headers
folds: $(DIR_FOLDS)/DONE ## 3 grouped stratified folds + fold all, and the word2vec targets (01)

# ---- checks and housekeeping ----------------------------------------------------------------
test: setup ## run the test suite (sets itself up; uses ../shared/atmacup11 when present)
	$(PY) -m pytest -q tests

clean: ## delete WORK (never the raw data, never .venv)
	rm -rf $(WORK)

FORCE:

-include sync/sync.mk docker/docker.mk bench/bench.mk
