"""The fine-tune variants the budget study measured and no profile adopted: each training view
shifted by a few pixels, mixup, and photo inputs (the photo's shape, or all of 02's statistics,
given to the head beside the pooled features). docs/profiles.md has their rows; they stay so
that `make study` reproduces its table. Every profile turns them off.

04_finetune.py knows them through two calls only: `add_options` (its command line) and `batches`
(its training batches: the recipe's own unless a variant is on). A network trained with photo
inputs needs them wherever it predicts (04's evaluator, 05): `photo_inputs`.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import common

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
    path = Path(store_dir) / "stats.csv"
    if not path.exists():
        common.fail(f"{path} is missing: photo inputs ({kind}) need 02's per-photo statistics; "
                    f"rerun 02 into a new WORK")
    table = pd.read_csv(path, dtype={"object_id": str}).set_index("object_id")
    if kind == "shape":
        table = table[list(SHAPE_COLUMNS)]
    for c in LOG_COLUMNS:
        if c in table:
            table[c] = np.log(table[c])
    table = ((table - table.mean()) / table.std().replace(0, 1).fillna(1)).fillna(0)
    missing = [w for w in wanted if w not in table.index]
    if missing:
        common.fail(f"{path}: no statistics for {common.show_ids(missing)}")
    return torch.from_numpy(table.loc[list(wanted)].to_numpy(np.float32))


def batches(args, recipe):
    """The training batches 04 fits with: `recipe` itself (every profile; photo inputs are its
    `extra`), or shifted views and mixup built on it. `recipe` (04's Batches) gives
    plan(epoch, g) -> rows (row, view), pixels(rows, offsets) -> x, extra(rows) -> the photo
    inputs or None, forward(net, x, extra) -> outputs, losses(outputs, rows) -> (B, heads)."""
    return Varied(args, recipe) if args.shift or args.mixup else recipe


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

