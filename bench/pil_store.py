"""Stage 02's image store made with PIL, for a benchmark machine without ImageMagick (a bare GPU
image may have none and no way to install it). The files of 02_hvr_augment.sh but
its per-photo statistics (stats.csv: only 06 and photo inputs read it): images.npy
(N, S, S, 3) uint8, ids.txt, meta.json (with "decoder": "PIL"), provenance.json, DONE.

The pixels differ slightly from ImageMagick's resize (PIL's Lanczos filter against ImageMagick's
default), which changes no speed figure; a pipeline run must use 02_hvr_augment.sh. On the demo
photos at 24 px (the smoke profile's) they differ by 0.5 of 255 levels on average, 1.2 at most
in one photo's mean; tests/test_bench.py holds them under 1 and 3.

    python bench/pil_store.py --photos DATA/photos --ids WORK/00_validate/photos.csv --out WORK/02_hvr --size 224
"""
import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository's `common`
import common  # noqa: E402  (benchlib imports this module: importing benchlib here would be a cycle)

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--photos", required=True)
p.add_argument("--ids", required=True, help="CSV whose first column is object_id (02's --ids)")
p.add_argument("--out", required=True)
p.add_argument("--size", type=int, required=True)
p.add_argument("--jobs", type=int, default=os.cpu_count())


def decode(path, size):
    import numpy as np
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.LANCZOS), dtype=np.uint8)


def pil_store(photos, ids, out, size, jobs=None):
    """Write the store for `ids` under out; returns out."""
    import numpy as np
    stage = common.Stage(out)
    out = stage.dir
    paths = [str(Path(photos) / f"{i}.jpg") for i in ids]
    with common.atomic_path(out / "images.npy") as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ids), size, size, 3))
        with ProcessPoolExecutor(jobs or os.cpu_count()) as pool:
            for i, img in enumerate(pool.map(decode, paths, [size] * len(paths), chunksize=64)):
                arr[i] = img
        arr.flush()
        del arr
    common.write_text(out / "ids.txt", "\n".join(ids) + "\n")
    common.write_json(out / "meta.json", {"size": size, "mode": "stretch", "count": len(ids), "decoder": "PIL"})
    stage.finish({"size": size, "photos": len(ids), "decoder": "PIL"})
    return out


def main():
    args = p.parse_args()
    lines = Path(args.ids).read_text().splitlines()[1:]
    ids = [line.split(",")[0] for line in lines if line.strip()]
    t0 = time.time()
    pil_store(args.photos, ids, args.out, args.size, args.jobs)
    print(f"[02 PIL] store {args.out}: {len(ids)} x {args.size} px [{time.time() - t0:.1f}s]", file=sys.stderr)


if __name__ == "__main__":
    main()
