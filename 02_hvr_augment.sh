#!/usr/bin/env bash
# Stage 02: decode and resize every photo (train and test) exactly once, with ImageMagick, in
# parallel over the cores, into one memory-mappable store. The 8 views (identity, h, v, hv, r,
# hr, vr, hvr) are not written: they are exact pixel permutations made on the training device
# (pixels.py: view_index / apply_views), so the 8x costs no disk and no decode time.
#
# Reads  DATA/photos/{id}.jpg and WORK/00_validate/photos.csv (the validated id list)
# Writes WORK/02_hvr/: images.npy (N, S, S, 3) uint8, ids.txt (row order), meta.json (with the
#        store's size and a sample hash, checked wherever it is opened: pixels.check_store),
#        stats.csv (per-photo size, colour, edge and texture statistics, photo_stats.py; same
#        row order), DONE
#
#   02_hvr_augment.sh --photos DATA/photos --ids WORK/00_validate/photos.csv --out WORK/02_hvr \
#                     --profile cpu --mode stretch --python .venv/bin/python
#
# --profile P: the store's size from common.PROFILES (full 224, cpu 48, smoke 24); --size S over it.
#
# --mode stretch: the recipe's plain resize to S x S (-resize SxS!).
# --mode pad:     pad to a square by replicating the edge pixels, then resize (the 1st place).
# Greyscale and CMYK photos are converted to sRGB (-colorspace sRGB); the store is always RGB.
# The same decode also writes the photo at its own size (OUT/.rgb/b.*/native/, raw, temporary),
# from which the pack step takes the colour, edge and texture statistics before removing it.
# Resumable: each batch of photos lands in OUT/.rgb/b.*/ as S*S*3 raw bytes, committed only when
# the whole batch decoded; a rerun redoes only the photos no committed batch holds with the bytes
# validation checked (photos.csv's sha256), and DONE is written after images.npy.
set -euo pipefail

# ---- defaults -------------------------------------------------------------------------------
size=224            # the recipe's input size (profile: full)
mode=stretch        # the recipe's resize
batch=200           # photos per convert process: amortises its start-up
batch_pixels=25000000  # and at most this many pixels per convert (unless one photo has more):
                       # convert holds a batch's photos at once, within ImageMagick's policy
jobs=$(nproc)       # one convert per core
python=python3
profile=            # --profile P: the size from common.PROFILES[P]["02"] (what make passes)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)    # the repository: its Python modules

while [ $# -gt 0 ]; do
  case "$1" in
    --photos) photos=$2; shift 2 ;;
    --ids) ids=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --size) size=$2; size_given=1; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --batch) batch_dir=$2; shift 2; break ;;    # (internal) decode the photos that follow
    -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;   # the header above
    *) echo "02_hvr_augment.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -n "$profile" ] && [ -z "${size_given:-}" ]; then
  size=$("$python" "$here/profiles.py" setting --profile "$profile" --stage 02 size) || exit 2
fi
case "$mode" in
  stretch) geometry=() ;;
  # The viewport grows the canvas to max(w,h) square, the photo centred at a whole-pixel offset;
  # -virtual-pixel edge fills it with copies of the edge pixels; -filter point makes the
  # distortion copy pixels (its default resampling blurs them), +filter gives
  # the resize its own filter back; +repage drops the offset before the resize. At the photos'
  # own size (--size 224 on the real data) the photo is in the store exactly as decoded.
  pad) geometry=(-virtual-pixel edge -filter point -set option:distort:viewport
                 '%[fx:max(w,h)]x%[fx:max(w,h)]-%[fx:floor(max((h-w)/2,0))]-%[fx:floor(max((w-h)/2,0))]'
                 -distort SRT 0 +filter +repage) ;;
  *) echo "02_hvr_augment.sh: --mode must be stretch or pad, not $mode" >&2; exit 2 ;;
esac
[[ "$size" =~ ^[0-9]+$ ]] && [ "$size" -ge 9 ] || { echo "--size must be an integer >= 9" >&2; exit 2; }

