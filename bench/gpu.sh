#!/usr/bin/env bash
# bench/gpu.sh: the benchmark for a machine with one GPU (made for an H200), prepared here and run
# there in one go; and its CPU rehearsal at tiny sizes, which `make bench` runs.
#
#   bench/gpu.sh prep [--cpu] [--dir DIR] [--data DATA] [--python PY]   # here (needs .venv)
#   bench/gpu.sh run  [--cpu] [--dir DIR] [--python PY] [--log FILE]    # there
#
# prep fills DIR (default work-gpu/, which .gitignore ignores) with what the GPU machine needs and
# the working tree does not hold: DIR/raw, a copy of the real data (DATA, default $ATMA11_DATA or
# ../shared/atmacup11: 9856 photos, 60 MiB, and the CSVs), and DIR/work/00_validate and
# DIR/work/01_sgkfold, made here by make (01's word2vec needs gensim, which a GPU image may lack).
# It fails when the working tree and DIR together exceed 64 MiB (what such a machine receives).
# With --cpu: demo data (00_demo_data.py, the tests' size) instead of the real data.
#
# run, PROFILE=full (--cpu: PROFILE=smoke, 32 px, a few steps; figures named gpu_sh_cpu_*):
#   0. Python: the machine's own when it imports torch, torchvision, numpy, pandas, pillow, tqdm,
#      matplotlib and pyarrow; else requirements.txt into DIR/venv (that needs a network).
#      ImageMagick for 02: present, else apt-get (root, package lists present), else
#      bench/pil_store.py makes the same store with PIL (said in the output).
#   1. (a) the GPU's name; ResNet34 training and inference images/s at 224 px, fp32 and bf16,
#      channels_last (bench/model_throughput.py); on the GPU also figures 1-3 of `make bench`:
#      input path, jigsaw batches, training-loop overhead and host syncs per step.
#   2. (b) the real stages on the real photos: 02 (decode once), 03 for one epoch, 04 (task
#      target, fold 0) for one epoch with its evaluator, 05 on that model; wall time of each.
#   3. per-epoch times and the projected wall time of the whole recipe (bench/gpu_project.py).
# Budget: under 8 minutes on one H200 (BUDGET_S, default 450 s): 03's epoch gets what is left
# after the rest is reserved, and when stopped early its epoch time is extrapolated from its log
# (04 then starts from random init: said in the output).
#
# Every figure is a line `name: value unit`; stage logs go to DIR/logs, and a failing stage's tail
# is printed. Nothing is written outside DIR (and $OUT-style --log FILE).
set -euo pipefail

# ---- defaults -------------------------------------------------------------------------------
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=work-gpu            # ignored by .gitignore (work-*/): carried to the GPU machine explicitly
data=""                 # prep: the real data (empty: $ATMA11_DATA, else ../shared/atmacup11)
python=${PYTHON:-python3}
cpu=0                   # --cpu: the rehearsal at tiny sizes
log=""                  # run: also append every line to this file
budget=${BUDGET_S:-450} # run: seconds for the whole run (GPU); 03 gets what the rest leaves
limit_mib=64            # what the GPU machine receives: working tree + DIR

mode=${1:-}
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) cpu=1; shift ;;
    --dir) dir=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    *) echo "bench/gpu.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
