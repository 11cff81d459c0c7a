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
JIGSAW_ARGS ?=#            extra 03_jigsaw.py options, e.g. --loss ce --epochs 10
FINETUNE_ARGS ?=#          extra 04_finetune.py options, e.g. --init scratch --loss ce
BUDGET ?=#                 PROFILE=cpu: minutes for the whole run (empty: 60); the fine-tunes' epochs and seeds are chosen to fit, from this machine's measured speed | off: the profile's. SEEDS or an --epochs in FINETUNE_ARGS pin them
SUBMIT ?= best#            06: best (the lowest-CV stack, tuned post-processing) | recipe (the recipe's own)
STACK_ARGS ?=#             extra 06_stack.py options, e.g. --mode seed --meta native
ID ?=#                     make views: the object_id to show
TEST_JOBS ?= auto#         make test: pytest-xdist workers (auto: one per core; 0: none, one process)
MAX_PIXELS ?= 25000000#    validation: the largest photo (width x height) 02's ImageMagick must decode

# ---- derived --------------------------------------------------------------------------------
TASKS := target onehot sortingdate word2vec
comma := ,
# The default DATA without a train.csv: the generated demo data (an explicit DATA without one is an error).
DEMO_DATA = $(and $(filter default file,$(origin DATA)),$(if $(wildcard $(DATA)/train.csv),,demo))
# Paths go into shell commands unquoted: characters the shell would read are refused up front.
UNSAFE_CHARS := ( ) ; & | < > ' " ` * ? [ ] { } ! $$ \ \#
ifneq ($(strip $(foreach c,$(UNSAFE_CHARS),$(findstring $(c),$(DATA)$(WORK)))),)
$(error DATA and WORK must be paths without shell characters ($(strip $(foreach c,$(UNSAFE_CHARS),$(findstring $(c),$(DATA)$(WORK))))): DATA=$(DATA) WORK=$(WORK))
endif
# Every variable a user sets is checked before anything runs. Those with a fixed set of values
# against it; option lists and commands against the characters a shell (or Make) would act on; the
# free text (REMOTE, RUN, ID) reaches its recipe as one quoted word (quoted).
define NEWLINE


endef
set_by_user = $(filter command% environment% override,$(origin $(1)))
# $(1)'s text as typed (unexpanded), checked for shell characters, a newline, Make's $
shell_chars_in = $(strip $(foreach c,$(UNSAFE_CHARS),$(findstring $(c),$(value $(1)))) \
  $(if $(findstring $(NEWLINE),$(value $(1))),newline))
SCREENED := PYTHON GPU_LOCKS PROFILE JIGSAW_ARGS FINETUNE_ARGS STACK_ARGS STUDY_ARGS DOCKER IMAGE DOCKER_RUN_ARGS
unsafe_vars := $(strip $(foreach v,$(SCREENED),$(if $(call set_by_user,$(v)),$(if $(call shell_chars_in,$(v)),$(v)))))
ifneq ($(unsafe_vars),)
$(error $(firstword $(unsafe_vars)) holds characters a shell would act on \
  ($(call shell_chars_in,$(firstword $(unsafe_vars)))): options are plain words (letters, digits, - _ . , = : / + %))
endif
# Make's own variables (its paths, commands and derived lists) are no settings: set on the command
# line, or from the environment under make -e, they would run another command (PY) or write
# outside WORK, where clean and the lock do not reach (DIR_*). A command line's is known before
# they are defined, so nothing runs with one; make -e's environment shows only once they are
# (origin "environment override"): checked again before the WORK lock is taken, and at the end.
OWN_VARIABLES := VENV PY VENV_STAMP SYSDEPS_STAMP RAW RAW_STAMP DEMO_DATA TASKS FOLDS RUNS FT_RUNS \
  SEED_IDS GPU_LIST NGPUS LAUNCH ON_GPU HVR_OPTIONS STACK_OPTIONS PIPELINE_GOALS TRAINING_GOALS \
  TRAINING_LEFT FT_STAMPS CLEAN_PATHS PROFILE_MAKE PROFILE_NAMES SCREENED UNSAFE_CHARS OWN_VARIABLES \
  WORK_REAL DATA_REAL DRY_RUN WORK_PROFILE STUDY_DIR BENCH_DIR BENCH_LOG BENCH_RUN BENCH_DATA comma \
  one_of one_or_none_of set_by_user shell_chars_in profile_word seed_runs task_of fold_of seed_of \
  quoted non_digits keep_options stamp_options feature_options holds_data resolved same_text unless_same \
  BUDGET_PINNED BUDGET_ON BUDGET_PLAN BUDGET_ARGS BUDGET_PENDING BUDGET_GOALS FT_OPTIONS plan_word \
  FINGERPRINT_FORCE own_set own_first own_where own_hint own_check leading_dash tilde \
  $(filter DIR_% docker_% sync_%,$(.VARIABLES))
