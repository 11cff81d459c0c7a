# The same make targets, inside the CUDA image (Dockerfile). Included by the Makefile.
#   make docker-build                      # build $(IMAGE) from the checked-out code
#   make docker-all GPUS=0,1,2,3           # `make all` inside it, on those four GPUs
#   make -n docker-all GPUS=0,1            # the exact `docker run` line, to rerun by hand
# Everything here is computed lazily (=): inside the image this file is included too, where
# there is no docker and no git, and it must cost nothing there.

DOCKER ?= docker#          the client; an engine must answer it (`docker info`)
IMAGE ?= atma11:$(docker_rev)#  one tag per revision: docker-all runs exactly the checked-out code
DOCKER_RUN_ARGS ?=#        extra `docker run` flags (e.g. --network host for multi-node)

.PHONY: docker-build docker-all docker-fold docker-sync-up

docker_rev = $(or $(shell git rev-parse --short=12 HEAD 2>/dev/null),norev)$(if $(shell \
  git status --porcelain --untracked-files=no 2>/dev/null),-dirty)

# Fail before anything is created or started: the client alone is not enough (`docker info`
# needs the engine), and `timeout` bounds an engine that accepts but never answers.
define docker_check
	@command -v $(DOCKER) >/dev/null || { echo "$@: no '$(DOCKER)' client on PATH:" \
	  "install Docker, or run 'make $(1)' on the host" >&2; exit 1; }
	@timeout 5 $(DOCKER) info >/dev/null 2>&1 || { echo "$@: no Docker engine answers" \
	  "('$(DOCKER) info' failed): start the Docker daemon or set DOCKER_HOST," \
	  "or run 'make $(1)' on the host without Docker" >&2; exit 1; }
endef

# A local tag that is missing would otherwise send `docker run` to pull it from a registry.
define docker_image_check
	@$(DOCKER) image inspect $(IMAGE) >/dev/null 2>&1 || { echo "$@: no image $(IMAGE) here:" \
	  "run 'make docker-build' (or docker pull $(IMAGE))" >&2; exit 1; }
endef

# ---- what goes into `docker run` ----------------------------------------------------------
docker_comma := ,
docker_space := $(subst x, ,x)
docker_gpu_ids = $(subst $(docker_comma), ,$(GPUS))
# --gpus device=2,3 shows those GPUs as 0,1 inside: the inner make numbers them from 0.
docker_gpus_inside = $(subst $(docker_space),$(docker_comma),$(strip \
  $(shell seq 0 $$(( $(words $(docker_gpu_ids)) - 1 )) 2>/dev/null)))
docker_gpu_flag = $(if $(GPUS),--gpus '"device=$(GPUS)"')

# DATA read-only. The default DATA may not exist (then the image's make uses demo data, as on
# the host); one set by hand must exist, since `docker run -v` would create it as root.
docker_data_given = $(filter-out default file,$(origin DATA))
docker_data_mount = $(if $(or $(wildcard $(DATA)),$(docker_data_given)),\
  -v $(abspath $(DATA)):/data:ro)
# Inside, DATA=/data only for real data or a DATA set by hand: the default DATA without a
# train.csv leaves the inner DATA at its default too, which means demo data there as here.
docker_data_var = $(if $(or $(docker_data_given),$(wildcard $(DATA)/train.csv)),DATA=/data)

# rclone: the host's config read-only (RCLONE_CONFIG's file, else its config directory), and
# every RCLONE_* variable by name only, so their values never appear in a printed command.
docker_env = $(if $(filter undefined,$(origin $(1))),,$($(1)))
docker_rclone_file = $(call docker_env,RCLONE_CONFIG)
docker_rclone_dir = $(wildcard \
  $(or $(call docker_env,XDG_CONFIG_HOME),$(call docker_env,HOME)/.config)/rclone)
docker_rclone_mount = $(if $(docker_rclone_file),$(if $(wildcard $(docker_rclone_file)),-v \
  $(abspath $(docker_rclone_file)):/config/rclone/rclone.conf:ro $(docker_rclone_in)),$(if \
  $(docker_rclone_dir),-v $(docker_rclone_dir):/config/rclone:ro $(docker_rclone_in)))
docker_rclone_in := -e RCLONE_CONFIG=/config/rclone/rclone.conf
docker_rclone_env = $(foreach v,$(sort $(filter RCLONE_%,$(.VARIABLES))),$(if $(and \
  $(filter environment%,$(origin $(v))),$(filter-out RCLONE_CONFIG,$(v))),-e $(v)))

# Variables set on this command line (REMOTE=..., EPOCHS=...) go in too; those translated to
# the container's view or meaningful only on the host are set explicitly or left out.
docker_host_only := DATA WORK GPUS PROFILE FOLD TASK PYTHON DOCKER IMAGE DOCKER_RUN_ARGS
docker_overrides = $(foreach v,$(sort $(filter-out $(docker_host_only),$(.VARIABLES))),$(if \
  $(filter command line,$(origin $(v))),'$(v)=$(subst ','\'',$($(v)))'))

# $(1): the make target inside; $(2): --gpus or nothing. With GPUs the host's slot locks
# (GPU_LOCKS) are mounted at the same path: runs inside and outside never share a GPU (the
# locks are named by GPU UUID, the same inside, where the GPUs are numbered from 0). The host's uid has no account in the
# image: the image's own ENV gives it a writable HOME and cache folders (any runtime has them),
# USER a name for torch.compile's cache folder (getpass finds none for such a uid). --init
# forwards Ctrl-C to make, so .DELETE_ON_ERROR and the stages' own cleanup run. -j passes through.
define docker_run
	$(call docker_check,$(1))
	$(docker_image_check)
	$(if $(docker_data_mount),@test -d $(DATA) || { echo "$@: DATA=$(DATA) is not a directory" \
	  >&2; exit 1; })
	mkdir -p $(WORK)
	$(if $(2),test -d $(GPU_LOCKS) || { mkdir -p $(GPU_LOCKS) && chmod 1777 $(GPU_LOCKS); })
	$(strip $(DOCKER) run --rm --init --ipc=host --user $$(id -u):$$(id -g) $(2) \
	  -v $(abspath $(WORK)):/work $(if $(2),-v $(GPU_LOCKS):$(GPU_LOCKS)) $(docker_data_mount) $(docker_rclone_mount) $(docker_rclone_env) \
	  -e USER=atma11 $(DOCKER_RUN_ARGS) $(IMAGE) \
	  make $(filter -j%,$(MAKEFLAGS)) $(1) $(docker_data_var) WORK=/work \
	  GPUS=$(if $(2),$(docker_gpus_inside)) PROFILE=$(PROFILE) $(docker_overrides))
endef

docker-build: ## build the CUDA image (IMAGE, tagged with the git revision) from Dockerfile
	$(call docker_check,all)
	$(DOCKER) build --build-arg GIT_REVISION=$(docker_rev) -t $(IMAGE) .

docker-all: ## make all inside the image: GPUS=0,1,.. passed with --gpus, DATA read-only
	$(call docker_run,all,$(docker_gpu_flag))

docker-fold: ## make fold FOLD=.. TASK=.. inside the image
	$(call docker_run,fold FOLD=$(FOLD) TASK=$(TASK),$(docker_gpu_flag))

docker-sync-up: ## make sync-up inside the image, with the host's rclone config (read-only)
	$(call docker_run,sync-up,)
