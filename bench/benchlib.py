"""What the bench scripts share: the output lines, where the photos come from, a small image store
built by the real stage 02, the recipe's 8 pre-augmented JPEG directories, and timers.

Every figure is one line `name: value unit`; a comparison with the recipe's way, measured in the
same run on the same machine, adds `name_vs_ref: ratio x`, where the ratio says how many times
better ours is (a rate: ours / ref; a size or a time: ref / ours).
"""
import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))             # `import common, pixels` as the stage scripts do

import common      # noqa: E402  (after the path)

REAL_DATA_ENV = "ATMA11_DATA"            # where the real competition files are (also the tests')
REAL_PHOTOS = 9856                       # train + test photos of the competition
RECIPE_VIEWS = 8                         # the 8 symmetries of the square (SEED.md step 2)
RECIPE_PERMS = 8                         # per image-view per epoch: 7 shuffled + the identity
# Make variables a user may have exported: a bench's own make sees none of them.
MAKE_ENV_DROP = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS",
                 "DATA", "WORK", "GPUS", "PROFILE", "FOLD", "TASK", "INSTALLER")
# ImageMagick operators of each view, applied in the recipe's order h, v, r.
VIEW_OPS = {"h": ["-flop"], "v": ["-flip"], "r": ["-rotate", "90"]}

# Figures 1 and 2 (batches of ours against the recipe's way of making them).
BATCH_SIZES = (common.PROFILES["full"]["02"]["size"],     # the recipe's 224
               common.PROFILES["cpu"]["02"]["size"])      # what PROFILE=cpu trains at here
BATCH = 256         # the recipe's batch size
ROUNDS = 2          # alternating passes per side; the best counts
OURS_BATCHES = 8    # timed batches of ours per pass at least (and 1 s at least), after a warm-up one


# -----------------------------------------------------------------------------
def fmt(value):
    if isinstance(value, str):
        return value
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def emit(name, value, unit):
    print(f"{name}: {fmt(value)} {unit}", flush=True)


def emit_ratio(name, better_factor):
    emit(f"{name}_vs_ref", better_factor, "x")


def note(text):
    """Context for a reader (what was measured, on what); stderr keeps stdout to the figures."""
    print(f"# {text}", file=sys.stderr, flush=True)



def scores_table(rows, first="model"):
    """The markdown table of scored rows ({first: name, "pooled": RMSE, "folds": [RMSE per fold],
    and any other columns as they are}), as 06's cv.csv scores: pooled, then fold by fold."""
    import pandas as pd
    import reporting
    import stacking as stack
    table = pd.DataFrame([{first: r["name"], **{k: v for k, v in r.items() if k not in ("name", "folds")},
                           **{f"fold {k}": v for k, v in zip(stack.K, r["folds"])}} for r in rows])
    return reporting.markdown(table)


def publish(table, path, title, intro):
    """Print a study's table and, with a `path` (its --write), write its docs page there: the
    title, the command that wrote it (this script and its arguments), what it measures, the table."""
    print(table)
    if path:
        script = Path(sys.argv[0]).resolve()
        script = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
        command = " ".join(["python", str(script), *sys.argv[1:]])
        common.write_text(Path(path), "\n".join([f"# {title}", "", "```", command, "```", "", intro, "", table]))

# -----------------------------------------------------------------------------
def fold_labels(work):
    """A WORK's 01 as 06 reads it: (the folds, each train row's out-of-fold fold, its era)."""
    import stacking as stack
    folds, oof_fold = stack.read_folds(Path(work) / "01_sgkfold")
    y = folds["all"]["train"].set_index("object_id")["target"].loc[oof_fold.index]
    return folds, oof_fold, y


def statistics_inputs(work):
    """What 06's meta_only sees in a WORK with 01 and 02 done: (the folds, each train row's
    out-of-fold fold, 02's statistics (--meta on) and the era, both by train row)."""
    import stacking as stack
    folds, oof_fold, y = fold_labels(work)
    meta = stack.meta_table(Path(work) / "02_hvr", "on").loc[oof_fold.index]
    return folds, oof_fold, meta, y


def oof_scores(pred, y, oof_fold):
    """(pooled RMSE, [RMSE of each fold's out-of-fold rows]) of out-of-fold predictions, as
    06's cv.csv scores them."""
    import stacking as stack
    pooled = pred.loc[y.index]
    return stack.rmse(pooled, y), [stack.rmse(pooled[oof_fold == k], y[oof_fold == k]) for k in stack.K]


def real_data_dir(data=None):
    """The real competition directory: `data` when it holds train.csv and photos/, else
    $ATMA11_DATA, else data/raw (make's default DATA); None when none exists."""
    for cand in (data, os.environ.get(REAL_DATA_ENV), ROOT / "data" / "raw"):
        if cand and (Path(cand) / "train.csv").exists() and (Path(cand) / "photos").is_dir():
            return Path(cand)
    return None


