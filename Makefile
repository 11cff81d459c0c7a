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
GPUS ?=#                   comma-separated GPU ids as nvidia-smi numbers them (0,1,2,3), within a preset CUDA_VISIBLE_DEVICES; empty: CPU. CUDA is checked on them before any stage
GPU_LOCKS ?= /tmp/atma11-gpu-locks#  the GPU slot locks, shared by every WORK on this host: two runs never share a GPU
PROFILE ?= $(if $(GPUS),full,$(if $(DEMO_DATA),smoke,cpu))#  full (the recipe, GPUs) | cpu (the CPU hour) | smoke (seconds: tests, the demo data) | rehearsal (full's path at toy size, CPU)
FOLD ?= 0#                 make fold: 0 1 2 all
TASK ?= target#            make fold: target onehot sortingdate word2vec multi
NETS ?= $(call profile_word,nets)#  per fold: the four tasks' networks (the recipe: full, rehearsal), or multi: one with four heads (cpu, smoke)
SEEDS ?= $(call profile_word,seeds)#  networks per net and fold, of seeds 0..SEEDS-1, their outputs averaged by 05 (1: the recipe)
EVAL ?= $(if $(filter rehearsal,$(PROFILE)),process)#  04's evaluator: process (the recipe; GPU default) | inline (CPU default; a GPU in an exclusive compute mode) | empty: that default
RANKS ?= $(if $(filter rehearsal,$(PROFILE)),2,$(if $(filter MIG-%,$(subst $(comma), ,$(GPUS))),1,$(filter-out 0,$(NGPUS))))#  03's processes under torchrun (DDP): one per GPU (MIG slices: 1); rehearsal: 2 on the CPU
FULL_ON_CPU ?=#            yes: PROFILE=full trains without GPUS (days); else it stops first, with a measured estimate
FOLD_TEST ?=#              05: yes: the fold networks describe test.csv too (the oof stacks' test side) | no: only fold all's (oof stacks scored, not submitted) | empty: the profile's (cpu no, else yes)
PYTHON ?= python3#         the interpreter that builds .venv
INSTALLER ?= uv#           make setup: uv (parallel; pip where uv fails) | pip
RESIZE ?= stretch#         02: stretch (the recipe) | pad (edge-replicated square, 1st place)
JIGSAW_ARGS ?=#            extra 03_jigsaw.py options, e.g. --epochs 10 --norm bn
FINETUNE_ARGS ?=#          extra 04_finetune.py options, e.g. --init scratch --loss ce
BUDGET ?=#                 PROFILE=cpu: minutes for the whole run (empty: 60); the fine-tunes' epochs and seeds are chosen to fit, from this machine's measured speed | off: the profile's. SEEDS or an --epochs in FINETUNE_ARGS pin them
SUBMIT ?= best#            06: best (the lowest-CV stack, tuned post-processing) | recipe (the recipe's own)
STACK_ARGS ?=#             extra 06_stack.py options, e.g. --mode seed --meta native
ID ?=#                     make views: the object_id to show
TEST_JOBS ?= auto#         make test: pytest-xdist workers (auto: one per core; 0: none, one process)
MAX_PIXELS ?= 25000000#    validation: the largest photo (width x height) 02's ImageMagick must decode

# Make's own names (stage directories, commands), every check of the variables above, the WORK
# lock and the budget's plan: worked out before any rule, in make/checks.mk.
include make/checks.mk

.PHONY: help all setup test clean demo validate folds hvr views jigsaw finetune fold features stack \
	submit report status cv-plot preflight budget-plan FORCE

help: ## list the targets (the default goal), in the pipeline's order
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: DATA=$(DATA) WORK=$(WORK) GPUS=$(GPUS) PROFILE=$(PROFILE) FOLD=$(FOLD) TASK=$(TASK)"