# ---- one batch of photos: what xargs runs, one per core --------------------------------------
# One decode per photo: its own size is printed ("id width height"), the photo is written as
# decoded (native/), then resized into the store's S x S. -regard-warnings: a corrupt JPEG is an
# error, not a silently grey image. Everything lands in a private tmp.* directory that is renamed
# to b.* only when the whole batch decoded, with each photo's sha256 (taken before and after the
# decode, so a photo changed meanwhile is caught) in its index: a rerun trusts only committed
# batches, and only for photos whose bytes are still those that validation checked.
if [ -n "${batch_dir:-}" ]; then
  failed() {   # the cause, for the parent's summary; convert's own lines name the photo
    echo "[02-failed] $1"; rm -rf "$tmp"; exit 255; }
  tmp=$(mktemp -d "$batch_dir/tmp.XXXXXX" 2>/dev/null) && mkdir "$tmp/native" 2>/dev/null || {
    tmp=; failed nospace; }
  before=$(sha256sum -- "$@") || failed changed
  if ! convert -regard-warnings "$@" -colorspace sRGB -set filename:id '%t' \
      -format '%t %w %h\n' -identify -write "$tmp/native/%[filename:id].rgb" \
      "${geometry[@]}" -resize "${size}x${size}!" -depth 8 "$tmp/%[filename:id].rgb" \
      > "$tmp/sizes" 2> "$tmp/err"; then
    cat "$tmp/err" >&2 2>/dev/null || true
    if grep -qi "no space left\|disk quota" "$tmp/err" 2>/dev/null \
        || [ "$(df -Pk "$batch_dir" | awk 'NR == 2 {print $4}')" -lt 1024 ]; then failed nospace; fi
    grep -oE "[^/\`' ]+\.jpg'" "$tmp/err" | tr -d "'" | sort -u | sed 's/^/[02-photo] /' || true
    if grep -qi "cache resources exhausted\|exceeds limit\|resource limit" "$tmp/err"; then failed resources
    else failed corrupt; fi
  fi
  [ "$(sha256sum -- "$@")" = "$before" ] || failed changed
  printf '%s\n' "$before" | awk 'NR == FNR {n = split($2, p, "/"); sub(/\.jpg$/, "", p[n]); h[p[n]] = $1; next}
      NF == 3 {print $1, $2, $3, h[$1]}' - "$tmp/sizes" > "$tmp/index" || failed nospace
  mv "$tmp" "$batch_dir/b.${tmp##*.}" || failed nospace
  echo "[02] +$# photos"
  exit 0
fi
: "${photos:?--photos is required}" "${ids:?--ids is required}" "${out:?--out is required}"
# The decode needs ImageMagick; without it every photo would look corrupt.
convert -version 2>/dev/null | head -1 | grep -q '^Version: ImageMagick' || {
  echo "error: ImageMagick's convert is not on PATH ($(command -v convert || echo none));" \
       "run make setup, or install it (apt-get install imagemagick)" >&2; exit 2; }

# Any write of this script's own that fails on a full disk says so (not blamed on the photos).
disk_full() {
  echo "error: the disk holding $out is full (No space left on device): free space there" \
       "(df -h $out), then run the same command again: finished photos are kept" >&2; }
trap '[ "$(df -Pk "$out" 2>/dev/null | awk "NR == 2 {print \$4}")" -lt 1024 ] 2>/dev/null && disk_full' ERR
started=$(date +%s.%N)
rm -f "$out/DONE" "$out"/.*.tmp        # and a store a kill left half-written (1.5 GB at 224 px)
mkdir -p "$out/.rgb"
rm -rf "$out"/.rgb/tmp.*               # batches a kill interrupted: never trusted
meta="{\"size\": $size, \"mode\": \"$mode\"}"
# A store of another size or mode cannot be resumed: start it again.
if [ -f "$out/.rgb/meta" ] && [ "$(cat "$out/.rgb/meta")" != "$meta" ]; then
  rm -rf "$out/.rgb" && mkdir -p "$out/.rgb"
fi
echo "$meta" > "$out/.rgb/meta"

