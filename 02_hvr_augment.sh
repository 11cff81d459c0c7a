#!/usr/bin/env bash
# Stage 02: decode and resize every photo (train and test) exactly once, with ImageMagick, in
# parallel over the cores, into one memory-mappable store. The 8 views (identity, h, v, hv, r,
# hr, vr, hvr) are not written: they are exact pixel permutations made on the training device
# (training.py: view_index / apply_views), so the 8x costs no disk and no decode time.
#
# Reads  DATA/photos/{id}.jpg and WORK/00_validate/photos.csv (the validated id list)
# Writes WORK/02_hvr/: images.npy (N, S, S, 3) uint8, ids.txt (row order), meta.json,
#        stats.csv (per-photo size, colour and edge statistics, photo_stats.py; same row order), DONE
#
#   02_hvr_augment.sh --photos DATA/photos --ids WORK/00_validate/photos.csv --out WORK/02_hvr \
#                     --size 224 --mode stretch --python .venv/bin/python
#
# --mode stretch: the recipe's plain resize to S x S (-resize SxS!).
# --mode pad:     pad to a square by replicating the edge pixels, then resize (the 1st place).
# Greyscale and CMYK photos are converted to sRGB (-colorspace sRGB); the store is always RGB.
# Resumable: each photo lands in OUT/.rgb/ as S*S*3 raw bytes; a rerun redoes only the photos
# whose file is missing or not exactly that size, and DONE is written after images.npy.
set -euo pipefail

# ---- defaults -------------------------------------------------------------------------------
size=224            # the recipe's input size (profile: full)
mode=stretch        # the recipe's resize
batch=200           # photos per mogrify process: amortises its start-up
jobs=$(nproc)       # one mogrify per core
python=python3

while [ $# -gt 0 ]; do
  case "$1" in
    --photos) photos=$2; shift 2 ;;
    --ids) ids=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    *) echo "02_hvr_augment.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
: "${photos:?--photos is required}" "${ids:?--ids is required}" "${out:?--out is required}"
case "$mode" in
  stretch) geometry=() ;;
  # The viewport grows the canvas to max(w,h) square, centred; -virtual-pixel edge fills it
  # with copies of the edge pixels; +repage drops the offset before the resize.
  pad) geometry=(-virtual-pixel edge -set option:distort:viewport
                 '%[fx:max(w,h)]x%[fx:max(w,h)]-%[fx:max((h-w)/2,0)]-%[fx:max((w-h)/2,0)]'
                 -distort SRT 0 +repage) ;;
  *) echo "02_hvr_augment.sh: --mode must be stretch or pad, not $mode" >&2; exit 2 ;;
esac
[[ "$size" =~ ^[0-9]+$ ]] && [ "$size" -ge 9 ] || { echo "--size must be an integer >= 9" >&2; exit 2; }

started=$(date +%s.%N)
rm -f "$out/DONE"
mkdir -p "$out/.rgb"
meta="{\"size\": $size, \"mode\": \"$mode\"}"
# A store of another size or mode cannot be resumed: start it again.
if [ -f "$out/.rgb/meta" ] && [ "$(cat "$out/.rgb/meta")" != "$meta" ]; then
  rm -rf "$out/.rgb" && mkdir -p "$out/.rgb"
fi
echo "$meta" > "$out/.rgb/meta"

bytes=$((size * size * 3))
tail -n +2 "$ids" | cut -d, -f1 > "$out/.rgb/ids"
total=$(wc -l < "$out/.rgb/ids")
# finished photos: exactly S*S*3 bytes (a file cut short by a kill is redone) and a complete
# line of their size in a sizes.* file (see below; a photo whose line a kill lost is redone too)
find "$out/.rgb" -maxdepth 1 -name '*.rgb' -size "${bytes}c" -printf '%f\n' | sed 's/\.rgb$//' | sort > "$out/.rgb/pixels"
find "$out/.rgb" -maxdepth 1 -name 'sizes.*' -exec awk 'NF == 4 && $4 == "." {print $1}' {} + | sort -u \
  | comm -12 "$out/.rgb/pixels" - > "$out/.rgb/finished"
