# What make works out before any rule of the Makefile: its own names (stage directories, the
# commands that launch a stage), every check of the variables a user sets (an error before
# anything runs), the one-make-per-WORK lock, the profile a WORK holds and the budget's plan
# (PROFILE=cpu). Included by the Makefile right after the variables users set.
# ---- derived ---------------------------------------------------------------------------------
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
  quoted non_digits keep_options feature_options holds_data resolved same_text unless_same \
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
# every fine-tune run's stamp (make finetune; the preflight's training left)
FT_STAMPS = $(foreach r,$(FT_RUNS),$(DIR_FT)/$(r)/DONE)

