"""The image store written by 02 and what is made of it on the training device: the 8 views
(exact pixel permutations) and the jigsaw tiles, as tensor index operations on packed pixels.
Shared by the torch stages (03, 04, 05).

    python pixels.py views --store WORK/02_hvr --id OBJECT_ID    # WORK/02_hvr/views_<id>.png
"""
import argparse
import functools
import json
import math
from pathlib import Path

import numpy as np
import torch

import common

# -----------------------------------------------------------------------------
# The 8 views, in the recipe's order; each is a composition of h (ImageMagick -flop: mirror
# left-right), v (-flip: mirror top-bottom) and r (-rotate 90: clockwise), applied h, v, r.
VIEWS = ("id", "h", "v", "hv", "r", "hr", "vr", "hvr")
MEAN = (0.485, 0.456, 0.406)     # ImageNet normalisation, as the recipe
STD = (0.229, 0.224, 0.225)
JIGSAW_GRID = 3


# -----------------------------------------------------------------------------
# The image store written by 02: images.npy (N, S, S, 3) uint8, ids.txt, meta.json.
def load_store(store_dir, mmap=True):
    """(images, ids, meta) of a complete store, checked first (check_store)."""
    store_dir = Path(store_dir)
    if not common.is_done(store_dir):
        common.fail(f"{store_dir}: no complete image store (run `make hvr`)")
    ids = (store_dir / "ids.txt").read_text().split()
    meta = json.loads((store_dir / "meta.json").read_text())
    check_store(store_dir, ids, meta)
    images = np.load(store_dir / "images.npy", mmap_mode="r" if mmap else None)
    return images, ids, meta


def check_store(store_dir, ids, meta):
    """A store is what 02 wrote, or an error that names it and the way out (02 again): the size
    its header implies, and with 02's record in meta.json (common.store_record; a store of before
    it has none) the same size and sample hash; one row per id of ids.txt, each id once."""
    path = store_dir / "images.npy"
    redo = f"redo 02: rm {store_dir / 'DONE'}, then the same command"
    try:
        _header, shape, expected = common.npy_layout(path)
    except (OSError, ValueError) as e:
        common.fail(f"{path}: the image store is damaged, its header unreadable ({str(e)[:120]}); {redo}")
    size = path.stat().st_size
    wrote = meta.get("bytes", expected)
    if size != expected or size != wrote:
        common.fail(f"{path}: the image store is damaged: {size} bytes, and 02 wrote {wrote} "
                    f"(cut short or overwritten); {redo}")
    if "sample_sha256" in meta and common.store_record(path)["sample_sha256"] != meta["sample_sha256"]:
        common.fail(f"{path}: the image store is damaged: its pixels are not those 02 wrote (a sample "
                    f"of its rows hashes otherwise than {store_dir / 'meta.json'} records); {redo}")
    if len(ids) != shape[0]:
        common.fail(f"{store_dir / 'ids.txt'}: {len(ids)} ids for the {shape[0]} photos of {path}; {redo}")
    common.check_ids(ids, store_dir / "ids.txt", store_dir)


def store_rows(ids, wanted, where):
    """Positions in the store of the object ids `wanted`; a missing id is an error."""
    pos = {oid: i for i, oid in enumerate(ids)}
    missing = [w for w in wanted if w not in pos]
    if missing:
        common.fail(f"{where}: ids not in the image store: {common.show_ids(missing)}")
    return torch.tensor([pos[w] for w in wanted], dtype=torch.long)


@functools.lru_cache(maxsize=None)
def view_index(size):
    """(8, S*S) long: for each view, the source pixel of every output pixel (row-major). Made
    once per size (callers only read it)."""
    grid = torch.arange(size * size).view(size, size)
    out = []
    for name in VIEWS:
        g = grid
        if "h" in name:
            g = g.flip(-1)
        if "v" in name:
            g = g.flip(-2)
        if "r" in name:
            g = torch.rot90(g, k=-1, dims=(-2, -1))    # k=-1: clockwise, as -rotate 90
        out.append(g.reshape(-1))
    return torch.stack(out)


def apply_views(x, views, index):
    """x (B, C, S, S), views (B,) in 0..7, index from view_index: one gather, any device."""
    b, c, s, _ = x.shape
    idx = index[views].unsqueeze(1).expand(b, c, s * s)
    return x.reshape(b, c, s * s).gather(2, idx).view(b, c, s, s)


def to_pixels(images, device):
    """uint8 (N, S, S, 3) rows of the store -> (N, S*S) int32 on the device: each pixel's R, G, B
    and a zero byte in one word, so a view or a tile moves whole pixels, one element each (3x
    fewer than bytes: the gather's cost is per element). A third more memory than uint8 RGB."""
    u8 = torch.from_numpy(np.ascontiguousarray(images))
    n, s = u8.shape[0], u8.shape[1]
    rgba = torch.zeros((n, s, s, 4), dtype=torch.uint8)
    rgba[..., :3] = u8
    return rgba.view(torch.int32).view(n, s * s).to(device)


