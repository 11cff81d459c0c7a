#!/usr/bin/env bash
# bench/gpu.sh: one check of the GPU path on a machine with one GPU (within BUDGET_S, default
# 450 s), from a prepared folder beside the working tree; and its dry run on a CPU, at toy
# size, which `make test` and `make bench` run so that the script cannot rot.
#
#   bench/gpu.sh prep [--cpu] [--dir DIR] [--data DATA] [--python PY] [--max-mib N]   # where the data is
#   bench/gpu.sh run  [--cpu] [--dir DIR] [--python PY] [--log FILE]    # on the GPU machine
#
# prep fills DIR (default work-gpu/, which .gitignore ignores) with what the GPU machine needs
# besides the working tree: DIR/raw, a copy of the real data (DATA, default $ATMA11_DATA or
# data/raw: 9856 photos, 60 MiB, and the CSVs), and DIR/work/00_validate and
# DIR/work/01_sgkfold made by make (01's word2vec needs gensim, which a GPU image may lack).
# With --max-mib N it fails when the working tree and DIR together exceed N MiB (a transfer's cap).
# With --cpu: the demo data (00_demo_data.py, the tests' size) and PROFILE=rehearsal, its 03
# epoch cut to 1 view and 2 permutations per photo.
#
# run, PROFILE=full (--cpu: PROFILE=rehearsal; figures named gpu_sh_cpu_*). Each check prints
# `check_<name>: ok|FAILED`; a failed check does not stop the others, and the exit status is 1
# when any failed. Figures are lines `name: value unit`; stage logs go to DIR/logs. The whole run
# stops at HARD_S (default BUDGET_S + 100) seconds, however a stage hangs (exit 124, said so).
# The GPU is the first of a preset CUDA_VISIBLE_DEVICES (a scheduler's), else nvidia-smi's 0.
#   device       the driver, the compute mode, torch's and CUDA's versions (devices.py check)
#   throughput   ResNet34 at 224 px, training and inference images/s, fp32 and bf16,
#                channels_last (bench/model_throughput.py); on the GPU also bench/train_loop.py
#   syncbn       03's SyncBatchNorm function against F.batch_norm in bf16 channels_last, host
#                syncs per step, ResNet34 at 64 per GPU with it and with BatchNorm
#                (bench/syncbn_check.py; --cpu: its dry run with stand-ins for the CUDA ops)
#   pipeline     02 (the store) -> 03 for one epoch -> 04 (target, fold 0) for one epoch with its
#                evaluator as a process on the GPU -> 05 on that network; wall time of each
#   resume       04 (target, fold 1, 2 epochs) killed with -9 once it has a checkpoint, then
#                rerun: it resumes from it, and every epoch is trained and evaluated
#   ddp          03 under torchrun with 2 ranks on the one GPU, a short epoch: the launch, the
#                split of the batch and rank 0's writes. NCCL refuses two ranks on one GPU, so
#                they talk over gloo, and under gloo 03 keeps plain BatchNorm: NCCL, and
#                SyncBatchNorm across GPUs, run only on a host with several GPUs.
#   projection   the whole profile's wall time on one GPU and on four (bench/gpu_project.py; four
#                GPUs' 03 at an assumed DDP efficiency, printed)
# What only a host with several GPUs shows (NCCL between GPUs, SyncBatchNorm's reduction across
# them, bf16 and channels_last under DDP, 03's scaling): run there, before `make all`,
#   make jigsaw GPUS=0,1,2,3 WORK=work-ddp-check JIGSAW_ARGS="--epochs 1"
# a one-epoch 03 on all four GPUs in a WORK of its own (its log: images/s per interval).
# Budget: BUDGET_S (default 450 s) for the whole run: 03's epoch gets what the rest leaves, and
# when stopped early its epoch time is extrapolated from its log (04 then starts from random
# init, said in the output).
set -uo pipefail