todo=$(sort "$out/.rgb/ids" | comm -23 - "$out/.rgb/finished" | sed "s|^|$photos/|; s|\$|.jpg|")
n_todo=$(printf '%s' "$todo" | grep -c . || true)
echo "[02] profile size ${size}px mode $mode: $total photos, $((total - n_todo)) already done, $n_todo to decode on $jobs cores"

if [ "$n_todo" -gt 0 ]; then
  # -regard-warnings: a corrupt JPEG is an error, not a silently grey image. Each photo's own
  # size, as decoded, is printed (-print, line-buffered by stdbuf, so it is on disk before the
  # photo's pixels are) as "id width height ." into one sizes.* file per batch.
  printf '%s\n' "$todo" | xargs -d '\n' -n "$batch" -P "$jobs" \
    sh -c 'stdbuf -oL mogrify -regard-warnings -path "$0" "$@" > "$(mktemp "$0/sizes.XXXXXX")" || exit 255
           n=0; for a; do case $a in *.jpg) n=$((n + 1)) ;; esac; done; echo "[02] +$n photos"' "$out/.rgb" \
    -colorspace sRGB -set photo:size '%w %h' -print '%t %[photo:size] .\n' \
    "${geometry[@]}" -resize "${size}x${size}!" -depth 8 -format rgb 2>&1 \
    | awk '/^\[02\]/ {n += $2; printf "[02] decoded %d/%d\n", n, '"$n_todo"'; fflush(); next} {print; fflush()}' \
    || { echo "error: ImageMagick could not decode the photo(s) named above (corrupt pixel data);" \
              "replace them, then run the same command again: finished photos are kept" >&2; exit 1; }
fi

# Pack into one array, written to a temporary name and renamed, with each photo's statistics
# (photo_stats.py) taken from the same decoded bytes on the way; DONE last.
"$python" - "$out" "$size" "$mode" "$started" <<'PY'
import os, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
sys.path.insert(0, os.getcwd())
import common
import photo_stats

out, size, mode, started = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
ids = (out / ".rgb" / "ids").read_text().split()
# Each photo's own width and height, as mogrify decoded it: its complete "id w h ." lines (a
# photo redone after a kill may have two, identical; a line a kill cut short has no final ".").
sizes = {}
for f in (out / ".rgb").glob("sizes.*"):
    for line in f.read_text().splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[3] == ".":
            sizes[fields[0]] = int(fields[1]), int(fields[2])
rows = []
with common.atomic_path(out / "images.npy") as tmp:
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ids), size, size, 3))
    for i, oid in enumerate(ids):
        arr[i] = img = np.fromfile(out / ".rgb" / f"{oid}.rgb", dtype=np.uint8).reshape(size, size, 3)
        w, h = sizes[oid]
        top, bottom, left, right = photo_stats.content_box(w, h, size, mode)
        rows.append(photo_stats.stats(img[top:bottom, left:right], w, h))
    arr.flush()
    del arr
table = pd.DataFrame(np.stack(rows), columns=photo_stats.COLUMNS)
table.insert(0, "object_id", ids)
common.write_csv(out / "stats.csv", table, float_format="%.7g")
common.write_text(out / "ids.txt", "\n".join(ids) + "\n")
common.write_json(out / "meta.json", {"size": size, "mode": mode, "count": len(ids)})
common.write_provenance(out, {"size": size, "mode": mode, "photos": len(ids)}, started)
mb = (out / "images.npy").stat().st_size / 2**20
print(f"[02] store {out / 'images.npy'}: {len(ids)} x {size} x {size} x 3 uint8, {mb:.1f} MiB on disk, "
      f"and stats.csv ({len(photo_stats.COLUMNS)} statistics per photo) [{time.time() - started:.1f}s]")
PY
rm -rf "$out/.rgb"
"$python" -c 'import sys, common; common.mark_done(sys.argv[1])' "$out"