_NORMALISERS = {}


def normaliser(device):
    """(scale, shift) with x * scale + shift == (x / 255 - mean) / std; made once per device."""
    if device not in _NORMALISERS:
        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        _NORMALISERS[device] = ((1 / (255 * std)).to(device), (-mean / std).to(device))
    return _NORMALISERS[device]


def to_input(px, views, index, channels_last=False, perms=None):
    """Packed pixels (B, S*S) from to_pixels, on the device -> normalised float views
    (B, 3, S, S); with `perms` (B, 9), the jigsaw tiles shuffled too. The view is one gather of
    whole pixels and the tiles move as whole rows, both before the bytes become floats; then
    one converting copy and the in-place normalisation (on a CPU, measured faster than one fused
    broadcast op). No host sync: on a GPU it runs ahead of the step."""
    b = px.shape[0]
    x = px.gather(1, index[views])
    s = math.isqrt(x.shape[1])
    if perms is not None:
        x = shuffle_tiles(x.view(b, 1, s, s), perms).view(b, s * s)
    rgb = x.view(torch.uint8).view(b, s, s, 4)[..., :3].permute(0, 3, 1, 2)
    scale, shift = normaliser(px.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((b, 3, s, s), device=px.device, memory_format=fmt).copy_(rgb)
    return out.mul_(scale).add_(shift)


def shuffle_tiles(x, perms):
    """Jigsaw: cut the top-left 3t x 3t square (t = S // 3) into 3x3 tiles and put tile
    perms[b, i] at position i. When S is not a multiple of 3 the last S mod 3 rows and columns
    stay where they are: they carry no tile, so they cannot leak the permutation.
    Any dtype; each tile moves as one contiguous row (index_select), not pixel by pixel."""
    b, c, s, _ = x.shape
    g = JIGSAW_GRID
    t = s // g
    core = x[:, :, : g * t, : g * t].reshape(b, c, g, t, g, t).permute(0, 2, 4, 1, 3, 5)
    rows = (perms + g * g * torch.arange(b, device=perms.device)[:, None]).reshape(-1)
    tiles = core.reshape(b * g * g, c * t * t).index_select(0, rows)
    tiles = tiles.view(b, g, g, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * t, g * t)
    if g * t == s:
        return tiles
    out = x.clone()
    out[:, :, : g * t, : g * t] = tiles
    return out


def random_perms(n, generator, identity_every=0):
    """(n, 9) random permutations of the tiles, never the identity, except every
    `identity_every`-th row, which is the identity (the recipe's 7 shuffled + 1 as is)."""
    perms = torch.rand(n, JIGSAW_GRID ** 2, generator=generator).argsort(dim=1)
    ident = torch.arange(JIGSAW_GRID ** 2)
    while True:
        same = (perms == ident).all(dim=1)
        if identity_every:
            same &= torch.arange(n) % identity_every != 0
        if not same.any():
            break
        perms[same] = torch.rand(int(same.sum()), JIGSAW_GRID ** 2, generator=generator).argsort(dim=1)
    if identity_every:
        perms[torch.arange(n) % identity_every == 0] = ident
    return perms


# -----------------------------------------------------------------------------
def views_png(store_dir, object_id):
    """The 8 views of one photo side by side, S x S each, no border: an exact picture."""
    from PIL import Image
    images, ids, meta = load_store(store_dir)
    row = store_rows(ids, [object_id], store_dir)
    u8 = torch.from_numpy(np.ascontiguousarray(images[row.numpy()])).permute(0, 3, 1, 2)
    s = meta["size"]
    idx = view_index(s)
    views = apply_views(u8.expand(8, -1, -1, -1).contiguous(), torch.arange(8), idx)
    strip = views.permute(2, 0, 3, 1).reshape(s, 8 * s, 3).numpy()
    out = Path(store_dir) / f"views_{object_id}.png"
    with common.atomic_path(out) as tmp:
        Image.fromarray(strip).save(tmp, format="PNG")
    print(f"wrote {out} ({8 * s} x {s}: {', '.join(VIEWS)})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("views", help="write STORE/views_<id>.png")
    v.add_argument("--store", required=True)
    v.add_argument("--id", required=True)
    args = p.parse_args()
    if not common.ID_RE.match(args.id):
        common.fail(f"--id {args.id!r}: not an object_id (20 lowercase hex characters)")
    views_png(args.store, args.id)


if __name__ == "__main__":
    main()