cd "$root"
case "$dir" in /*) ;; *) dir="$root/$dir" ;; esac
work=$dir/work
raw=$dir/raw
if [ "$cpu" = 1 ]; then profile=smoke; tag=gpu_sh_cpu; else profile=full; tag=gpu; fi
say() { echo "+ $*" >&2; }

# ---- prep (here) ----------------------------------------------------------------------------
prep() {
  mkdir -p "$dir"
  if [ "$cpu" = 1 ]; then
    [ -f "$raw/DONE" ] || "$python" 00_demo_data.py --out "$raw" --train 128 --test 48 >/dev/null
  else
    [ -n "$data" ] || data=${ATMA11_DATA:-$root/../shared/atmacup11}
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
  rm -rf "$work/.gpu_locks"
  local tree bytes
  tree=$(git ls-files -co --exclude-standard -z | xargs -0 -r du -b 2>/dev/null | awk '{s += $1} END {print s + 0}')
  bytes=$(du -sb "$dir" | cut -f1)
  echo "prep: $dir holds $((bytes / 1048576)) MiB; with the working tree ($((tree / 1048576)) MiB): $(((bytes + tree) / 1048576)) MiB of $limit_mib"
  if [ "$cpu" = 0 ] && [ $((bytes + tree)) -gt $((limit_mib * 1048576)) ]; then
    echo "prep: over the $limit_mib MiB a GPU machine receives" >&2; exit 1
  fi
  echo "prep: done. On the GPU machine, carrying ${dir#"$root"/}: bench/gpu.sh run --dir ${dir#"$root"/} [--log FILE]"
}

# ---- run (there) ----------------------------------------------------------------------------
line() { echo "$1: $2${3:+ $3}"; }
elapsed() { echo $(( $(date +%s) - t_start )); }

# stage NAME CMD...: run with its log in DIR/logs; print its wall time; the tail on failure.
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
    echo "bench/gpu.sh: $name exited $rc (log: $dir/logs/$name.log)" >&2
    exit $rc
  fi
  line "${tag}_${name}_wall" "$((ms / 1000)).$((ms % 1000 / 100))" s
  return $rc
}

setup_python() {
  local need="import torch, torchvision, numpy, pandas, PIL, tqdm, matplotlib, pyarrow"
  if ! "$python" -c "$need" 2>/dev/null; then
    echo "# $python lacks packages: installing requirements.txt into $dir/venv (needs a network)" >&2
    "$python" -m venv "$dir/venv"
    "$dir/venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt
    python=$dir/venv/bin/python
    "$python" -c "$need"
  fi
  "$python" - <<'PY' >&2
import sys, torch, torchvision, numpy
print(f"# python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"numpy {numpy.__version__}; CUDA {torch.version.cuda}, GPU available: {torch.cuda.is_available()}")
PY
}

setup_imagemagick() {
  if ! command -v mogrify >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null &&
     ls /var/lib/apt/lists/*Packages >/dev/null 2>&1; then
    timeout 60 env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq imagemagick >/dev/null 2>&1 || true
  fi
  if command -v mogrify >/dev/null; then
    decoder=imagemagick
  else
    decoder=pil
    echo "# no ImageMagick here: 02's store is made by bench/pil_store.py (same files, PIL's resize);" \
         "the recipe's ImageMagick references are not measured" >&2
  fi
}

run() {
  t_start=$(date +%s)
  [ -f "$work/01_sgkfold/DONE" ] && [ -d "$raw/photos" ] ||
    { echo "run: $dir holds no prepared data: run bench/gpu.sh prep$([ "$cpu" = 1 ] && echo " --cpu") here first" >&2; exit 2; }
  mkdir -p "$dir/logs"
  rm -rf "$work/02_hvr" "$work/03_jigsaw" "$work/04_finetune" "$work/05_features"
  setup_python
  setup_imagemagick
  local device
  if [ "$cpu" = 1 ]; then device=cpu; else device=cuda; fi
  if [ "$device" = cuda ]; then
    "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
      { echo "run: no CUDA GPU visible (use --cpu for the rehearsal)" >&2; exit 2; }
    local gpu
    gpu=$("$python" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")')
    line "${tag}_device" "$gpu" ""
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=driver_version,clocks.max.sm --format=csv,noheader | sed 's/^/# driver, max SM clock: /' >&2
  else
    line "${tag}_device" "cpu ($(nproc) cores)" ""
  fi

  # (a) the network alone, then figures 1-3 on the GPU
  if [ "$cpu" = 1 ]; then
    "$python" bench/model_throughput.py --device cpu --size 32 --train-batch 4 --infer-batch 8 \
      --warm 1 --steps 2 --prefix "$tag"
    echo "# --cpu: figures 1-3 on the GPU are skipped (make bench measures them on the CPU)" >&2
  else
    "$python" bench/model_throughput.py --device cuda --prefix "$tag" ${GPU_BENCH_COMPILE:+--compile}
    "$python" bench/input_path.py --device cuda --sizes 224 --data "$raw" --photos 1024 --batches 50 --rounds 1 \
      --tmp "$dir" --prefix "${tag}_input"
    "$python" bench/jigsaw_batches.py --device cuda --sizes 224 --data "$raw" --photos 256 --puzzles 320 \
      --batches 50 --rounds 1 --tmp "$dir" --prefix "${tag}_jigsaw"
    "$python" bench/train_loop.py --device cuda --sizes 224 --batch 256 --rounds 1 --tmp "$dir" |
      sed "s/^train_loop_/${tag}_train_loop_/"
  fi

  # (b) the real stages
  local size
  size=$("$python" -c "import common; print(common.PROFILES['$profile']['02']['size'])")
  local walls=""
  if [ "$decoder" = imagemagick ]; then
    stage 02_hvr ./02_hvr_augment.sh --photos "$raw/photos" --ids "$work/00_validate/photos.csv" \
      --out "$work/02_hvr" --size "$size" --python "$python"
  else
    stage 02_hvr "$python" bench/pil_store.py --photos "$raw/photos" --ids "$work/00_validate/photos.csv" \
      --out "$work/02_hvr" --size "$size"
  fi
  walls="02=$wall"
  # 03 gets what is left of the budget, less ~100 s for 04, 05 and the projection (GPU only)
  local left=$((budget - $(elapsed) - 100)) rc=0
  [ "$cpu" = 1 ] || [ $left -ge 60 ] || left=60
  [ "$cpu" = 0 ] || left=600
  echo "# 03: one epoch, at most ${left}s" >&2
  stage 03_jigsaw_1_epoch timeout "$left" "$python" 03_jigsaw.py --hvr "$work/02_hvr" --out "$work/03_jigsaw" \
    --profile "$profile" --epochs 1 || rc=$?
  walls="$walls,03=$wall"
  local init=jigsaw
  if [ $rc -eq 124 ]; then
    init=scratch
    echo "# 03 stopped at its time limit: 04 starts from random init (--init scratch)" >&2
  fi
  stage 04_finetune_1_epoch "$python" 04_finetune.py --task target --fold 0 --folds "$work/01_sgkfold" \
    --hvr "$work/02_hvr" --jigsaw "$work/03_jigsaw" --out "$work/04_finetune" --profile "$profile" \
    --epochs 1 --init $init
  walls="$walls,04=$wall"
  stage 05_features "$python" 05_features.py --task target --fold 0 --folds "$work/01_sgkfold" \
    --hvr "$work/02_hvr" --runs "$work/04_finetune" --out "$work/05_features" --profile "$profile"
  walls="$walls,05=$wall"
  "$python" bench/gpu_project.py --work "$work" --profile "$profile" --walls "$walls" --prefix "$tag"
  line "${tag}_bench_wall" "$(elapsed)" s
}

case "$mode" in
  prep) prep ;;
  run)
    if [ -n "$log" ]; then
      mkdir -p "$(dirname "$log")"
      run 2>&1 | tee -a "$log"
    else
      run
    fi ;;
  *) echo "usage: bench/gpu.sh prep|run [--cpu] [--dir DIR] [--data DATA] [--python PY] [--log FILE]" >&2; exit 2 ;;
esac
