"""Stage 00: the embedded default data set, generated deterministically from a seed.

Reads nothing. Writes a raw-data directory in exactly the competition's schema:
train.csv, test.csv, materials.csv, techniques.csv, sample_submission.csv, photos/{id}.jpg.

    python 00_demo_data.py --out work/00_demo_data [--train 480 --test 240 --seed 11]

It is learnable the way the real task is: the era shows in the picture (paper tone, palette,
line and hatching density, smooth photographic gradients for the 19th century), a series shares
its style and era, sorting_date agrees with target (with spikes at 1600 and 1700), and
materials/techniques follow the era, for train objects only.
"""
import argparse
import hashlib
import time

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

import common

# -----------------------------------------------------------------------------
CLASS_SHARE = np.array([475, 896, 1511, 1055]) / 3937    # the real class balance
SERIES_SIZES = ([1] * 30 + [2] * 3 + [3, 4])               # mostly singletons, as in the real data
ERA_YEARS = ((1440, 1600), (1601, 1700), (1701, 1800), (1801, 1991))
BOUNDARY_SPIKE = {0: (1600, 0.25), 1: (1700, 0.18)}        # catalogued "c. 1600" / "c. 1700"
# Era styles: paper tone (RGB), ink tone, strokes per image, hatching spacing, photographic share.
STYLES = {
    0: dict(paper=(214, 196, 150), ink=(120, 60, 40), strokes=(6, 14), hatch=0, photo=0.0),
    1: dict(paper=(226, 214, 182), ink=(70, 50, 35), strokes=(20, 40), hatch=9, photo=0.0),
    2: dict(paper=(236, 234, 226), ink=(25, 25, 35), strokes=(40, 80), hatch=4, photo=0.05),
    3: dict(paper=(200, 190, 170), ink=(60, 55, 50), strokes=(4, 12), hatch=0, photo=0.7),
}
MATERIALS = {   # per era: (name, probability)
    0: [("paper", .9), ("ink", .5), ("chalk", .5), ("parchment (animal material)", .15)],
    1: [("paper", .95), ("ink", .6), ("chalk", .45), ("pencil", .1)],
    2: [("paper", .95), ("ink", .35), ("chalk", .4), ("pencil", .35), ("watercolor (paint)", .2)],
    3: [("paper", .9), ("pencil", .5), ("watercolor (paint)", .3), ("graphite (mineral)", .15),
        ("deck paint", .1), ("prepared paper", .1)],
}
TECHNIQUES = {
    0: [("pen", .6), ("brush", .3)],
    1: [("pen", .55), ("brush", .55)],
    2: [("brush", .6), ("pen", .35), ("counterproof", .02)],
    3: [("brush", .5), ("pen", .1), ("pencil", .05)],
}

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--out", required=True, help="raw-data directory to write")
p.add_argument("--train", type=int, default=480, help="train objects (real: 3937)")
p.add_argument("--test", type=int, default=240, help="test objects (real: 5919)")
p.add_argument("--seed", type=int, default=11, help="everything follows from it")
p.add_argument("--noise", type=float, default=0.15, help="share of photos drawn in a neighbouring era's style")


def object_id(rng):
    return "".join(rng.choice(list("0123456789abcdef"), size=20))


def sorting_date(rng, era):
    lo, hi = ERA_YEARS[era]
    if era in BOUNDARY_SPIKE and rng.random() < BOUNDARY_SPIKE[era][1]:
        return BOUNDARY_SPIKE[era][0]
    return int(rng.integers(lo, hi + 1))


def series_style(rng, era):
    """A series' shared look: its era's style, jittered once for the whole series."""
    base = STYLES[era]
    jitter = rng.normal(0, 8, 3)
    return dict(
        paper=tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(base["paper"], jitter)),
        ink=tuple(int(np.clip(c + j / 2, 0, 255)) for c, j in zip(base["ink"], jitter)),
        strokes=base["strokes"], hatch=base["hatch"], photo=rng.random() < base["photo"],
        aspect=float(rng.choice([0.16, 0.5, 0.72, 0.8, 1.0, 1.33, 1.5])) * rng.uniform(0.9, 1.1),
    )


