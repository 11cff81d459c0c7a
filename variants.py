"""The fine-tune variants the budget study measured and no profile adopted: each training view
shifted by a few pixels, mixup, photo inputs (the photo's shape, or all of 02's statistics,
given to the head beside the pooled features), and crops (the network sees C x C crops of a
store at the photos' own resolution, not the whole photo resized). docs/profiles.md and
docs/crops.md have their rows; they stay so that the studies reproduce their tables. Every
profile turns them off.

04_finetune.py knows them through a few calls: `add_options` (its command line), `batches` (its
training batches: the recipe's own unless a variant is on) and `predict_views` (its
evaluator's, and 05's, outputs of a network). A network trained with photo inputs needs them
wherever it predicts: `photo_inputs`; one trained on crops, its photos' crop places: `crop_boxes`.
"""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import common
import inference
import photo_stats
import pixels

PHOTO_INPUTS = ("none", "shape", "stats")
SHAPE_COLUMNS = ("width", "height", "aspect")
LOG_COLUMNS = (*SHAPE_COLUMNS, "file_bytes", "bytes_per_pixel")     # sizes: standardised in logs
MIXUP_UNIT = 1_000_000  # mixup weights travel in the (integer) epoch plan, in millionths


def add_options(p):
    """04's options of the variants (defaults from the profile: all off)."""
    p.add_argument("--shift", type=int, default=None, choices=range(0, 17), metavar="0-16",
                   help="translate each training view by up to this many pixels, the border mirrored "
                        "(profile; the recipe: 0)")
    p.add_argument("--mixup", type=float, default=None,
                   help="mixup: each training image blended with another of the epoch, weight ~ Beta(a, a), "
                        "the losses blended alike; 0: off (profile; the recipe: 0)")
    p.add_argument("--crop", type=int, default=None, metavar="C",
                   help="train on C x C crops of the store, one at a random place within the photo per "
                        "view (a store at the photos' resolution: 02 --size 224 --mode pad); predict the "
                        "mean over a grid of --eval-crops crops per side; 0: the whole photo (profile)")
    p.add_argument("--eval-crops", type=int, default=3, choices=range(1, 9), metavar="1-8",
                   help="with --crop: the prediction's grid, this many crops along each side (default 3)")
    p.add_argument("--photo-inputs", default=None, choices=PHOTO_INPUTS,
                   help="what the head gets besides the pixels: none (the recipe), shape (the photo's "
                        "size and aspect), stats (all of 02's per-photo statistics) (profile)")


def photo_inputs(store_dir, wanted, kind):
    """(N, K) float32: what a network with photo inputs gets besides the pixels of the objects
    `wanted`, from 02's per-photo statistics (stats.csv): `shape`, the photo's log width, height
    and aspect (the square resize hides them); `stats`, all of photo_stats.COLUMNS
    (sizes and aspect in logs). Each column is standardised over every photo of the store
    (train and test alike: no labels), an unknown value (NaN) is its mean; None for `none`."""
    if kind == "none":
        return None
    table = store_stats(store_dir, wanted, f"photo inputs ({kind})")
    if kind == "shape":
        table = table[list(SHAPE_COLUMNS)]
    for c in LOG_COLUMNS:
        if c in table:
            table[c] = np.log(table[c])
    table = ((table - table.mean()) / table.std().replace(0, 1).fillna(1)).fillna(0)
    return torch.from_numpy(table.loc[list(wanted)].to_numpy(np.float32))


def store_stats(store_dir, wanted, who):
    """02's per-photo statistics of a store (stats.csv, by object_id: every photo of the store),
    which must hold each object of `wanted`; `who` needs them (for the error)."""
    path = Path(store_dir) / "stats.csv"
    if not path.exists():
        common.fail(f"{path} is missing: {who} need 02's per-photo statistics; rerun 02 into a new WORK")
    table = pd.read_csv(path, dtype={"object_id": str}).set_index("object_id")
    missing = [w for w in wanted if w not in table.index]
    if missing:
        common.fail(f"{path}: no statistics for {common.show_ids(missing)}")
    return table