def photo_source(data, tmp, python=sys.executable, demo_train=128, demo_test=48):
    """(raw data dir, 'real' | 'demo'): the real photos when present, else demo data that
    00_demo_data.py generates under tmp."""
    real = real_data_dir(data)
    if real:
        return real, "real"
    out = Path(tmp) / "demo_raw"
    if not (out / "DONE").exists():
        subprocess.run([python, str(ROOT / "00_demo_data.py"), "--out", str(out), "--train",
                        str(demo_train), "--test", str(demo_test)], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    return out, "demo"


def sample_ids(photos_dir, n, seed=0):
    """n photo ids, a seeded sample of the directory (all of them when it holds fewer)."""
    import numpy as np
    ids = sorted(p.stem for p in Path(photos_dir).glob("*.jpg"))
    if not ids:
        common.fail(f"{photos_dir}: no photos")
    pick = np.random.default_rng(seed).permutation(len(ids))[: min(n, len(ids))]
    return [ids[i] for i in sorted(pick)]


def have_imagemagick():
    return bool(shutil.which("mogrify") and shutil.which("convert"))


def build_store(photos_dir, ids, size, out, python=sys.executable):
    """Decode and resize `ids` once with the real stage 02 (ImageMagick; bench/pil_store.py where
    it is missing) into out/; returns (uint8 array (N, S, S, 3), ids in store order, seconds)."""
    import numpy as np
    out = Path(out)
    t0 = time.perf_counter()
    if have_imagemagick():
        ids_csv = out.parent / f"{out.name}_ids.csv"
        ids_csv.write_text("object_id\n" + "\n".join(ids) + "\n")
        subprocess.run([str(ROOT / "02_hvr_augment.sh"), "--photos", str(photos_dir), "--ids",
                        str(ids_csv), "--out", str(out), "--size", str(size), "--python", python],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    else:
        from pil_store import pil_store
        pil_store(photos_dir, ids, out, size)
    seconds = time.perf_counter() - t0
    return np.load(out / "images.npy"), (out / "ids.txt").read_text().split(), seconds


def write_recipe_views(photos_dir, ids, out, jobs=None):
    """The recipe's 8x augmentation on disk: out/<view>/<id>.jpg for the 8 views, each a JPEG
    that ImageMagick re-encoded after -flop / -flip / -rotate 90 (identity: the original file).
    Returns the 8 directories in pixels.VIEWS order."""
    import pixels       # torch: only where needed
    out = Path(out)
    srcs = [str(Path(photos_dir) / f"{i}.jpg") for i in ids]
    dirs = []

    def one(view):
        d = out / view
        d.mkdir(parents=True, exist_ok=True)
        if view == "id":
            for s in srcs:
                shutil.copy(s, d)
        elif have_imagemagick():
            ops = [o for k in "hvr" if k in view for o in VIEW_OPS[k]]
            subprocess.run(["mogrify", "-path", str(d), *ops, *srcs], check=True)
        else:                  # no ImageMagick: the same transposes with PIL, also re-encoded
            from PIL import Image
            ops = [{"h": Image.FLIP_LEFT_RIGHT, "v": Image.FLIP_TOP_BOTTOM, "r": Image.ROTATE_270}[k]
                   for k in "hvr" if k in view]
            for s in srcs:
                with Image.open(s) as im:
                    for op in ops:
                        im = im.transpose(op)
                    im.save(d / Path(s).name, quality=92)
        return d

    with ThreadPoolExecutor(jobs or os.cpu_count()) as pool:
        dirs = list(pool.map(one, pixels.VIEWS))
    return dirs


def threads_note(device):
    import torch
    return (f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")


class Timer:
    """Wall time of a block; on CUDA it synchronises first and last, so queued work counts."""

    def __init__(self, device="cpu"):
        self.cuda = str(device).startswith("cuda")

    def __enter__(self):
        self._sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds = time.perf_counter() - self.t0

    def _sync(self):
        if self.cuda:
            import torch
            torch.cuda.synchronize()


MIN_SECONDS = 1.0   # a timed loop runs at least this long: a 48 px batch takes milliseconds


def timed_rate(step, per_step, device, min_steps, min_seconds=MIN_SECONDS):
    """Items/s of step() (each call makes `per_step` items), called at least `min_steps` times
    and for at least `min_seconds`, whole calls only; on CUDA synchronised at both ends."""
    steps = 0
    with Timer(device) as t:
        while steps < min_steps or time.perf_counter() - t.t0 < min_seconds:
            step()
            steps += 1
    return steps * per_step / t.seconds


def pick_device(name):
    import torch
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# -----------------------------------------------------------------------------
def batch_parser(doc, photos, prefix):
    """The options figures 1 and 2 share; each script adds those of its reference."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--data", default=None, help="raw data dir with photos/ (else $ATMA11_DATA, data/raw, demo)")
    p.add_argument("--sizes", default=",".join(map(str, BATCH_SIZES)), help="comma-separated S")
    p.add_argument("--photos", type=int, default=photos, help="photos sampled")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--batches", type=int, default=OURS_BATCHES, help="timed batches of ours per pass, at least")
    p.add_argument("--device", default="auto", help="where ours runs: auto (cuda when present), cpu, cuda")
    p.add_argument("--tmp", default=None, help="scratch directory (default: a temporary one, removed)")
    p.add_argument("--prefix", default=prefix, help="name prefix of the printed lines")
    return p


def recipe_inputs(args, tmp):
    """(raw dir, 'real' | 'demo', sampled ids, the recipe's 8 view directories of them)."""
    raw, kind = photo_source(args.data, tmp)
    ids = sample_ids(raw / "photos", args.photos)
    return raw, kind, ids, write_recipe_views(raw / "photos", ids, Path(tmp) / "views")


def resident_store(raw, ids, size, tmp, device):
    """Ours at size S: (the store of `ids` as pixels.to_pixels on `device`, ids in its row
    order, pixels.view_index on `device`), from the real stage 02."""
    import pixels
    images, ids, _ = build_store(raw / "photos", ids, size, Path(tmp) / f"store{size}")
    return pixels.to_pixels(images, device), ids, pixels.view_index(size).to(device)