ifeq ($(BUDGET_PENDING),)
all: submit ## the whole pipeline, every stage that exists (demo data when DATA has no train.csv)
else
# No plan yet for this BUDGET: plan (after 00-02, which it counts), then the goals in a sub-make
# that reads the plan (it holds this make's WORK lock).
$(BUDGET_GOALS): budget-plan
budget-plan: $(DIR_HVR)/DONE $(DIR_FOLDS)/DONE | preflight
	$(PY) budget.py plan --budget $(BUDGET_ON) --profile $(PROFILE) --data $(RAW) --folds $(DIR_FOLDS) \
	  --hvr $(DIR_HVR) --nets $(words $(NETS)) --out $(DIR_FT)
	$(MAKE) $(MAKECMDGOALS)
endif

# ---- the pipeline's goals, in its order ------------------------------------------------------
demo: $(DIR_DEMO)/DONE ## generate the demo raw data set (00_demo_data.py)
validate: $(DIR_VALID)/DONE ## check the raw data once: files, columns, ids, targets, photo headers
folds: $(DIR_FOLDS)/DONE ## 3 grouped stratified folds + fold all, and the word2vec targets (01)
hvr: $(DIR_HVR)/DONE ## decode and resize every photo once into WORK/02_hvr (02; RESIZE=stretch|pad)
jigsaw: $(DIR_JIG)/DONE ## 3x3 jigsaw pretraining (03); torchrun across GPUS when several

ifeq ($(BUDGET_PENDING),)
fold: $(DIR_FT)/$(TASK)_$(FOLD)/DONE ## one fine-tune run and its evaluator: FOLD=0|1|2|all TASK=...
finetune: $(FT_STAMPS) ## every fine-tune run (04: NETS x 4 folds x SEEDS), one per GPU at a time
features: $(foreach r,$(RUNS),$(DIR_FEAT)/$(r)/DONE) ## 8-view outputs of every network on every object stacking needs (05)
stack: $(DIR_STACK)/DONE ## LightGBM stacking: four stacks scored, the best (or SUBMIT=recipe) submitted (06)
submit: $(DIR_SUB)/DONE ## WORK/07_submit/submission.csv, validated, and report.md (07)
report: submit ## the report, WORK/07_submit/report.md (written with the submission)
endif

views: $(DIR_HVR)/DONE ## write WORK/02_hvr/views_<ID>.png: the 8 views of one photo (ID=object_id)
	$(PY) pixels.py views --store $(DIR_HVR) --id $(call quoted,$(ID))
status: | $(VENV_STAMP) ## every 03/04 run (epoch, loss, held-out RMSE, images/s, state), CV per task
	@$(PY) reporting.py status --jigsaw $(DIR_JIG) --finetune $(DIR_FT) --nets $(NETS)
cv-plot: | $(VENV_STAMP) ## held-out RMSE per epoch per fold, per task: WORK/04_finetune/cv_<task>.png
	$(PY) reporting.py cv-plot --runs $(DIR_FT)

# ---- environment: .venv rebuilt only when requirements.txt changes -------------------------
# Created once; a requirements.txt of other content (not merely newer: a fresh clone's is) is installed into it (what is satisfied is skipped),
# so an edited comment costs seconds, not a rebuild. setup_venv.py installs with uv (torch's 6 GB
# unpacked in parallel, from the sources pip is configured with), else with pip.
$(VENV_STAMP): requirements.txt
	@if cmp -s requirements.txt $@ 2>/dev/null; then touch $@; else \
	  echo "$(PYTHON) setup_venv.py --venv $(VENV) --requirements requirements.txt --installer $(INSTALLER)"; \
	  $(PYTHON) setup_venv.py --venv $(VENV) --requirements requirements.txt --installer $(INSTALLER) && \
	  cp requirements.txt $@; fi

$(SYSDEPS_STAMP): | $(VENV_STAMP)
	@command -v convert >/dev/null && command -v mogrify >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing ImageMagick with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq imagemagick >/dev/null; \
	  else echo "ImageMagick (convert, mogrify) is missing: install it (apt-get install imagemagick)" >&2; exit 1; fi; }
	convert -version | head -1 > $@

setup: $(VENV_STAMP) $(SYSDEPS_STAMP) ## build .venv from requirements.txt and check ImageMagick