def batches(args, recipe, object_ids):
    """The training batches 04 fits with: `recipe` itself (every profile; photo inputs are its
    `extra`), or crops, shifted views and mixup built on it. `recipe` (04's Batches) gives
    plan(epoch, g) -> rows (row, view), pixels(rows, offsets) -> x, extra(rows) -> the photo
    inputs or None, forward(net, x, extra) -> outputs, losses(outputs, rows) -> (B, heads);
    object_ids: the photos of its rows."""
    if args.crop and (args.shift or args.mixup):
        common.fail("--crop takes neither --shift nor --mixup")
    if args.crop:
        return Cropped(args, recipe, crop_boxes(args.hvr, object_ids, args.crop))
    return Varied(args, recipe) if args.shift or args.mixup else recipe


# ---- crops ----------------------------------------------------------------------------------
def crop_boxes(store_dir, wanted, crop):
    """(N, 2, 2) long: for each photo of `wanted`, the first and last top-left corner (y, x) a
    C x C crop may take in the store: within the photo's own pixels (photo_stats.content_box:
    02 --mode pad centres it on an edge-replicated square; at the photos' own size it is there
    exactly as decoded). Along a side shorter than C, the crop is centred on the photo."""
    store_dir = Path(store_dir)
    meta = json.loads((store_dir / "meta.json").read_text())
    size = meta["size"]
    if crop > size:
        common.fail(f"--crop {crop}: larger than the store's {size} x {size} photos ({store_dir})")
    table = store_stats(store_dir, wanted, f"crops (--crop {crop})")
    boxes = np.array([photo_stats.content_box(w, h, size, meta.get("mode", "stretch"))
                      for w, h in table.loc[list(wanted), ["width", "height"]].itertuples(index=False)])
    start, end = boxes[:, [0, 2]], boxes[:, [1, 3]]        # (y, x) of the photo's first and past-last pixel
    first, last = start.copy(), end - crop
    short = last < first
    first[short] = last[short] = (start + (end - start - crop) // 2)[short]
    first, last = np.clip(first, 0, size - crop), np.clip(last, 0, size - crop)
    return torch.from_numpy(np.stack([first, last], 1).astype(np.int64))


def grid_origins(boxes, per_side):
    """(N, per_side**2, 2): the top-left corners of an even per_side x per_side grid of crops
    within each photo's box (crop_boxes), from corner to corner."""
    steps = torch.linspace(0, 1, per_side, dtype=torch.float64) if per_side > 1 else torch.tensor([0.5], dtype=torch.float64)
    first, last = boxes[:, 0].double(), boxes[:, 1].double()         # (N, 2): y, x
    along = (first[:, None] + steps[None, :, None] * (last - first)[:, None]).round().long()   # (N, K, 2)
    ys, xs = along[:, :, 0], along[:, :, 1]
    return torch.stack([ys[:, :, None].expand(-1, -1, per_side), xs[:, None, :].expand(-1, per_side, -1)], -1).reshape(
        len(boxes), per_side * per_side, 2)


class Cropped:
    """The recipe's batches (rows, views, losses) on crops: a row of the plan is row, view, y, x,
    the crop's corner drawn uniformly within the photo's box after the epoch's order (a resumed
    run draws the same)."""

    def __init__(self, args, recipe, boxes):
        self.recipe, self.boxes = recipe, boxes
        self.vidx = pixels.view_index(args.crop).to(recipe.device)

    def plan(self, epoch, g):
        plan = self.recipe.plan(epoch, g)
        box = self.boxes[plan[:, 0]]
        span = (box[:, 1] - box[:, 0] + 1).double()
        corner = box[:, 0] + (torch.rand(len(plan), 2, generator=g, dtype=torch.float64) * span).long()
        return torch.cat([plan, corner], 1)

    def loss(self, net, rows):
        x = pixels.to_input(self.recipe.store[self.recipe.pos[rows[:, 0]]], rows[:, 1], self.vidx,
                            channels_last=True, crops=rows[:, 2:4])
        out = self.recipe.forward(net, x, self.recipe.extra(rows))
        return self.recipe.losses(out, rows).sum(), {}


def predict_views(config, model, px, device, batch, views=range(8), *, precision, extra=None, boxes=None):
    """(N, V, D): inference.predict_views of a network, or for one trained on crops (config's
    crop), of its grid of crops within each photo (boxes: crop_boxes of px's rows), each view's
    outputs averaged over the photo's crops."""
    size = math.isqrt(px.shape[1])
    if not config.get("crop"):
        return inference.predict_views(model, px, pixels.view_index(size).to(device), device, batch, views,
                                       precision=precision, extra=extra)
    corners = grid_origins(boxes, config.get("eval_crops", 3)).to(device)     # (N, K, 2)
    n, k = corners.shape[:2]
    vidx = pixels.view_index(config["crop"]).to(device)
    step = max(batch // k, 1)             # photos whose crops are cut at once: about a batch of them
    outs = []
    for start in range(0, n, step):
        m = min(step, n - start)
        window = pixels.crop_index(vidx, torch.zeros(m * k, dtype=torch.long, device=device),
                                   corners[start:start + m].reshape(-1, 2), size)     # each crop as it is
        crops = px[start:start + m].repeat_interleave(k, 0).gather(1, window)        # (m*K, C*C) packed
        more = None if extra is None else extra[start:start + m].repeat_interleave(k, 0)
        out = inference.predict_views(model, crops, vidx, device, batch, views, precision=precision, extra=more)
        outs.append(out.view(m, k, *out.shape[1:]).mean(1))
    return torch.cat(outs)


class Varied:
    """The recipe's batches with shifted views and mixup. Both are drawn into the epoch's plan
    after its order (a run without them sees the same batches; a resumed run the same draws):
    a row of the plan is row, view[, dy, dx][, the partner's row, view[, dy, dx], weight]."""

    def __init__(self, args, recipe):
        self.shift, self.mixup, self.recipe = args.shift, args.mixup, recipe
        self.width = 4 if self.shift else 2        # plan columns of one sample

    def plan(self, epoch, g):
        plan = self.recipe.plan(epoch, g)
        if self.shift:
            plan = torch.cat([plan, torch.randint(-self.shift, self.shift + 1, (len(plan), 2), generator=g)], 1)
        if self.mixup:
            partner = plan[torch.randperm(len(plan), generator=g)]
            rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=g)))
            lam = torch.from_numpy(np.round(rng.beta(self.mixup, self.mixup, len(plan)) * MIXUP_UNIT).astype(np.int64))
            plan = torch.cat([plan, partner, lam[:, None]], 1)
        return plan

    def inputs(self, rows):
        x = self.recipe.pixels(rows, rows[:, 2:4] if self.shift else None)
        return x, self.recipe.extra(rows)

    def loss(self, net, rows):
        x, more = self.inputs(rows)
        if not self.mixup:
            return self.recipe.losses(self.recipe.forward(net, x, more), rows).sum(), {}
        other = rows[:, self.width:2 * self.width]
        lam = rows[:, -1].float().div_(MIXUP_UNIT)
        x2, more2 = self.inputs(other)
        x = x.mul_(lam.view(-1, 1, 1, 1)).add_(x2.mul_((1 - lam).view(-1, 1, 1, 1)))
        if more is not None:
            more = lam[:, None] * more + (1 - lam[:, None]) * more2
        out = self.recipe.forward(net, x, more)
        lam = lam[:, None]
        return (lam * self.recipe.losses(out, rows) + (1 - lam) * self.recipe.losses(out, other)).sum(), {}

