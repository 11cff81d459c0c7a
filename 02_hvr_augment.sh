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
# The same decode also writes the photo at its own size (OUT/.rgb/native/, raw, temporary), from
# which the pack step takes the colour and edge statistics before removing it.
# Resumable: each photo lands in OUT/.rgb/ as S*S*3 raw bytes; a rerun redoes only the photos
# whose files (or size line) are missing or cut short, and DONE is written after images.npy.
set -euo pipefail

# ---- defaults -------------------------------------------------------------------------------
size=224            # the recipe's input size (profile: full)
mode=stretch        # the recipe's resize
batch=200           # photos per convert process: amortises its start-up
jobs=$(nproc)       # one convert per core
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
    --batch) batch_dir=$2; shift 2; break ;;    # (internal) decode the photos that follow
    *) echo "02_hvr_augment.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
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

# ---- one batch of photos: what xargs runs, one per core --------------------------------------
# One decode per photo: its own size is printed ("id width height .", line-buffered by stdbuf,
# so it is on disk before the photo's pixels are) into a sizes.* file of this batch; the photo
# is written as decoded (native/), then resized into the store's S x S. -regard-warnings: a
# corrupt JPEG is an error, not a silently grey image.
if [ -n "${batch_dir:-}" ]; then
  stdbuf -oL convert -regard-warnings "$@" -colorspace sRGB -set filename:id '%t' \
    -format '%t %w %h .\n' -identify -write "$batch_dir/native/%[filename:id].rgb" \
    "${geometry[@]}" -resize "${size}x${size}!" -depth 8 "$batch_dir/%[filename:id].rgb" \
    > "$(mktemp "$batch_dir/sizes.XXXXXX")" || exit 255
  echo "[02] +$# photos"
  exit 0
fi
: "${photos:?--photos is required}" "${ids:?--ids is required}" "${out:?--out is required}"

started=$(date +%s.%N)
rm -f "$out/DONE"
mkdir -p "$out/.rgb/native"
meta="{\"size\": $size, \"mode\": \"$mode\"}"
# A store of another size or mode cannot be resumed: start it again.
if [ -f "$out/.rgb/meta" ] && [ "$(cat "$out/.rgb/meta")" != "$meta" ]; then
  rm -rf "$out/.rgb" && mkdir -p "$out/.rgb/native"
fi
echo "$meta" > "$out/.rgb/meta"

bytes=$((size * size * 3))
tail -n +2 "$ids" | cut -d, -f1 > "$out/.rgb/ids"
total=$(wc -l < "$out/.rgb/ids")
# finished photos: a complete size line, the stored S*S*3 bytes and the native w*h*3 bytes (a
# file cut short by a kill, or a line it lost, and the photo is decoded again)
{ find "$out/.rgb" -maxdepth 1 -name '*.rgb' -printf 'S %f %s\n'
  find "$out/.rgb/native" -maxdepth 1 -name '*.rgb' -printf 'N %f %s\n'
  find "$out/.rgb" -maxdepth 1 -name 'sizes.*' -exec awk 'NF == 4 && $4 == "." {print "L", $1 ".rgb", $2 * $3 * 3}' {} +
} | awk -v stored="$bytes" '$1 == "S" && $3 == stored {s[$2] = 1} $1 == "N" {n[$2] = $3} $1 == "L" {want[$2] = $3}
      END {for (f in want) if (s[f] && n[f] == want[f]) {sub(/\.rgb$/, "", f); print f}}' | sort > "$out/.rgb/finished"
todo=$(sort "$out/.rgb/ids" | comm -23 - "$out/.rgb/finished" | sed "s|^|$photos/|; s|\$|.jpg|")
n_todo=$(printf '%s' "$todo" | grep -c . || true)
echo "[02] profile size ${size}px mode $mode: $total photos, $((total - n_todo)) already done, $n_todo to decode on $jobs cores"

if [ "$n_todo" -gt 0 ]; then
  printf '%s\n' "$todo" | xargs -d '\n' -n "$batch" -P "$jobs" \
    "$0" --size "$size" --mode "$mode" --batch "$out/.rgb" 2>&1 \
    | awk '/^\[02\]/ {n += $2; printf "[02] decoded %d/%d\n", n, '"$n_todo"'; fflush(); next} {print; fflush()}' \
    || { echo "error: ImageMagick could not decode the photo(s) named above (corrupt pixel data);" \
              "replace them, then run the same command again: finished photos are kept" >&2; exit 1; }
fi

# Pack into one array, written to a temporary name and renamed, with each photo's statistics
# (photo_stats.py) from the same decode: the photo at its own size and its stored pixels; DONE last.
"$python" - "$out" "$size" "$mode" "$started" "$jobs" <<'PY'
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import numpy as np
import pandas as pd
sys.path.insert(0, os.getcwd())
import common
import photo_stats

out, size, mode, started, jobs = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
rgb = out / ".rgb"
ids = (rgb / "ids").read_text().split()
# Each photo's own width and height, as decoded: its complete "id w h ." lines (a photo redone
# after a kill may have two, identical; a line a kill cut short has no final ".").
sizes = {}
for f in rgb.glob("sizes.*"):
    for line in f.read_text().splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[3] == ".":
            sizes[fields[0]] = int(fields[1]), int(fields[2])


def pack(start, chunk, store):
    """Rows start.. of the store, from their raw files, and their statistics: each file read once."""
    arr = np.load(store, mmap_mode="r+")
    rows = []
    for i, oid in enumerate(chunk, start):
        arr[i] = img = np.fromfile(rgb / f"{oid}.rgb", dtype=np.uint8).reshape(size, size, 3)
        w, h = sizes[oid]
        native = np.fromfile(rgb / "native" / f"{oid}.rgb", dtype=np.uint8).reshape(h, w, 3)
        top, bottom, left, right = photo_stats.content_box(w, h, size, mode)
        rows.append(photo_stats.row(native, img[top:bottom, left:right]))
    arr.flush()
    return rows


# Chunks on every core (workers fork with `sizes`), each writing its rows of the one store file.
with common.atomic_path(out / "images.npy") as tmp:
    np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ids), size, size, 3)).flush()
    starts = range(0, len(ids), 256)
    with ProcessPoolExecutor(jobs) as pool:
        parts = pool.map(pack, starts, [ids[k:k + 256] for k in starts], [tmp] * len(starts))
        rows = [r for part in parts for r in part]
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