# ---- before any stage ------------------------------------------------------------------------
# GPUS set: CUDA must work on every one of them, or make stops here, in seconds, naming the cause
# (no driver, a driver too old, an id not visible, torch without CUDA); the stages would otherwise
# train on the CPU. PROFILE=full without GPUS: days of CPU work, so a goal that trains stops here
# with a measured estimate unless FULL_ON_CPU=yes (or nothing is left to train); validate, folds
# and hvr, which train nothing, go on. PROFILE=cpu: its budget plans the work after 02
# (budget.py); with BUDGET=off or the work pinned, it says its measured estimate and goes on.
TRAINING_GOALS := $(filter-out hvr,$(PIPELINE_GOALS)) preflight#   the goals that may train
TRAINING_LEFT = $(filter-out $(wildcard $(DIR_JIG)/DONE $(FT_STAMPS)),$(DIR_JIG)/DONE $(FT_STAMPS))
preflight: | $(VENV_STAMP) ## check the machine before any stage (CUDA on GPUS; PROFILE=full and cpu: the CPU time)
ifneq ($(GPUS),)
	@$(PY) devices.py check --gpus $(GPUS)
else
	@case "$${CUDA_VISIBLE_DEVICES-}" in ""|-1|NoDevFiles|none|void) ;; *) echo "note: GPUS is empty, so this" \
	  "run uses the CPU (PROFILE=$(PROFILE)), though CUDA_VISIBLE_DEVICES=$$CUDA_VISIBLE_DEVICES (set before make)" \
	  "grants GPUs: to train on them, add GPUS=$$CUDA_VISIBLE_DEVICES" >&2 ;; esac
ifeq ($(PROFILE)$(FULL_ON_CPU)$(if $(TRAINING_LEFT),left)$(if $(filter $(TRAINING_GOALS),$(MAKECMDGOALS)),train),fulllefttrain)
	@echo "PROFILE=full without GPUS: measuring this CPU for an estimate (a few seconds)"
	@$(PY) devices.py estimate --profile full --data $(RAW) --folds $(DIR_FOLDS) --nets $(words $(NETS)) --seeds $(SEEDS)
	@echo "error: PROFILE=full without GPUS stops before training: set GPUS=0,1,.. to use GPUs," \
	  "PROFILE=cpu for the CPU hour, or FULL_ON_CPU=yes to train the recipe on this CPU anyway" >&2; exit 3
else ifeq ($(PROFILE)$(if $(TRAINING_LEFT),left)$(if $(filter $(TRAINING_GOALS),$(MAKECMDGOALS)),train),cpulefttrain)
ifeq ($(BUDGET_ON),)
	@$(PY) devices.py estimate --profile cpu --data $(RAW) --folds $(DIR_FOLDS) --nets $(words $(NETS)) --seeds $(SEEDS)
else
	@echo "PROFILE=cpu: BUDGET=$(BUDGET_ON) min for the whole run; $(if $(BUDGET_PLAN),planned: $(call \
	  plan_word,epochs) epochs x $(call plan_word,seeds) seed(s) ($(DIR_FT)/budget.json),the fine-tunes' epochs and seeds are planned after 02, from this machine's measured speed (budget.py))"
endif
endif
endif

# ---- stages ---------------------------------------------------------------------------------
# An options file ($@) holds a stage's options ($(1)) and is rewritten only when they change: its
# mtime tells Make whether they did. Replaced, never written in place. Its rule runs only when
# they differ from what it holds (unless_same: FORCE then), so `make -n` lists only what would run.
.SECONDEXPANSION:   # the runs' options files name their file ($$@); 05 waits for every seed's run
same_text = $(if $(subst x$(1),,x$(2))$(subst x$(2),,x$(1)),,same)
unless_same = $(if $(call same_text,$(strip $(file <$(1))),$(strip $(2))),,FORCE)
keep_options = @mkdir -p $(@D); { [ -f $@ ] && [ "$$(cat $@)" = '$(1)' ]; } || \
  { echo '$(1)' 2>/dev/null > $@.tmp && mv $@.tmp $@; } || { rm -f $@.tmp; echo "error: could not write $@:" \
  "the disk holding $(WORK) is full, or not writable (df -h $(WORK))" >&2; exit 1; }

$(DIR_DEMO)/DONE: | $(VENV_STAMP) preflight
	$(PY) 00_demo_data.py --out $(DIR_DEMO)

