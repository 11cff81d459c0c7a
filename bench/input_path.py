"""Figure 1, the input path: images/s of ready-to-train batches, ours against the recipe's loader.

Ours (what 03/04 do every step): stage 02's store sits on the training device as packed pixels; a
batch is a gather of random rows, a random view each (one of the 8 symmetries) and the ImageNet
normalisation, all in pixels.to_input. The batch is ready for the network (channels_last on
CUDA, as 03/04).

The reference (the recipe): the 8 views pre-augmented on disk as JPEGs, one directory per view,
written with ImageMagick -flop / -flip / -rotate 90; a torch Dataset opens each item with PIL,
resizes it to S x S and normalises it (torchvision Resize, ToTensor, Normalize), and a DataLoader
with one worker per core batches them (on CUDA: pinned and copied to the device, as ready).

Both take the same photos (a seeded sample of the real ones when present, else demo data), the
same S and batch size. Each side is timed over `--rounds` passes, alternating, and its best pass
counts (the machine may be shared). Ours drops one warm-up batch; the reference's pass is timed
whole, from the start of its workers (forked, cheap) to its last batch: starting the clock at its
first batch would count the batches its workers prefetched meanwhile as free.

At two sizes by default: the recipe's 224 px and PROFILE=cpu's (what trains on 2 cores here).

    python bench/input_path.py --sizes 224,48 --photos 256 [--data DIR] [--device auto|cpu|cuda]
"""
import os
import tempfile
from pathlib import Path

import benchlib
import pixels

# -----------------------------------------------------------------------------
PHOTOS = 256      # photos sampled; the reference reads each of them in all 8 views

p = benchlib.batch_parser(__doc__, PHOTOS, "input")
p.add_argument("--workers", type=int, default=os.cpu_count(), help="reference DataLoader workers (one per core)")

class RecipeDataset:
    """The recipe's per-item loader: (view directory, id) -> normalised float tensor."""

    def __init__(self, items, size):
        from torchvision import transforms as T
        self.items = items
        self.tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(pixels.MEAN, pixels.STD)])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.items[i]) as im:
            return self.tf(im.convert("RGB"))


def ours_rate(store, vidx, batch, device, generator, batches=benchlib.OURS_BATCHES):
    import torch
    cuda = device.type == "cuda"
    n = store.shape[0]

    def one():
        rows = torch.randint(0, n, (batch,), generator=generator).to(device, non_blocking=True)
        views = torch.randint(0, 8, (batch,), generator=generator).to(device, non_blocking=True)
        return pixels.to_input(store[rows], views, vidx, channels_last=cuda)

    one()                                                   # warm-up
    return benchlib.timed_rate(one, batch, device, batches)


def ref_rate(dataset, batch, workers, device):
    """A whole pass, from creating the iterator (which starts the workers, as every epoch of the
    recipe's loader did) to the last batch: timing from the first batch would count the batches
    the workers had prefetched meanwhile as free."""
    import torch
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         pin_memory=cuda, drop_last=True)
    count = 0
    with benchlib.Timer(device) as t:
        for x in loader:
            x = x.to(device, non_blocking=True) if cuda else x
            count += len(x)
    return count / t.seconds


def main():
    args = p.parse_args()
    import torch
    import training
    training.configure_threads()
    device = benchlib.pick_device(args.device)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp).resolve()
        raw, kind, ids, dirs = benchlib.recipe_inputs(args, tmp)
        items = [str(d / f"{i}.jpg") for d in dirs for i in ids]
        benchlib.note(f"{args.prefix}: {len(ids)} {kind} photos, batch {args.batch}; reference: {len(items)} "
                      f"JPEGs in 8 view directories, {args.workers} workers; " + benchlib.threads_note(device))
        for size in map(int, args.sizes.split(",")):
            store, ids, vidx = benchlib.resident_store(raw, ids, size, tmp, device)
            dataset = RecipeDataset(items, size)
            g = torch.Generator().manual_seed(0)
            ours, ref = [], []
            for _ in range(args.rounds):
                ours.append(ours_rate(store, vidx, args.batch, device, g, args.batches))
                ref.append(ref_rate(dataset, args.batch, args.workers, device))
            tag = f"{args.prefix}_{size}px"
            benchlib.emit(f"{tag}_ours", max(ours), "images/s")
            benchlib.emit(f"{tag}_recipe_loader", max(ref), "images/s")
            benchlib.emit_ratio(tag, max(ours) / max(ref))
            del store


if __name__ == "__main__":
    main()