def draw_photo(rng, style):
    """One photo: long side 224, the series' aspect, the series' style, fresh randomness."""
    aspect = style["aspect"] * rng.uniform(0.95, 1.05)
    w, h = (224, max(35, min(224, round(224 / aspect)))) if aspect >= 1 else \
        (max(35, min(224, round(224 * aspect))), 224)
    paper = np.array(style["paper"], dtype=float)
    if style["photo"]:      # a photograph: smooth sepia/grey gradients and soft blobs
        yy, xx = np.mgrid[0:h, 0:w] / 224.0
        a, b = rng.uniform(-1, 1, 2)
        tone = 0.55 + 0.35 * np.sin(3 * (a * xx + b * yy) + rng.uniform(0, 6))
        for _ in range(4):
            cx, cy, r = rng.uniform(0, w / 224), rng.uniform(0, h / 224), rng.uniform(.1, .4)
            tone -= 0.3 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r ** 2)
        arr = np.clip(tone[..., None] * paper[None, None] * 1.1, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr).filter(ImageFilter.GaussianBlur(1.5))
    else:                   # a drawing or print: paper with strokes and hatching in ink
        grain = rng.normal(0, 6, (h, w, 1))
        img = Image.fromarray(np.clip(paper[None, None] + grain, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        ink = tuple(int(c) for c in style["ink"])
        for _ in range(int(rng.integers(*style["strokes"]))):
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            pts = [(x0, y0)]
            for _ in range(int(rng.integers(2, 6))):
                x0, y0 = x0 + rng.normal(0, 20), y0 + rng.normal(0, 20)
                pts.append((x0, y0))
            d.line(pts, fill=ink, width=int(rng.integers(1, 3 if style["hatch"] else 5)))
        if style["hatch"]:
            x0, y0 = rng.uniform(0, w * .6), rng.uniform(0, h * .6)
            bw, bh = rng.uniform(10, max(11, w * .5)), rng.uniform(10, max(11, h * .5))
            for off in np.arange(0, bw + bh, style["hatch"]):
                d.line([(x0 + off, y0), (x0 + off - bh, y0 + bh)], fill=ink, width=1)
    return img


def main():
    args = common.parse(p, "00")
    stage = common.Stage(args.out)
    out = stage.dir
    photos = out / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    rows, seen = [], set()
    for split, n in (("train", args.train), ("test", args.test)):
        while sum(r["split"] == split for r in rows) < n:
            era = int(rng.choice(4, p=CLASS_SHARE))
            style, series = series_style(rng, era), object_id(rng)
            for _ in range(int(rng.choice(SERIES_SIZES))):
                oid = object_id(rng)
                if oid in seen:
                    continue
                seen.add(oid)
                drawn_era = era
                if rng.random() < args.noise:       # the picture does not always tell the era
                    drawn_era = int(np.clip(era + rng.choice([-1, 1]), 0, 3))
                look = style if drawn_era == era else series_style(rng, drawn_era)
                draw_photo(rng, look).save(photos / f"{oid}.jpg", quality=90)
                rows.append(dict(split=split, object_id=oid, art_series_id=series, target=era,
                                 sorting_date=sorting_date(rng, era)))
    df = pd.DataFrame(rows)
    train = df[df.split == "train"].head(args.train)
    test = df[df.split == "test"].head(args.test)
    for oid in set(df.object_id) - set(train.object_id) - set(test.object_id):
        (photos / f"{oid}.jpg").unlink()    # a series cut short at the size limit

    names = {"materials.csv": [], "techniques.csv": []}
    for oid, era in zip(train.object_id, train.target):
        for file, table in (("materials.csv", MATERIALS), ("techniques.csv", TECHNIQUES)):
            for name, prob in table[era]:
                if rng.random() < prob:
                    names[file].append((name, oid))

    common.write_csv(out / "train.csv", train[["object_id", "sorting_date", "art_series_id", "target"]])
    common.write_csv(out / "test.csv", test[["object_id"]])
    for file, pairs in names.items():
        common.write_csv(out / file, pd.DataFrame(pairs, columns=["name", "object_id"]))
    common.write_csv(out / "sample_submission.csv", pd.DataFrame({"target": np.zeros(len(test), int)}))
    digest = hashlib.sha256((out / "train.csv").read_bytes()).hexdigest()[:12]
    stage.finish(vars(args))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"demo data: {len(train)} train / {len(test)} test objects, {common.size_text(size)} "
          f"in {out} (seed {args.seed}, train.csv sha256 {digest}) [{time.time() - stage.started:.1f}s]")


if __name__ == "__main__":
    main()