# ---- defaults -------------------------------------------------------------------------------
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=work-gpu            # ignored by .gitignore (work-*/): carried to the GPU machine explicitly
data=""                 # prep: the real data (empty: $ATMA11_DATA, else data/raw)
python=${PYTHON:-python3}
cpu=0                   # --cpu: the dry run at toy size
log=""                  # run: also append every line to this file
budget=${BUDGET_S:-450} # run: seconds for the whole run; 03 gets what the rest leaves
hard=${HARD_S:-$((budget + 100))}   # run: the hard stop, whatever hangs
reserve=200             # run: seconds kept for what follows 03 (04, 05, resume, ddp, projection)
limit_mib=""            # prep --max-mib: the most the working tree and DIR may weigh together

mode=${1:-}
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) cpu=1; shift ;;
    --dir) dir=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --max-mib) limit_mib=$2; shift 2 ;;
    *) echo "bench/gpu.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
cd "$root" || exit 2
case "$dir" in /*) ;; *) dir="$root/$dir" ;; esac
work=$dir/work
raw=$dir/raw
if [ "$cpu" = 1 ]; then profile=rehearsal; tag=gpu_sh_cpu; else profile=full; tag=gpu; fi
say() { echo "+ $*" >&2; }

# ---- prep (where the data is) ---------------------------------------------------------------
prep() {
  set -e
  mkdir -p "$dir"
  if [ "$cpu" = 1 ]; then
    [ -f "$raw/DONE" ] || "$python" 00_demo_data.py --out "$raw" --train 128 --test 48 >/dev/null
  else
    [ -n "$data" ] || data=${ATMA11_DATA:-$root/data/raw}
    [ -f "$data/train.csv" ] && [ -d "$data/photos" ] || { echo "prep: no real data in $data" >&2; exit 2; }
    case "$dir" in "$root"/*)
      git check-ignore -q "$dir" || { echo "prep: $dir is not ignored by git: use a folder .gitignore names (work-gpu)" >&2; exit 2; } ;;
    esac
    mkdir -p "$raw"
    cp -r --preserve=timestamps "$data"/*.csv "$raw/"
    [ "$(ls "$raw/photos" 2>/dev/null | wc -l)" = "$(ls "$data/photos" | wc -l)" ] || cp -r "$data/photos" "$raw/"
  fi
  # a make of its own: nothing inherited from a make that runs this script (make bench)
  env -u MAKEFLAGS -u MFLAGS -u MAKEOVERRIDES -u MAKELEVEL \
    make --no-print-directory validate folds WORK="$work" DATA="$raw" PROFILE=$profile GPUS= >&2
  rm -rf "$work/.gpu_locks" "$work/.lock"
  local tree bytes
  tree=$(git ls-files -co --exclude-standard -z | xargs -0 -r du -b 2>/dev/null | awk '{s += $1} END {print s + 0}')
  bytes=$(du -sb "$dir" | cut -f1)
  echo "prep: $dir holds $((bytes / 1048576)) MiB; with the working tree ($((tree / 1048576)) MiB): $(((bytes + tree) / 1048576)) MiB${limit_mib:+ of $limit_mib}"
  if [ -n "$limit_mib" ] && [ $((bytes + tree)) -gt $((limit_mib * 1048576)) ]; then
    echo "prep: over the $limit_mib MiB the working tree and $dir may weigh together" >&2; exit 1
  fi
  echo "prep: done. On the GPU machine, with ${dir#"$root"/} beside the working tree: bench/gpu.sh run --dir ${dir#"$root"/} [--log FILE]"
}

# ---- run (on the GPU machine) ---------------------------------------------------------------
failed=()
line() { echo "$1: $2${3:+ $3}"; }
elapsed() { echo $(( $(date +%s) - t_start )); }
check() { if [ "$2" = ok ]; then line "check_$1" ok; else line "check_$1" FAILED; failed+=("$1"); fi; }

# stage NAME CMD...: run with its log in DIR/logs; its wall time in $wall and a figure line; the
# tail of the log when it fails (status 124, a timeout, is the caller's to judge).
stage() {
  local name=$1; shift
  say "$*"
  local t0 rc=0 ms
  t0=$(date +%s%N)
  "$@" > "$dir/logs/$name.log" 2>&1 || rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  wall=$((ms / 1000)).$(printf %03d $((ms % 1000)))
  if [ $rc -ne 0 ] && [ $rc -ne 124 ]; then
    tail -20 "$dir/logs/$name.log" >&2
    echo "# $name exited $rc (log: $dir/logs/$name.log)" >&2
  fi
  line "${tag}_${name}_wall" "$((ms / 1000)).$((ms % 1000 / 100))" s
  return $rc
}

setup_python() {
  local need="import torch, numpy, pandas, PIL, tqdm, matplotlib, pyarrow"
  if ! "$python" -c "$need" 2>/dev/null; then
    echo "# $python lacks packages: installing requirements.txt into $dir/venv (needs a network)" >&2
    "$python" -m venv "$dir/venv"
    "$dir/venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt
    python=$dir/venv/bin/python
    "$python" -c "$need" || return 1
  fi
  torchrun=$(dirname "$python")/torchrun
  [ -x "$torchrun" ] || torchrun="$python -m torch.distributed.run"
}

setup_imagemagick() {   # no install attempt: a GPU machine may have no network
  if command -v mogrify >/dev/null; then
    decoder=imagemagick
  else
    decoder=pil
    echo "# no ImageMagick here: 02's store is made by bench/pil_store.py (same files, PIL's resize)" >&2
  fi
}

ft_args() {   # 04's arguments for a run of task target in $work (fold $1, then extra options)
  local fold=$1; shift
  echo --task target --fold "$fold" --folds "$work/01_sgkfold" --hvr "$work/02_hvr" \
    --jigsaw "$work/03_jigsaw" --out "$work/04_finetune" --profile "$profile" "$@"
}

check_device() {
  if [ "$cpu" = 1 ]; then
    line "${tag}_device" "cpu ($(nproc) cores)" ""
    line "${tag}_torch" "$("$python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')" ""
    echo "# --cpu: the driver and compute-mode checks need a GPU (tests/test_devices.py checks their verdicts)" >&2
    return
  fi
  local out
  if out=$("$python" devices.py check --gpus 0 2>&1); then
    echo "# $out" >&2
    line "${tag}_device" "$("$python" -c 'import torch; print(torch.cuda.get_device_name(0))')" ""
    line "${tag}_torch" "$("$python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda,
      "cuDNN", torch.backends.cudnn.version())')" ""
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=driver_version,compute_mode,clocks.max.sm \
      --format=csv,noheader | sed 's/^/# driver, compute mode, max SM clock: /' >&2
    check device ok
  else
    echo "$out" >&2
    check device FAILED
    echo "# without a usable GPU the rest cannot run" >&2
    return 1
  fi
}

check_throughput() {
  local rc=0
  if [ "$cpu" = 1 ]; then
    "$python" bench/model_throughput.py --device cpu --size 32 --train-batch 4 --infer-batch 8 \
      --warm 1 --steps 2 --prefix "$tag" || rc=$?
  else
    "$python" bench/model_throughput.py --device cuda --prefix "$tag" ${GPU_BENCH_COMPILE:+--compile} || rc=$?
    "$python" bench/train_loop.py --device cuda --sizes 224 --batch 256 --rounds 1 --tmp "$dir" |
      sed "s/^train_loop_/${tag}_train_loop_/" || rc=$?
  fi
  check throughput "$([ $rc = 0 ] && echo ok)"
}

check_syncbn() {
  local rc=0
  local toy=()
  [ "$cpu" = 1 ] && toy=(--batch 4 --size 32 --width 8 --warm 1 --steps 1)
  # its own check lines become figures of this one (check_syncbn_bf16 -> <tag>_syncbn_check_bf16)
  "$python" bench/syncbn_check.py --device "$([ "$cpu" = 1 ] && echo cpu || echo cuda)" "${toy[@]}" |
    sed -E -e "s/^check_syncbn_(\w+)/${tag}_syncbn_check_\1/" -e "s/^(syncbn|batchnorm)_/${tag}_\1_/" || rc=$?
  check syncbn "$([ $rc = 0 ] && echo ok)"
}

check_pipeline() {
  local size rc=0 left init=jigsaw
  size=$("$python" -c "import common; print(common.PROFILES['$profile']['02']['size'])")
  if [ "$decoder" = imagemagick ]; then
    stage 02_hvr ./02_hvr_augment.sh --photos "$raw/photos" --ids "$work/00_validate/photos.csv" \
      --out "$work/02_hvr" --size "$size" --python "$python" || rc=$?
  else
    stage 02_hvr "$python" bench/pil_store.py --photos "$raw/photos" --ids "$work/00_validate/photos.csv" \
      --out "$work/02_hvr" --size "$size" || rc=$?
  fi
  [ $rc = 0 ] || { check pipeline FAILED; return 1; }
  walls="02=$wall"
  left=$((budget - $(elapsed) - reserve))
  [ $left -ge 60 ] || left=60
  echo "# 03: one epoch, at most ${left}s" >&2
  # shellcheck disable=SC2046
  stage 03_jigsaw_1_epoch timeout "$left" "$python" 03_jigsaw.py --hvr "$work/02_hvr" --out "$work/03_jigsaw" \
    --profile "$profile" --epochs 1 $([ "$cpu" = 1 ] && echo --views 1 --perms 2) || rc=$?
  walls="$walls,03=$wall"
  if [ $rc = 124 ]; then
    init=scratch
    echo "# 03 stopped at its time limit: 04 starts from random init (--init scratch)" >&2
  elif [ $rc != 0 ]; then
    check pipeline FAILED; return 1
  fi
  rc=0
  # shellcheck disable=SC2046
  stage 04_finetune_1_epoch "$python" 04_finetune.py $(ft_args 0 --epochs 1 --init $init) || rc=$?
  walls="$walls,04=$wall"
  local expect=process
  [ "$cpu" = 1 ] && expect=inline
  grep -q "evaluator placement: $expect" "$dir/logs/04_finetune_1_epoch.log" ||
    { echo "# 04's evaluator was not placed as expected ($expect)" >&2; rc=1; }
  stage 05_features "$python" 05_features.py --task target --fold 0 --folds "$work/01_sgkfold" \
    --hvr "$work/02_hvr" --runs "$work/04_finetune" --out "$work/05_features" --profile "$profile" || rc=$?
  walls="$walls,05=$wall"
  check pipeline "$([ $rc = 0 ] && [ -f "$work/05_features/target_0/DONE" ] && echo ok)"
  init_used=$init
}

check_resume() {   # --ckpt-minutes 0: a state at every epoch end on the GPU too, to resume from
  local run="$work/04_finetune/target_1" pid rc=0 waited=0
  rm -rf "$run"
  say "04 (target, fold 1, 2 epochs): kill -9 once it has a checkpoint, then again"
  # shellcheck disable=SC2046
  setsid "$python" 04_finetune.py $(ft_args 1 --epochs 2 --init "$init_used" --ckpt-minutes 0) > "$dir/logs/resume_killed.log" 2>&1 &
  pid=$!
  while ! ls "$run"/ckpt_e*.pt >/dev/null 2>&1 && kill -0 $pid 2>/dev/null && [ $waited -lt 1200 ]; do
    sleep 0.1; waited=$((waited + 1))
  done
  kill -9 -- -$pid 2>/dev/null; wait $pid 2>/dev/null
  # shellcheck disable=SC2046
  stage 04_resumed "$python" 04_finetune.py $(ft_args 1 --epochs 2 --init "$init_used" --ckpt-minutes 0) || rc=$?
  grep -q "resuming from ckpt_e" "$dir/logs/04_resumed.log" || { echo "# the rerun did not resume" >&2; rc=1; }
  "$python" - "$run" <<'PY' || rc=1
import sys, pandas as pd
ev = pd.read_csv(f"{sys.argv[1]}/eval.csv")
assert list(ev["epoch"]) == [1, 2], f"eval.csv epochs {list(ev['epoch'])}"
PY
  check resume "$([ $rc = 0 ] && [ -f "$run/DONE" ] && echo ok)"
}

check_ddp() {
  local out="$work/03_ddp" rc=0
  # shellcheck disable=SC2086
  stage ddp_2_ranks env CUDA_VISIBLE_DEVICES="$([ "$cpu" = 1 ] || echo 0)" $torchrun --standalone --nproc_per_node=2 \
    03_jigsaw.py --hvr "$work/02_hvr" --out "$out" --profile "$profile" --epochs 1 --views 1 --perms 1 || rc=$?
  "$python" - "$out" <<'PY' || rc=1
import json, sys, pandas as pd
config = json.load(open(f"{sys.argv[1]}/provenance.json"))["config"]
assert config["ranks"] == 2, config["ranks"]
assert pd.read_csv(f"{sys.argv[1]}/loss.csv")["step"].is_unique
PY
  grep -h "device=" "$dir/logs/ddp_2_ranks.log" | head -1 | sed 's/^/# /' >&2
  check ddp "$([ $rc = 0 ] && echo ok)"
}

run() {
  t_start=$(date +%s)
  [ -f "$work/01_sgkfold/DONE" ] && [ -d "$raw/photos" ] ||
    { echo "run: $dir holds no prepared data: run bench/gpu.sh prep$([ "$cpu" = 1 ] && echo " --cpu") first" >&2; exit 2; }
  mkdir -p "$dir/logs"
  rm -rf "$work/02_hvr" "$work/03_jigsaw" "$work/03_ddp" "$work/04_finetune" "$work/05_features"
  setup_python || { echo "run: no Python with the pipeline's packages" >&2; exit 2; }
  setup_imagemagick
  export CUDA_DEVICE_ORDER=PCI_BUS_ID
  if [ "$cpu" = 1 ]; then export CUDA_VISIBLE_DEVICES=; else export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES%%,*}; fi
  [ "$cpu" = 1 ] || [ -n "$CUDA_VISIBLE_DEVICES" ] || export CUDA_VISIBLE_DEVICES=0
  walls="" init_used=jigsaw
  check_device || exit 1
  check_throughput
  check_syncbn
  if check_pipeline; then
    check_resume
    check_ddp
    "$python" bench/gpu_project.py --work "$work" --profile "$profile" --walls "$walls" --prefix "$tag" ||
      failed+=(projection)
  fi
  line "${tag}_bench_wall" "$(elapsed)" s
  if [ ${#failed[@]} -gt 0 ]; then
    echo "bench/gpu.sh: failed: ${failed[*]} (logs in $dir/logs)" >&2
    exit 1
  fi
}

case "$mode" in
  prep) prep ;;
  run)   # itself again under `timeout`, which stops the whole process group at the hard limit
    if [ -z "${GPU_SH_TIMED:-}" ]; then
      args=(run); [ "$cpu" = 1 ] && args+=(--cpu)
      args+=(--dir "$dir" --python "$python"); [ -n "$log" ] && args+=(--log "$log")
      rc=0
      GPU_SH_TIMED=1 timeout -k 10 "$hard" "$0" "${args[@]}" || rc=$?
      if [ $rc = 124 ] || [ $rc = 137 ]; then
        echo "bench/gpu.sh: stopped at its hard limit of ${hard}s (HARD_S); the logs so far are in $dir/logs" |
          tee -a ${log:-/dev/null} >&2
      fi
      exit $rc
    fi
    if [ -n "$log" ]; then
      mkdir -p "$(dirname "$log")"
      run 2>&1 | tee -a "$log"
      exit "${PIPESTATUS[0]}"
    else
      run
    fi ;;
  *) echo "usage: bench/gpu.sh prep|run [--cpu] [--dir DIR] [--data DATA] [--python PY] [--log FILE]" >&2; exit 2 ;;
esac