# source.txt changes only when the data's content does (checked on every run, in ~0.1 s); a WORK
# built from other data is refused rather than silently rebuilt over hours of training. A dry run
# asks first (writing nothing) and lists the check only when the content changed.
FINGERPRINT_FORCE := FORCE
ifneq ($(and $(DRY_RUN),$(wildcard $(DIR_VALID)/source.txt),$(wildcard $(PY))),)
FINGERPRINT_FORCE := $(if $(filter same,$(shell $(PY) rawdata.py fingerprint --data $(RAW) --out $(DIR_VALID) --check 2>/dev/null)),,FORCE)
endif
$(DIR_VALID)/source.txt: $(RAW_STAMP) $(FINGERPRINT_FORCE) | $(VENV_STAMP) preflight
	@$(PY) rawdata.py fingerprint --data $(RAW) --out $(DIR_VALID)

$(DIR_VALID)/DONE: $(DIR_VALID)/source.txt
	$(PY) rawdata.py validate --data $(RAW) --out $(DIR_VALID) --max-pixels $(MAX_PIXELS)

$(DIR_FOLDS)/DONE: $(DIR_VALID)/DONE
	$(PY) 01_sgkfold.py --data $(RAW) --out $(DIR_FOLDS)

# Every option that shapes a stage's result is a prerequisite of it, in an options file beside its
# DONE (keep_options): another RESIZE redoes 02 and all after it, another JIGSAW_ARGS 03 on, another
# FINETUNE_ARGS the fine-tunes on; the stages themselves continue only from checkpoints of the same
# options and inputs (training.settle_checkpoints).
$(DIR_HVR)/options.txt: $(call unless_same,$(DIR_HVR)/options.txt,$(HVR_OPTIONS)) | preflight
	$(call keep_options,$(HVR_OPTIONS))

$(DIR_HVR)/DONE: $(DIR_VALID)/DONE $(DIR_HVR)/options.txt
	@test "$$(cat $(WORK)/profile.txt 2>/dev/null)" = $(PROFILE) || echo $(PROFILE) > $(WORK)/profile.txt || { \
	  echo "error: could not write $(WORK)/profile.txt: the disk holding $(WORK) is full, or not writable (df -h $(WORK))" >&2; exit 1; }
	./02_hvr_augment.sh --photos $(RAW)/photos --ids $(DIR_VALID)/photos.csv --out $(DIR_HVR) \
	  $(HVR_OPTIONS) --python $(PY) --profile $(PROFILE)

$(DIR_JIG)/options.txt: $(call unless_same,$(DIR_JIG)/options.txt,$(JIGSAW_ARGS)) | preflight
	$(call keep_options,$(JIGSAW_ARGS))

$(DIR_JIG)/DONE: $(DIR_HVR)/DONE $(DIR_JIG)/options.txt
	$(LAUNCH) 03_jigsaw.py --hvr $(DIR_HVR) --out $(DIR_JIG) --profile $(PROFILE) $(JIGSAW_ARGS)

.PRECIOUS: $(DIR_FT)/%/options.txt $(DIR_FEAT)/%/options.txt   # made by pattern rules: not intermediate files to delete
$(DIR_FT)/%/options.txt: $$(call unless_same,$$@,$(FT_OPTIONS)) | preflight
	$(call keep_options,$(FT_OPTIONS))

$(DIR_FT)/%/DONE: $(DIR_JIG)/DONE $(DIR_FOLDS)/DONE $(DIR_FT)/%/options.txt
	mkdir -p $(@D)
	$(ON_GPU) $(PY) 04_finetune.py --task $(call task_of,$*) --fold $(call fold_of,$*) \
	  --folds $(DIR_FOLDS) --hvr $(DIR_HVR) --jigsaw $(DIR_JIG) --out $(DIR_FT) \
	  --profile $(PROFILE) $(if $(filter-out 0,$(call seed_of,$*)),--seed $(call seed_of,$*)) \
	  $(if $(EVAL),--eval $(EVAL)) $(FT_OPTIONS) 2>&1 | tee -a $(@D)/log.txt


