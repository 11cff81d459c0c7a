"""Figure 2, jigsaw batches: puzzles/s of ours against the recipe's ImageMagick pre-rendering, and
the disk each needs for the real data.

Ours (what 03 does): the epoch's plan (image, view, permutation; pixels.random_perms with the
identity every 8th row, the recipe's 7 shuffled + 1) is drawn once on the host, as 03's
epoch_plan does, and its time counts; each batch is then made on the training device from the
store by pixels.to_input: view and tile shuffle move whole packed pixels, then one normalising pass.

The reference (the recipe): every puzzle pre-rendered to disk as a JPEG by one ImageMagick
`convert` per puzzle, from the view's pre-augmented JPEG: resize to S x S, cut the 3t x 3t square
into 9 tiles (-crop), put them back in the permuted order (+append rows, -append them) and encode
it. `--puzzles` of them (a seeded sample) are rendered, one convert per core at a time, and the
rate is extrapolated to an epoch of the real data: 9856 photos x 8 views x 8 permutations.

Disk for the real data: ours is the uint8 store (9856 x S x S x 3 bytes, written once); the
recipe's is the measured mean JPEG size of a rendered puzzle x the puzzles of one epoch.

At two sizes by default: the recipe's 224 px and PROFILE=cpu's (what trains on 2 cores here).

    python bench/jigsaw_batches.py --sizes 224,48 --puzzles 50 [--data DIR] [--device auto|cpu|cuda]
"""
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import benchlib
import pixels

# -----------------------------------------------------------------------------
PHOTOS = 64         # photos sampled (ours gathers from their store; the reference renders from them)
PUZZLES = 50        # puzzles the reference renders: a sample, extrapolated to an epoch

p = benchlib.batch_parser(__doc__, PHOTOS, "jigsaw")
p.add_argument("--puzzles", type=int, default=PUZZLES)
p.add_argument("--jobs", type=int, default=os.cpu_count(), help="convert processes at a time (one per core)")

def convert_cmd(src, dst, size, perm):
    """One recipe-style puzzle: tiles of the top-left 3t x 3t square, tile perm[i] at position i."""
    t = size // 3
    cmd = ["convert", str(src), "-resize", f"{size}x{size}!", "-crop", f"{3 * t}x{3 * t}+0+0", "+repage",
           "-crop", f"{t}x{t}", "+repage"]
    for r in range(3):
        cmd += ["(", *[x for i in perm[3 * r: 3 * r + 3] for x in ("-clone", str(i))], "+append", ")"]
    return cmd + ["-delete", "0-8", "-append", str(dst)]


def ref_rate(dirs, ids, size, n, jobs, out, rng):
    out.mkdir(parents=True, exist_ok=True)
    cmds = []
    for k in range(n):
        d, i = dirs[rng.integers(len(dirs))], ids[rng.integers(len(ids))]
        perm = rng.permutation(9)
        cmds.append(convert_cmd(d / f"{i}.jpg", out / f"puzzle_{k:04d}.jpg", size, perm))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda c: subprocess.run(c, check=True), cmds))
    seconds = time.perf_counter() - t0
    sizes = [f.stat().st_size for f in out.glob("puzzle_*.jpg")]
    return n / seconds, sum(sizes) / len(sizes)


def ours_rate(store, vidx, batch, device, batches=benchlib.OURS_BATCHES, seed=0):
    import torch
    cuda = device.type == "cuda"
    g = torch.Generator().manual_seed(seed)
    n = batch * (batches + 1)

    def plan():                            # 03's epoch_plan, for these puzzles: on the host
        rows = torch.randint(0, store.shape[0], (n,), generator=g)
        views = torch.randint(0, 8, (n,), generator=g)
        perms = pixels.random_perms(n, g, identity_every=benchlib.RECIPE_PERMS)
        return torch.cat([rows[:, None], views[:, None], perms], 1)

    def one(rows):
        rows = rows.to(device, non_blocking=True)
        return pixels.to_input(store[rows[:, 0]], rows[:, 1], vidx, channels_last=cuda, perms=rows[:, 2:])

    one(plan()[:batch])                    # warm-up
    todo = []

    def step():                            # a fresh plan of `batches` batches when one runs out
        if not todo:
            todo.extend(plan()[batch:].split(batch))
        one(todo.pop(0))

    return benchlib.timed_rate(step, batch, device, batches)


def main():
    args = p.parse_args()
    import numpy as np
    import training
    training.configure_threads()
    device = benchlib.pick_device(args.device)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp).resolve()
        raw, kind, ids, dirs = benchlib.recipe_inputs(args, tmp)
        benchlib.note(f"{args.prefix}: {len(ids)} {kind} photos, batch {args.batch}; reference: {args.puzzles} "
                      f"puzzles by convert, {args.jobs} at a time; " + benchlib.threads_note(device))
        for size in map(int, args.sizes.split(",")):
            store, ids, vidx = benchlib.resident_store(raw, ids, size, tmp, device)
            rng = np.random.default_rng(0)
            ours, ref, jpeg_bytes = [], [], []
            for r in range(args.rounds):
                ours.append(ours_rate(store, vidx, args.batch, device, args.batches, seed=r))
                if benchlib.have_imagemagick():
                    rate, mean_bytes = ref_rate(dirs, ids, size, args.puzzles, args.jobs,
                                                tmp / f"puzzles{size}_{r}", rng)
                    ref.append(rate)
                    jpeg_bytes.append(mean_bytes)
            report(args.prefix, size, ours, ref, jpeg_bytes)
            del store


def report(prefix, size, ours, ref, jpeg_bytes):
    import numpy as np
    epoch = benchlib.REAL_PHOTOS * benchlib.RECIPE_VIEWS * benchlib.RECIPE_PERMS
    disk_ours = benchlib.REAL_PHOTOS * size * size * 3
    tag = f"{prefix}_{size}px"
    benchlib.emit(f"{tag}_ours", max(ours), "puzzles/s")
    if ref:
        benchlib.emit(f"{tag}_recipe_prerender", max(ref), "puzzles/s")
        benchlib.emit_ratio(tag, max(ours) / max(ref))
    benchlib.emit(f"{tag}_epoch_ours", epoch / max(ours) / 3600, "h")
    if ref:
        benchlib.emit(f"{tag}_epoch_recipe_prerender", epoch / max(ref) / 3600, "h")
    benchlib.emit(f"{tag}_disk_ours", disk_ours / 1e9, "GB")
    if ref:
        disk_ref = float(np.mean(jpeg_bytes)) * epoch
        benchlib.emit(f"{tag}_disk_recipe_per_epoch", disk_ref / 1e9, "GB")
        benchlib.emit_ratio(f"{tag}_disk", disk_ref / disk_ours)
    else:
        benchlib.note(f"{prefix}: no ImageMagick here: the recipe's pre-rendering was not measured")


if __name__ == "__main__":
    main()