# The ids to decode, with the sha256 validation saw ("-": an id list without hashes, trusted as is),
# the size validation read, and the file's bytes (a statistic; "-": unknown).
awk -F, 'NR == 1 {for (i = 1; i <= NF; i++) col[$i] = i; next}
         {print $1, (("sha256" in col) ? $col["sha256"] : "-"), (("width" in col) ? $col["width"] + 0 : 0),
                (("height" in col) ? $col["height"] + 0 : 0), (("bytes" in col) ? $col["bytes"] + 0 : "-")}' \
  "$ids" > "$out/.rgb/ids"
total=$(wc -l < "$out/.rgb/ids")
# finished photos: "id batch-dir width height" from committed batches whose hash is validation's
plan() {
  find "$out/.rgb" -mindepth 2 -maxdepth 2 -path '*/b.*/index' -print0 \
    | xargs -0 -r awk '{d = FILENAME; sub(/\/index$/, "", d); print "B", d, $0}' \
    | awk 'NR == FNR {want[$1] = $2; next}
           ($3 in want) && (want[$3] == "-" || want[$3] == $6) && !($3 in done) {done[$3] = $2 " " $4 " " $5}
           END {for (i in done) print i, done[i]}' "$out/.rgb/ids" - | sort > "$out/.rgb/finished"
}
plan
# the rest, one batch a line: up to $batch photos and $batch_pixels pixels
todo=$(awk -v max="$batch" -v budget="$batch_pixels" -v dir="$photos" '
    FILENAME == ARGV[1] {done[$1] = 1; next}
    !($1 in done) {px = $3 * $4
                   if (n && (n == max || sum + px > budget)) {print line; n = sum = 0; line = ""}
                   line = line (n ? " " : "") dir "/" $1 ".jpg"; n++; sum += px}
    END {if (n) print line}' "$out/.rgb/finished" "$out/.rgb/ids")
n_todo=$(printf '%s' "$todo" | wc -w)
echo "[02] profile size ${size}px mode $mode: $total photos, $((total - n_todo)) already done, $n_todo to decode on $jobs cores"

if [ "$n_todo" -gt 0 ]; then
  rc=0
  printf '%s\n' "$todo" | xargs -L 1 -P "$jobs" \
    "$0" --size "$size" --mode "$mode" --batch "$out/.rgb" 2>&1 \
    | awk '/^\[02\]/ {n += $2; printf "[02] decoded %d/%d\n", n, '"$n_todo"'; fflush(); next}
           /^\[02-failed\]/ {why[$2] = 1; next}
           /^\[02-photo\]/ {if (!($2 in bad)) {bad[$2] = 1; names = names " " $2}; next}
           {print; fflush()}
           END {if (names != "") print "photo(s) ImageMagick failed on:" names > "/dev/stderr"
                if (why["nospace"]) exit 10; if (why["resources"]) exit 11; if (why["changed"]) exit 12}' \
    || rc=$?
  case $rc in
    0) ;;
    10) disk_full; exit 1 ;;
    11) echo "error: ImageMagick's resource limits (identify -list resource; its policy.xml) are too small" \
             "for the photo(s) named above: raise them, or validate with a lower make MAX_PIXELS=..." >&2; exit 1 ;;
    12) echo "error: photo(s) under $photos changed while 02 read them; run the same command again" >&2; exit 1 ;;
    *) echo "error: ImageMagick could not decode the photo(s) named above (corrupt pixel data);" \
            "replace them, then run the same command again: finished photos are kept" >&2; exit 1 ;;
  esac
  plan
fi
missing=$(cut -d' ' -f1 "$out/.rgb/ids" | sort | comm -23 - <(cut -d' ' -f1 "$out/.rgb/finished") | head -5)
if [ -n "$missing" ]; then
  echo "error: photo(s) changed since validation checked them (their sha256 differs from $ids):" \
       $missing "; run the same command again (validation and 02 then see the new bytes)" >&2; exit 1
fi

# Pack into one array, written to a temporary name and renamed, with each photo's statistics
# (photo_stats.py) from the same decode: the photo at its own size and its stored pixels;
# .rgb removed, DONE last (store_pack.py).
"$python" "$here/store_pack.py" --out "$out" --size "$size" --mode "$mode" --started "$started" --jobs "$jobs"