own_set = $(strip $(foreach v,$(OWN_VARIABLES),$(if $(filter command override,$(origin $(v))),$(v))))
own_first = $(firstword $(own_set))
own_where = $(if $(filter environment,$(origin $(own_first))), in the environment: make -e lets it win)
own_hint = $(if $(filter PY VENV,$(own_first)),; PYTHON sets the interpreter that builds .venv)
own_check = $(if $(own_set),$(error $(own_first) is make's own variable, not a setting: unset it$(own_where)$(own_hint)))
$(own_check)
unsafe_text := $(strip $(foreach v,REMOTE RUN ID,$(if $(call set_by_user,$(v)),$(if $(or \
  $(findstring $$,$(value $(v))),$(findstring $(NEWLINE),$(value $(v)))),$(v)))))
ifneq ($(unsafe_text),)
$(error $(firstword $(unsafe_text)) holds a $$ or a line break: a name or a path has neither)
endif
# The profiles' table (profiles.py, read with any python3) names them and gives each its NETS and
# SEEDS: one table for make and the stages.
PROFILE_MAKE := $(shell $(PYTHON) profiles.py make '$(PROFILE)' 2>/dev/null)
profile_word = $(subst $(comma), ,$(patsubst $(1)=%,%,$(filter $(1)=%,$(PROFILE_MAKE))))
PROFILE_NAMES := $(call profile_word,names)
ifeq ($(PROFILE_NAMES),)
$(error make reads the profiles with PYTHON=$(PYTHON) profiles.py, which printed nothing: set PYTHON to a python3)
endif
# name, the value, its allowed values (words)
one_of = $(if $(filter-out 1,$(words $(2)))$(filter-out $(3),$(2)),$(error $(1)=$(2): one of $(3)))
non_digits = $(subst 0,,$(subst 1,,$(subst 2,,$(subst 3,,$(subst 4,,$(subst 5,,$(subst 6,,$(subst \
  7,,$(subst 8,,$(subst 9,,$(1)))))))))))
# the same, where empty is allowed too (the profile's or the device's default)
one_or_none_of = $(if $(strip $(2)),$(call one_of,$(1),$(2),$(3)))
$(call one_of,PROFILE,$(PROFILE),$(PROFILE_NAMES))
$(call one_of,INSTALLER,$(INSTALLER),uv pip)
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/requirements.txt
SYSDEPS_STAMP := $(VENV)/sysdeps
DIR_DEMO := $(WORK)/00_demo_data
DIR_VALID := $(WORK)/00_validate
DIR_FOLDS := $(WORK)/01_sgkfold
DIR_HVR := $(WORK)/02_hvr
DIR_JIG := $(WORK)/03_jigsaw
DIR_FT := $(WORK)/04_finetune
DIR_FEAT := $(WORK)/05_features
DIR_STACK := $(WORK)/06_stack
DIR_SUB := $(WORK)/07_submit
FOLDS := 0 1 2 all
# BUDGET: the CPU hour is minutes, not a fixed amount of work. Before the fine-tunes, budget.py
# measures this machine and writes its plan (the rung of epochs and seeds that fits) into
# $(DIR_FT)/budget.txt, once: a resume or a rerun keeps it, another BUDGET plans again. Without a
# plan, the goals that train run the planner, then themselves again in a sub-make that reads it.
ifneq ($(BUDGET),)
ifneq ($(PROFILE),cpu)
$(error BUDGET=$(BUDGET) is PROFILE=cpu's (the CPU hour); PROFILE=$(PROFILE) does its fixed amount of work)
endif
ifneq ($(filter-out 1,$(words $(BUDGET)))$(if $(filter off,$(BUDGET)),,$(or $(call non_digits,$(BUDGET)),$(filter 0 00 000,$(BUDGET)))),)
$(error BUDGET=$(BUDGET): whole minutes for the whole run (60), or off)
endif
endif
BUDGET_PINNED := $(strip $(if $(call set_by_user,SEEDS),SEEDS) $(if $(filter --epochs --epochs=%,$(FINETUNE_ARGS)),--epochs))
BUDGET_ON := $(if $(and $(filter cpu,$(PROFILE)),$(if $(BUDGET_PINNED),,yes)),$(filter-out off,$(or $(BUDGET),60)))
BUDGET_PLAN := $(if $(BUDGET_ON),$(if $(wildcard $(DIR_FT)/budget.txt),$(file < $(DIR_FT)/budget.txt)))
plan_word = $(patsubst $(1)=%,%,$(filter $(1)=%,$(BUDGET_PLAN)))
ifneq ($(call plan_word,budget),$(BUDGET_ON))
BUDGET_PLAN :=#    none yet, or one made for another BUDGET: planned again
endif
ifneq ($(BUDGET_PLAN),)
SEEDS := $(call plan_word,seeds)
BUDGET_ARGS := $(if $(filter-out $(shell $(PYTHON) profiles.py setting --profile cpu --stage 04 epochs),$(call \
  plan_word,epochs)),--epochs $(call plan_word,epochs))
else
BUDGET_ARGS :=
endif
FT_OPTIONS := $(strip $(BUDGET_ARGS) $(FINETUNE_ARGS))#   04's options: the plan's epochs and the user's
RUNS := $(foreach t,$(NETS),$(foreach f,$(FOLDS),$(t)_$(f)))
# Seeds past 0 train into <net>_<fold>_s<seed>; 05 averages them into <net>_<fold>'s features.
ifneq ($(words $(filter 1 2 3 4 5 6 7 8 9 10,$(SEEDS))) $(words $(SEEDS)),1 1)
$(error SEEDS=$(SEEDS): the networks per net and fold must be a whole number from 1 to 10)
endif
ifneq ($(filter-out yes no,$(FOLD_TEST))$(filter-out 0 1,$(words $(FOLD_TEST))),)
$(error FOLD_TEST=$(FOLD_TEST): yes, no, or empty (the profile's))
endif
ifneq ($(filter-out process inline,$(EVAL))$(filter-out 0 1,$(words $(EVAL))),)
$(error EVAL=$(EVAL): process, inline, or empty (a process on a GPU, inline on a CPU))
endif
ifneq ($(filter-out yes,$(FULL_ON_CPU))$(filter-out 0 1,$(words $(FULL_ON_CPU))),)
$(error FULL_ON_CPU=$(FULL_ON_CPU): yes, or empty)
endif
SEED_IDS := $(wordlist 2,$(SEEDS),0 1 2 3 4 5 6 7 8 9)
seed_runs = $(foreach s,$(SEED_IDS),$(1)_s$(s))
FT_RUNS := $(foreach r,$(RUNS),$(r) $(call seed_runs,$(r)))
GPU_LIST := $(subst $(comma), ,$(GPUS))
NGPUS := $(words $(GPU_LIST))
# CUDA's default order is fastest first; nvidia-smi's ids (and the messages') follow the PCI bus.
export CUDA_DEVICE_ORDER := PCI_BUS_ID
# CUDA shows a process one MIG slice, and MIG slices have no peer-to-peer for NCCL: 03 trains on
# the first; the fine-tunes and 05 take one slice each.
ifneq ($(and $(filter MIG-%,$(GPU_LIST)),$(filter-out 0 1,$(RANKS))),)
$(error RANKS=$(RANKS) with MIG slices in GPUS: CUDA shows a process one MIG slice and NCCL cannot join slices; leave RANKS unset (03 then trains on $(firstword $(GPU_LIST)), the fine-tunes one per slice))
endif
ifneq ($(strip $(words $(GPU_LOCKS)) $(foreach c,$(UNSAFE_CHARS),$(findstring $(c),$(GPU_LOCKS)))),1)
$(error GPU_LOCKS=$(GPU_LOCKS): one path without spaces or shell characters)
endif
ifeq ($(filter /%,$(GPU_LOCKS)),)
$(error GPU_LOCKS=$(GPU_LOCKS): an absolute path (one folder for every WORK and checkout on the host; docker-* mounts it as such))
endif
ifneq ($(words $(filter 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16,$(or $(RANKS),1))) $(words $(or $(RANKS),1)),1 1)
$(error RANKS=$(RANKS): 03's processes must be a whole number from 1 to 16)
endif
# One make level: Make's own -j fans the runs out, one per GPU at a time (each holds a free GPU:
# devices.py on-gpu), one after another on the CPU; a -j on the command line wins.
ifneq ($(GPUS),)
ifeq ($(filter docker-%,$(MAKECMDGOALS)),)      # docker-*: the make inside does it
MAKEFLAGS += -j$(NGPUS)
endif
endif
# One process, or torchrun with RANKS processes (DDP; by default one per listed GPU) for the
# single pretext job.
LAUNCH = $(if $(GPUS),CUDA_DEVICE_ORDER=PCI_BUS_ID )$(if $(filter-out 0 1,$(RANKS)),CUDA_VISIBLE_DEVICES=$(GPUS) \
  $(VENV)/bin/torchrun --standalone --nproc_per_node=$(RANKS),CUDA_VISIBLE_DEVICES=$(firstword $(GPU_LIST)) $(PY))
# The fine-tunes: Make runs NGPUS at a time (-j); each holds one free GPU (devices.py on-gpu).
ON_GPU := $(if $(GPUS),$(PY) devices.py on-gpu --gpus $(GPUS) --locks $(GPU_LOCKS) --,CUDA_VISIBLE_DEVICES=)
task_of = $(word 1,$(subst _, ,$(1)))
fold_of = $(word 2,$(subst _, ,$(1)))
seed_of = $(patsubst s%,%,$(or $(word 3,$(subst _, ,$(1))),s0))
PIPELINE_GOALS := all hvr jigsaw finetune fold features stack submit report
# A WORK holds one profile: a store of another size under the same stamps would be wrong.
ifneq ($(filter $(PIPELINE_GOALS),$(MAKECMDGOALS)),)
WORK_PROFILE := $(strip $(if $(wildcard $(WORK)/profile.txt),$(file < $(WORK)/profile.txt)))
ifneq ($(WORK_PROFILE),)
ifneq ($(WORK_PROFILE),$(PROFILE))
$(error $(WORK) holds a PROFILE=$(WORK_PROFILE) run; use PROFILE=$(WORK_PROFILE), or another WORK=...)
endif
endif
endif
ifneq ($(words $(DATA)) $(words $(WORK)),1 1)
$(error DATA and WORK must be paths without spaces (DATA='$(DATA)' WORK='$(WORK)'))
endif
# free text as one shell word: in single quotes, each ' written as '\'' (nothing else is special there)
quoted = '$(subst ','\'',$(1))'
ifneq ($(filter fold docker-fold,$(MAKECMDGOALS)),)     # read by these only (a shell may export TASK)
$(call one_of,FOLD,$(FOLD),0 1 2 all)
$(call one_of,TASK,$(TASK),$(TASKS) multi)
endif
$(call one_of,SUBMIT,$(SUBMIT),best recipe)
$(call one_of,RESIZE,$(RESIZE),stretch pad)
ifneq ($(filter-out $(TASKS) multi,$(NETS))$(if $(NETS),,empty),)
$(error NETS=$(NETS): multi, or some of $(TASKS))
endif
ifneq ($(filter-out auto 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16,$(TEST_JOBS))$(filter-out 1,$(words $(TEST_JOBS))),)
$(error TEST_JOBS=$(TEST_JOBS): auto, or a number of workers from 0 to 16)
endif
ifneq ($(if $(MAX_PIXELS),$(call non_digits,$(MAX_PIXELS)),empty),)
$(error MAX_PIXELS=$(MAX_PIXELS): a whole number of pixels)
endif
# GPU ids: numbers or GPU-/MIG- UUIDs, comma-separated; devices.py check reads them closely.
ifneq ($(strip $(words $(GPUS)) $(foreach c,$(UNSAFE_CHARS) = : ~ %,$(findstring $(c),$(GPUS)))),$(if $(GPUS),1,0))
$(error GPUS=$(GPUS): GPU ids are numbers or GPU-/MIG- UUIDs, comma-separated, no spaces (GPUS=0,1,2,3))
endif
# A path that starts with - reads as an option to the commands it is given to (mkdir -p -rf).
leading_dash := $(firstword $(foreach v,DATA WORK GPU_LOCKS,$(if $(filter -%,$($(v))),$(v))))
ifneq ($(leading_dash),)
$(error $(leading_dash)=$($(leading_dash)) begins with -, which the commands given it would read as an option: write ./$($(leading_dash)))
endif
# Make never expands ~ (the shells of its recipes would, to another folder than these checks see).
tilde := $(firstword $(foreach v,DATA WORK GPU_LOCKS,$(if $(filter ~%,$($(v))),$(v))))
ifneq ($(tilde),)
$(error $(tilde)=$($(tilde)) begins with ~, which make does not expand: write $$HOME/... or the full path)
endif
# The folders as the filesystem resolves them (links followed, as far as they exist), so that a
# link into DATA, or to the checkout, is seen for what it is; nothing is written before these.
resolved = $(or $(shell realpath -m -- $(1) 2>/dev/null),$(abspath $(1)))
WORK_REAL := $(call resolved,$(WORK))
DATA_REAL := $(call resolved,$(DATA))
# WORK holds the stages' folders (and make clean removes them): the checkout is no WORK.
ifneq ($(filter $(WORK_REAL) $(WORK_REAL)/%,$(call resolved,$(CURDIR))),)
$(error WORK=$(WORK) holds this checkout ($(CURDIR)): use a folder of its own, like WORK=work)
endif
# Stages write only under WORK; inside DATA they would write into the raw data.
ifneq ($(filter $(DATA_REAL) $(DATA_REAL)/%,$(WORK_REAL)),)
$(error WORK=$(WORK) is inside DATA=$(DATA)$(if $(filter-out $(abspath $(WORK)),$(WORK_REAL)), (it resolves to $(WORK_REAL))): the raw data is read-only; use a WORK outside it)
endif
# Real data when DATA holds a train.csv; otherwise the generated demo set, but only for the
# default DATA: a DATA given by hand without train.csv is a mistake, not a wish for demo data.
ifeq ($(wildcard $(DATA)/train.csv),)
ifeq ($(filter default file,$(origin DATA)),)
ifneq ($(filter $(PIPELINE_GOALS) demo validate folds views study,$(MAKECMDGOALS)),)
$(error DATA=$(DATA) holds no train.csv$(if $(wildcard $(DATA)/*),$(comma) only: $(notdir $(wildcard $(DATA)/*)),$(if $(wildcard $(DATA)), (empty), (no such directory))); demo data is only for the default DATA (unset it, or run make demo))
endif
endif
endif
RAW := $(if $(wildcard $(DATA)/train.csv),$(DATA),$(DIR_DEMO))
HVR_OPTIONS := --mode $(RESIZE)#   02's options (RESIZE), in its command and its options file
RAW_STAMP := $(if $(wildcard $(DATA)/train.csv),$(DATA)/train.csv,$(DIR_DEMO)/DONE)
$(own_check)
# One make at a time on a WORK: a second one is refused at once. The lock is an flock on
# WORK/.lock held by a helper that exits with this make (a kill -9 too: the kernel releases it);
# sub-makes inherit it. A dry run (make -n) takes none: MAKEFLAGS's first word holds the
# one-letter flags (n), unless it is a long option (--no-builtin-rules, which holds an n too).
DRY_RUN := $(findstring n,$(filter-out --%,$(firstword -$(MAKEFLAGS))))
BUDGET_GOALS := all finetune fold features stack submit report
BUDGET_PENDING := $(if $(DRY_RUN),,$(and $(BUDGET_ON),$(if $(BUDGET_PLAN),,none),$(filter $(BUDGET_GOALS),$(MAKECMDGOALS))))
ifneq ($(filter $(PIPELINE_GOALS) demo validate folds views study clean,$(MAKECMDGOALS)),)
ifeq ($(DRY_RUN),)
ifndef ATMA11_WORK_LOCK
ATMA11_WORK_LOCK := $(shell { mkdir -p $(WORK) && exec 9>>$(WORK)/.lock; } 2>/dev/null || { echo unwritable; exit; }; \
  rc=0; flock -E 75 -w 1 9 2>/dev/null || rc=$$?; \
  if [ $$rc = 0 ]; then tail --pid=$$PPID -s 0.05 -f /dev/null >/dev/null 2>&1 </dev/null & echo held; \
  elif [ $$rc = 75 ]; then echo busy; else echo "nolock $$(findmnt -no FSTYPE -T $(WORK) 2>/dev/null || stat -f -c %T $(WORK))"; fi)
ifeq ($(ATMA11_WORK_LOCK),busy)
$(error another make is running on WORK=$(WORK) (it holds $(WORK)/.lock); wait for it to end, or use another WORK)
else ifeq ($(ATMA11_WORK_LOCK),unwritable)
$(error WORK=$(WORK) cannot be created or written (a read-only or full disk?); use another WORK)
else ifneq ($(ATMA11_WORK_LOCK),held)
$(error WORK=$(WORK) is on a filesystem ($(word 2,$(ATMA11_WORK_LOCK) unknown)) that cannot lock files (flock); put WORK on one that can (a local disk, Lustre mounted with -o flock))
endif
export ATMA11_WORK_LOCK
# A WORK whose 02, 03 and 04 finished before they recorded their options (options.txt beside DONE):
# they are taken as built with these options, and their files get DONE's time, so nothing is redone.
stamp_options = [ -f $(1)/DONE ] && [ ! -f $(1)/options.txt ] && echo '$(2)' > $(1)/options.txt.tmp && \
  touch -r $(1)/DONE $(1)/options.txt.tmp && mv $(1)/options.txt.tmp $(1)/options.txt;
$(if $(filter $(PIPELINE_GOALS),$(MAKECMDGOALS)),$(shell $(call stamp_options,$(DIR_HVR),$(HVR_OPTIONS)) \
  $(call stamp_options,$(DIR_JIG),$(JIGSAW_ARGS)) $(foreach r,$(wildcard $(DIR_FT)/*/DONE),$(call \
  stamp_options,$(patsubst %/,%,$(dir $(r))),$(FT_OPTIONS))) true))
endif
endif
endif
ifeq ($(RAW),$(DIR_DEMO))
ifneq ($(filter all demo validate folds,$(or $(MAKECMDGOALS),help)),)
$(info No train.csv in DATA=$(DATA): using generated demo data in $(DIR_DEMO) (PROFILE=$(PROFILE)).)
endif
# The demo's `make all`: two jobs of one torch thread each, whose many short processes overlap
# (`make bench-clone` times it); TORCH_THREADS given is kept.
ifneq ($(filter all,$(MAKECMDGOALS)),)
MAKEFLAGS += -j2 --output-sync=target
export TORCH_THREADS ?= 1
endif
endif

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
# and hvr, which train nothing, go on. PROFILE=cpu says its estimate
# (sized for an hour on a 2-core machine; a slower CPU takes longer) and goes on.
FT_STAMPS = $(foreach r,$(FT_RUNS),$(DIR_FT)/$(r)/DONE)
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
else ifeq ($(PROFILE)$(if $(BUDGET_ON),,nobudget)$(if $(TRAINING_LEFT),left)$(if $(filter $(TRAINING_GOALS),$(MAKECMDGOALS)),train),cpunobudgetlefttrain)
	@$(PY) devices.py estimate --profile cpu --data $(RAW) --folds $(DIR_FOLDS) --nets $(words $(NETS)) --seeds $(SEEDS)
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

# ---- checks and housekeeping ----------------------------------------------------------------
test: setup ## run the test suite (sets itself up; the real-data tests skip where ATMA11_DATA holds none)
	$(PY) -m pytest -q --durations=10 -n $(TEST_JOBS) --dist loadfile tests

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
