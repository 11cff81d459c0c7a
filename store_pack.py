"""Stage 02's last step: pack the decoded photos into the store, with their statistics.

02_hvr_augment.sh decodes every photo with ImageMagick into committed batches under
OUT/.rgb/b.*/ (the S x S pixels, and the photo at its own size under native/); this packs them
into one memory-mappable array in OUT/.rgb/ids' order, takes each photo's statistics
(photo_stats.py) from the same decode, removes OUT/.rgb and writes DONE last.

    python store_pack.py --out work/02_hvr --size 48 --mode stretch --started 1764560000.0

Reads  OUT/.rgb/ids ("id sha256 width height bytes" per photo, the store's row order) and
       OUT/.rgb/finished ("id batch-dir width height": where each decoded photo lies)
Writes OUT/images.npy (N, S, S, 3) uint8, ids.txt, stats.csv, provenance.json, DONE and meta.json
       (size, mode, count, and the store's bytes and sample_sha256: common.store_record)
"""
import argparse
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

import common
import photo_stats

CHUNK = 256        # photos per worker task: each writes its rows of the one store file

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--out", required=True, help="stage 02's directory, holding .rgb/ from the decode")
p.add_argument("--size", type=int, required=True, help="the store's S")
p.add_argument("--mode", required=True, choices=["stretch", "pad"], help="the decode's resize")
p.add_argument("--started", type=float, default=None, help="the stage's start (epoch seconds), for provenance")
p.add_argument("--jobs", type=int, default=os.cpu_count(), help="worker processes")


def read_plan(rgb):
    """(ids in row order, {id: batch dir}, {id: (width, height)}, {id: the JPEG's bytes, NaN when
    the id list did not say}) from the decode's lists."""
    listed = [line.split() for line in (rgb / "ids").read_text().splitlines()]
    ids = [fields[0] for fields in listed]
    file_bytes = {fields[0]: float(fields[4]) if len(fields) > 4 and fields[4] != "-" else np.nan
                  for fields in listed}
    where, sizes = {}, {}
    for line in (rgb / "finished").read_text().splitlines():
        oid, batch, w, h = line.split()
        where[oid], sizes[oid] = Path(batch), (int(w), int(h))
    return ids, where, sizes, file_bytes


def pack(start, chunk, *, store, size, mode):
    """Rows start.. of the store from their raw files (chunk: (id, batch dir, (width, height),
    the JPEG's bytes) per photo), and their statistics: each file read once."""
    arr = np.load(store, mmap_mode="r+")
    rows = []
    for i, (oid, batch, (w, h), file_bytes) in enumerate(chunk, start):
        arr[i] = img = np.fromfile(batch / f"{oid}.rgb", dtype=np.uint8).reshape(size, size, 3)
        native = np.fromfile(batch / "native" / f"{oid}.rgb", dtype=np.uint8).reshape(h, w, 3)
        top, bottom, left, right = photo_stats.content_box(w, h, size, mode)
        rows.append(photo_stats.row(native, img[top:bottom, left:right], file_bytes))
    arr.flush()
    return rows


def main():
    args = common.parse(p, "02")
    stage = common.Stage(args.out, started=args.started)    # 02 began in the shell: its clock
    out, size = stage.dir, args.size
    ids, where, sizes, file_bytes = read_plan(out / ".rgb")
    # Chunks on every core, each writing its rows of the one store file, whose blocks are
    # reserved first: a full disk is an error here, not a SIGBUS in a worker.
    with common.disk_full_is_an_error(out):
        with common.atomic_path(out / "images.npy") as tmp:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ids), size, size, 3)).flush()
            with open(tmp, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            starts = range(0, len(ids), CHUNK)
            chunks = [[(oid, where[oid], sizes[oid], file_bytes[oid]) for oid in ids[k:k + CHUNK]] for k in starts]
            work = partial(pack, store=tmp, size=size, mode=args.mode)
            with ProcessPoolExecutor(args.jobs) as pool:
                rows = [r for part in pool.map(work, starts, chunks) for r in part]
        table = pd.DataFrame(np.stack(rows), columns=photo_stats.COLUMNS)
        table.insert(0, "object_id", ids)
        common.write_csv(out / "stats.csv", table, float_format="%.7g")
        common.write_text(out / "ids.txt", "\n".join(ids) + "\n")
        # the store's size and a sample's hash, checked wherever it is opened (pixels.check_store)
        common.write_json(out / "meta.json", {"size": size, "mode": args.mode, "count": len(ids),
                                              **common.store_record(out / "images.npy")})
    on_disk = common.size_text((out / "images.npy").stat().st_size)
    print(f"[02] store {out / 'images.npy'}: {len(ids)} x {size} x {size} x 3 uint8, {on_disk} on disk, "
          f"and stats.csv ({len(photo_stats.COLUMNS)} statistics per photo) [{time.time() - stage.started:.1f}s]")
    shutil.rmtree(out / ".rgb")
    stage.finish({"size": size, "mode": args.mode, "photos": len(ids)})


if __name__ == "__main__":
    main()
