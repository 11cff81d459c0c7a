# ---- benchmarks (bench/): not part of `make test` ---------------------------------------------
# Each script prints `name: value unit` lines, and `name_vs_ref: ratio x` where the recipe's way was
# measured beside ours in the same run (ratio: how many times better ours is). The lines are also
# collected in WORK/bench/results.txt; scratch files live under WORK/bench and are removed.
BENCH_DIR := $(WORK)/bench
BENCH_LOG := $(BENCH_DIR)/results.txt
BENCH_E2E_PROFILE ?= smoke#  figure 4 on demo data: smoke (minutes) | cpu
BENCH_REAL ?=#               1: figure 4 also on the real data, PROFILE=cpu (~45 minutes on 2 cores)
# OpenMP threads that spin while waiting turn a shared machine's contention into 30x slowdowns;
# the bench's processes wait passively unless OMP_WAIT_POLICY says otherwise.
BENCH_RUN := OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY)
STUDY_ARGS ?=#               make study: e.g. --only base epochs_24
BENCH_DATA := $(if $(wildcard $(DATA)/train.csv),--data $(DATA))

.PHONY: bench bench-input bench-clone bench-syncbn study

bench-clone: | $(VENV_STAMP) ## a newcomer's make setup and make all in a fresh clone of HEAD, timed: uv, then pip alone
	@mkdir -p $(BENCH_DIR)
	$(PY) bench/fresh_clone.py --installer uv --tmp $(BENCH_DIR) | tee -a $(BENCH_LOG)
	$(PY) bench/fresh_clone.py --installer pip --no-all --tmp $(BENCH_DIR) | tee -a $(BENCH_LOG)

bench-syncbn: | $(VENV_STAMP) ## on a GPU: SyncBatchNorm's sync path against BatchNorm, host syncs per step, images/s
	@mkdir -p $(BENCH_DIR)
	$(PY) bench/syncbn_check.py --device cuda | tee -a $(BENCH_LOG)

STUDY_DIR := $(WORK)/study
study: $(DIR_HVR)/DONE $(DIR_FOLDS)/DONE ## the CPU budget study on fold 0 (PROFILE=cpu, real data): WORK/study/study.csv, study.png
	$(PY) bench/study.py --folds $(DIR_FOLDS) --hvr $(DIR_HVR) --ids $(DIR_VALID)/photos.csv \
	  --photos $(RAW)/photos --out $(STUDY_DIR) --python $(PY) $(STUDY_ARGS)

bench-input: | $(VENV_STAMP) $(SYSDEPS_STAMP) ## figures 1-2: input path, jigsaw batches vs the recipe's (bench/)
	@mkdir -p $(BENCH_DIR) && echo "# make bench-input, $$(date '+%F %T'), $$(nproc) cores, load $$(cut -d' ' -f1 /proc/loadavg)" | tee $(BENCH_LOG)
	$(BENCH_RUN) bench/input_path.py $(BENCH_DATA) --tmp $(BENCH_DIR) | tee -a $(BENCH_LOG)
	$(BENCH_RUN) bench/jigsaw_batches.py $(BENCH_DATA) --tmp $(BENCH_DIR) | tee -a $(BENCH_LOG)

bench: bench-input ## every CPU figure: input, jigsaw, training loop, make all per stage, gpu.sh --cpu
	$(BENCH_RUN) bench/train_loop.py --tmp $(BENCH_DIR) | tee -a $(BENCH_LOG)
	$(BENCH_RUN) bench/end_to_end.py --profile $(BENCH_E2E_PROFILE) --tmp $(BENCH_DIR) | tee -a $(BENCH_LOG)
	$(if $(filter 1,$(BENCH_REAL)),$(BENCH_RUN) bench/end_to_end.py --real --skip-missing $(BENCH_DATA) \
	  --profile cpu --tmp $(BENCH_DIR) | tee -a $(BENCH_LOG),@echo "# figure 4 on the real data: BENCH_REAL=1 make bench")
	rm -rf $(BENCH_DIR)/gpu_sh_cpu
	bench/gpu.sh prep --cpu --dir $(BENCH_DIR)/gpu_sh_cpu --python $(PY) > $(BENCH_DIR)/gpu_sh_prep.log 2>&1 || \
	  { cat $(BENCH_DIR)/gpu_sh_prep.log; exit 1; }
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} bench/gpu.sh run --cpu --dir $(BENCH_DIR)/gpu_sh_cpu --python $(PY) | tee -a $(BENCH_LOG)
	rm -rf $(BENCH_DIR)/gpu_sh_cpu $(BENCH_DIR)/gpu_sh_prep.log
	@echo "# the lines above are in $(BENCH_LOG)"