# 05's options are a prerequisite too: another SEEDS (how many networks a net and fold's features
# average) or FOLD_TEST redoes 05 (and what follows), the same nothing. Kept in the run's own
# directory (archived with it); FOLD_TEST concerns folds 0-2 only.
feature_options = $(strip $(if $(SEED_IDS),--seeds $(SEEDS)) \
  $(if $(and $(FOLD_TEST),$(filter-out all,$(call fold_of,$(1)))),--fold-test $(FOLD_TEST)))
$(DIR_FEAT)/%/options.txt: $$(call unless_same,$$@,$$(call feature_options,$$*)) | preflight
	$(call keep_options,$(call feature_options,$*))

# 05 of a net and fold waits for every seed's run of it (secondary expansion)
$(DIR_FEAT)/%/DONE: $(DIR_FT)/%/DONE $$(foreach r,$$(call seed_runs,$$*),$(DIR_FT)/$$(r)/DONE) $(DIR_FEAT)/%/options.txt
	$(ON_GPU) $(PY) 05_features.py --task $(call task_of,$*) --fold $(call fold_of,$*) \
	  --folds $(DIR_FOLDS) --hvr $(DIR_HVR) --runs $(DIR_FT) --out $(DIR_FEAT) --profile $(PROFILE) \
	  $(call feature_options,$*)

# 06's options are a prerequisite too: another SUBMIT or STACK_ARGS restacks (seconds), nothing more.
STACK_OPTIONS := $(strip --nets $(NETS) --submit $(SUBMIT) $(STACK_ARGS))
$(DIR_STACK)/options.txt: $(call unless_same,$(DIR_STACK)/options.txt,$(STACK_OPTIONS)) | preflight
	$(call keep_options,$(STACK_OPTIONS))

$(DIR_STACK)/DONE: $(foreach r,$(RUNS),$(DIR_FEAT)/$(r)/DONE) $(DIR_STACK)/options.txt
	$(PY) 06_stack.py --folds $(DIR_FOLDS) --features $(DIR_FEAT) --hvr $(DIR_HVR) --out $(DIR_STACK) \
	  $(STACK_OPTIONS)

$(DIR_SUB)/DONE: $(DIR_STACK)/DONE
	$(PY) 07_submit.py --data $(RAW) --stack $(DIR_STACK) --finetune $(DIR_FT) --jigsaw $(DIR_JIG) \
	  --timed $(DIR_VALID) $(DIR_FOLDS) $(DIR_HVR) $(DIR_JIG) $(DIR_FT) $(DIR_FEAT) $(DIR_STACK) --out $(DIR_SUB)

# ---- checks and housekeeping ----------------------------------------------------------------
test: setup ## run the test suite (sets itself up; the real-data tests skip where ATMA11_DATA holds none)
	$(PY) -m pytest -q --durations=10 -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder tests

# Only what the stages and make write in WORK: its stage folders and its own files. DATA, the
# checkout and anything else a user keeps in WORK stay; so does a stage folder holding DATA (a
# link is removed, never what it points to). Under the WORK lock: never while a make runs there.
CLEAN_PATHS = $(foreach d,$(DIR_DEMO) $(DIR_VALID) $(DIR_FOLDS) $(DIR_HVR) $(DIR_JIG) $(DIR_FT) $(DIR_FEAT) \
  $(DIR_STACK) $(DIR_SUB) $(WORK)/bench $(WORK)/study $(WORK)/profile.txt $(WORK)/.gpu_locks $(WORK)/.sync,$(wildcard $(d)))
holds_data = $(filter $(realpath $(1)) $(realpath $(1))/%,$(realpath $(DATA)))
clean: ## delete WORK's stage folders, bench/, study/ and own files (never DATA or other files)
	@$(foreach d,$(CLEAN_PATHS),$(if $(call holds_data,$(d)),echo "kept $(d): it holds DATA=$(DATA)";,rm -rf $(d);)) \
	  rm -f $(WORK)/.lock; rmdir $(WORK) 2>/dev/null || echo "kept $(WORK): it holds other files ($$(ls -A $(WORK) | head -3 | xargs))"

FORCE:

-include sync/sync.mk docker/docker.mk bench/bench.mk
$(own_check)
