"""What the torch stages (03 jigsaw, 04 fine-tune, 05 features) share: the image store, the 8
views and the jigsaw tiles as tensor index operations, the networks, the device and DDP setup,
safe checkpoints, and one resumable, deterministic training loop.

    python training.py views --store WORK/02_hvr --id OBJECT_ID   # WORK/02_hvr/views_<id>.png
    python training.py status --work WORK                         # table of the 03/04 runs
    python training.py cv-plot --runs WORK/04_finetune            # cv_<task>.png
"""
import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

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
    store_dir = Path(store_dir)
    if not common.is_done(store_dir):
        common.fail(f"{store_dir}: no complete image store (run `make hvr`)")
    images = np.load(store_dir / "images.npy", mmap_mode="r" if mmap else None)
    ids = (store_dir / "ids.txt").read_text().split()
    meta = json.loads((store_dir / "meta.json").read_text())
    return images, ids, meta


def store_rows(ids, wanted, where):
    """Positions in the store of the object ids `wanted`; a missing id is an error."""
    pos = {oid: i for i, oid in enumerate(ids)}
    missing = [w for w in wanted if w not in pos]
    if missing:
        common.fail(f"{where}: ids not in the image store: {common.show_ids(missing)}")
    return torch.tensor([pos[w] for w in wanted], dtype=torch.long)


def view_index(size):
    """(8, S*S) long: for each view, the source pixel of every output pixel (row-major)."""
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
    b, s = px.shape[0], math.isqrt(px.shape[1])
    x = px.gather(1, index[views])
    if perms is not None:
        x = shuffle_tiles(x.view(b, 1, s, s), perms).view(b, s * s)
    rgb = x.view(torch.uint8).view(b, s, s, 4)[..., :3].permute(0, 3, 1, 2)
    scale, shift = normaliser(px.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((b, 3, s, s), device=px.device, memory_format=fmt).copy_(rgb)
    return out.mul_(scale).add_(shift)


@torch.inference_mode()
def predict_views(model, px, vidx, device, batch, views=range(8)):
    """(N, V, D) outputs of the given views (default all 8) of every image; px (N, S*S) from
    to_pixels on `device`. channels_last on every device: on this CPU it infers ResNets ~1.3x
    faster (1075 against 822 images/s, ResNet18 at 48 px, batch 256)."""
    model.eval()
    model.to(memory_format=torch.channels_last)
    cuda = device.type == "cuda"
    views = torch.as_tensor(list(views), device=device)
    outs = []
    for chunk in px.split(max(batch // len(views), 1)):
        n = len(chunk)
        x = to_input(chunk.repeat_interleave(len(views), 0), views.repeat(n), vidx, channels_last=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            outs.append(model(x).float().view(n, len(views), -1))
    return torch.cat(outs)


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
# Networks: torchvision architectures from random init (no pretrained weights: competition rule).
ARCHS = ("resnet34", "resnet18", "efficientnet_b0")


def build_model(arch, outputs):
    if arch not in ARCHS:
        common.fail(f"--arch {arch}: choose one of {ARCHS}")
    return getattr(torchvision.models, arch)(weights=None, num_classes=outputs)


def head(model):
    """The final linear layer's (name prefix, module): fc for ResNets, classifier.1 otherwise."""
    return ("fc.", model.fc) if hasattr(model, "fc") else ("classifier.1.", model.classifier[1])


def load_backbone(model, state):
    """Copy every weight but the head's (the pretext head has 81 outputs, a task's 1-20)."""
    prefix, _ = head(model)
    body = {k: v for k, v in state.items() if not k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(body, strict=False)
    left = [k for k in missing if not k.startswith(prefix)]
    if left or unexpected:
        common.fail(f"backbone does not fit: missing {left[:3]}, unexpected {unexpected[:3]}")


# -----------------------------------------------------------------------------
# Device and DDP: the same script runs alone or under torchrun; only rank 0 logs and saves.
class Dist:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1:
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.main = self.rank == 0

    def wrap(self, model):
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def describe(self):
        if self.device.type == "cuda":
            return f"{self.world} x {torch.cuda.get_device_name(self.device)}"
        return f"{self.world} x cpu ({torch.get_num_threads()} threads)"

    def close(self):
        if self.world > 1:
            torch.distributed.destroy_process_group()


# -----------------------------------------------------------------------------
# Checkpoints: self-describing, written atomically, read back with weights_only=True.
CKPT_RE = re.compile(r"^ckpt_e(\d{3})(?:_s(\d{8}))?\.pt$")


def list_checkpoints(run_dir):
    """[(epoch, step, path)] of complete checkpoints, oldest first; step None = epoch end.

    Only final names count: a checkpoint being written has a temporary name until os.replace."""
    found = []
    for p in Path(run_dir).glob("ckpt_e*.pt"):
        m = CKPT_RE.match(p.name)
        if m:
            found.append((int(m[1]), None if m[2] is None else int(m[2]), p))
    # an epoch-end checkpoint of epoch e comes after every mid-epoch one of e
    return sorted(found, key=lambda t: (t[0], math.inf if t[1] is None else t[1]))


def save_checkpoint(path, state):
    try:
        with common.atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as e:    # torch's writer reports a full disk as RuntimeError
        common.fail(f"{path}: could not write the checkpoint ({str(e).strip()[:200]}); is the disk "
                    f"full or WORK read-only? The checkpoints already written are intact: free "
                    f"space, then run the same command again to continue from them")


def load_checkpoint(path, device="cpu"):
    return torch.load(path, map_location=device, weights_only=True)


def epoch_generator(seed, epoch):
    """The RNG of epoch e: its own instance, seeded with (seed, e); global RNGs untouched."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def fit(model, *, run_dir, dist, config, epoch_plan, batch_loss, log_extra=None, on_epoch_end=None):
    """Train `model` for config['epochs'] epochs, resumable and deterministic.

    epoch_plan(epoch, generator) -> a tensor whose rows describe the epoch's samples in order
    batch_loss(net, rows) -> (loss summed over the rows, stats dict of summed tensors)
    on_epoch_end(epoch, net) runs on rank 0 after the epoch's checkpoint is written.

    The optimizer and the learning-rate schedule come from the config (make_optimizer, lr_at):
    the recipe's Adam with lr halved after every epoch, or AdamW with a one-cycle or cosine
    schedule. Checkpoints at every epoch end
    (kept: the evaluator and 05 read them) and every config['ckpt_every'] steps (only the newest
    kept). A rerun continues from the newest complete checkpoint and sees exactly the batches it
    would have seen: a global batch is split across ranks, and each rank's summed loss is
    divided by the global batch size, so DDP's gradient average equals the full batch's.
    """
    run_dir = Path(run_dir)
    device, world, rank = dist.device, dist.world, dist.rank
    model.to(device)
    if config.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    optim = make_optimizer(model, config)
    start_epoch, start_step, gstep = 1, 0, 0
    ckpts = list_checkpoints(run_dir)
    if ckpts:
        epoch, step, path = ckpts[-1]
        state = load_checkpoint(path, device)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        torch.set_rng_state(state["torch_rng"].cpu())
        gstep = state["global_step"]
        start_epoch, start_step = (epoch + 1, 0) if step is None else (epoch, step)
        if dist.main:
            print(f"resuming from {path.name} (epoch {epoch}, step {step or 'end'})", flush=True)
    net = dist.wrap(model)
    compiling = None
    if config.get("compile"):
        net = torch.compile(net)
        compiling = time.time()     # the kernels compile during the first step: its time is reported
    log_path = run_dir / "loss.csv"
    if dist.main:
        keep_log_until(log_path, gstep)

    def state_dict(epoch, step):
        return {"model": model.state_dict(), "optim": optim.state_dict(), "epoch": epoch,
                "step": step, "global_step": gstep, "torch_rng": torch.get_rng_state(),
                "config": {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool, list))}}

    for epoch in range(start_epoch, config["epochs"] + 1):
        plan = epoch_plan(epoch, epoch_generator(config["seed"], epoch)).to(device)   # one copy per epoch
        batches = math.ceil(len(plan) / config["batch"])
        net.train()
        first = start_step if epoch == start_epoch else 0
        bar = progress(range(first, batches), dist, desc=f"{run_dir.name} e{epoch}", total=batches,
                       initial=first)
        acc, seen, n_local, t_log = {}, 0, 0, time.time()
        for step in bar:
            rows = plan[step * config["batch"]:(step + 1) * config["batch"]]
            global_n = len(rows)
            rows = rows[rank::world]
            loss_sum, stats = batch_loss(net, rows)
            lr = lr_at(config, epoch, step, batches)
            for group in optim.param_groups:
                group["lr"] = lr
            optim.zero_grad(set_to_none=True)
            (loss_sum * world / global_n).backward()
            optim.step()
            gstep += 1
            if compiling is not None:
                if device.type == "cuda":
                    torch.cuda.synchronize()        # once per run, so the figure is the compile's
                if dist.main:
                    print(f"torch.compile: the first step, which compiles the kernels, took "
                          f"{time.time() - compiling:.1f}s", flush=True)
                compiling = None
            seen += global_n
            n_local += len(rows)
            for k, v in {"loss": loss_sum, **stats}.items():      # summed on the device: no sync
                acc[k] = acc.get(k, 0) + v.detach().float()
            last = step + 1 == batches
            if (step + 1) % config["log_every"] == 0 or last:
                figures = {k: v.item() for k, v in acc.items()}     # the only host sync: log interval
                n = max(n_local, 1)
                rate = seen / max(time.time() - t_log, 1e-9)
                row = {"step": gstep, "epoch": epoch, "loss": figures.pop("loss") / n,
                       **{k: v / n for k, v in figures.items()}, "images_per_s": rate * 1.0, "lr": lr}
                if dist.main:
                    append_log(log_path, row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{rate:.0f}", refresh=False)
                acc, seen, n_local, t_log = {}, 0, 0, time.time()
            if dist.main and not last and (step + 1) % config["ckpt_every"] == 0:
                save_checkpoint(run_dir / common.ckpt_name(epoch, step + 1), state_dict(epoch, step + 1))
                prune_mid_epoch(run_dir, keep=(epoch, step + 1))
        if dist.main:
            save_checkpoint(run_dir / common.ckpt_name(epoch), state_dict(epoch, None))
            prune_mid_epoch(run_dir, keep=None)
            slim_old_epochs(run_dir)
            if on_epoch_end:
                on_epoch_end(epoch, model)
    return model


def make_optimizer(model, config):
    """The recipe's Adam (config betas, no weight decay), or AdamW with config weight_decay."""
    params, betas = model.parameters(), tuple(config["betas"])
    if config.get("optim", "adam") == "adam":
        return torch.optim.Adam(params, lr=config["lr"], betas=betas)
    return torch.optim.AdamW(params, lr=config["lr"], betas=betas, weight_decay=config["weight_decay"])


SCHEDULES = ("halve", "onecycle", "cosine")


def lr_at(config, epoch, step, batches):
    """The learning rate of step `step` (0-based) of epoch `epoch` (1-based), `batches` steps per
    epoch: a function of the position only, so a resumed run follows the same schedule.

    halve:    the recipe: config lr halved after every `halve_views` views per image (the recipe
              trains 8 views per epoch and halves per epoch: halve_views = 8 = views).
    onecycle: from lr/25 up to lr over the first `warmup` of the run, then down to lr/25e4,
              both on a cosine (torch's OneCycleLR shape, without its momentum cycling).
    cosine:   from lr down to 0 on a cosine.
    """
    lr, kind = config["lr"], config.get("schedule", "halve")
    if kind == "halve":
        seen = (epoch - 1) * config["views"]               # views per image before this epoch
        return lr * 0.5 ** (seen // config.get("halve_views", config["views"]))
    t = ((epoch - 1) * batches + step) / (config["epochs"] * batches)     # progress, 0 .. 1
    if kind == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * t))
    warm, low = config.get("warmup", 0.25), lr / 25
    if t < warm:
        return low + (lr - low) * 0.5 * (1 - math.cos(math.pi * t / warm))
    end = low / 1e4
    return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm)))


def prune_mid_epoch(run_dir, keep):
    for epoch, step, path in list_checkpoints(run_dir):
        if step is not None and (epoch, step) != keep:
            path.unlink(missing_ok=True)


def slim_old_epochs(run_dir):
    """Only the newest checkpoint is ever resumed from: older epoch-end checkpoints keep the
    model (the evaluator, 05 and the CV plots read it) and lose the optimizer (2/3 of the bytes)."""
    for epoch, step, path in list_checkpoints(run_dir)[:-1]:
        state = load_checkpoint(path)
        if step is None and "optim" in state:
            del state["optim"]
            save_checkpoint(path, state)


def append_log(path, row):
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write(",".join(row) + "\n")
        f.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.values()) + "\n")


def keep_log_until(path, gstep):
    """On resume, drop log rows written after the checkpoint (they will be logged again)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [lines[0]] + [l for l in lines[1:] if l.count(",") == lines[0].count(",") and
                         l.split(",")[0].isdigit() and int(l.split(",")[0]) <= gstep]
    common.write_text(path, "\n".join(kept) + "\n")


def progress(iterable, dist, **kw):
    from tqdm import tqdm
    return tqdm(iterable, disable=not dist.main, mininterval=1 if sys.stderr.isatty() else 30,
                dynamic_ncols=True, **kw)


def configure_threads():
    """Same thread count on every run of a stage: CPU results are bit-identical only then."""
    threads = int(os.environ.get("TORCH_THREADS", "0")) or min(os.cpu_count() or 1, 8)
    torch.set_num_threads(threads)


def banner(stage, args, dist, **sizes):
    if dist.main:
        extra = " ".join(f"{k}={v}" for k, v in sizes.items())
        print(f"[{stage}] profile={args.profile} device={dist.describe()} {extra}", flush=True)


def plot_curves(path, csv_path, columns, title, x="step"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    df = pd.read_csv(csv_path)
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 3.5))
    for ax, col in zip(np.atleast_1d(axes), columns):
        for label, part in (df.groupby("split") if "split" in df else [("", df)]):
            ax.plot(part[x], part[col], marker="." if len(part) < 50 else None, label=label or None)
        ax.set_xlabel(x)
        ax.set_ylabel(col)
        if "split" in df:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with common.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


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


def run_state(run_dir):
    """waiting / running / done / failed: <reason>, from the stamps and the run's lock."""
    import fcntl
    if (run_dir / "DONE").exists():
        return "done"
    lock = run_dir / ".running"
    if lock.exists():
        with open(lock) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "running"
    if (run_dir / "FAILED").exists():
        return "failed: " + (run_dir / "FAILED").read_text().strip()
    log = run_dir / "log.txt"
    if log.exists() and log.stat().st_size:
        last = [l for l in log.read_text(errors="replace").splitlines() if l.strip()][-1:]
        return "stopped: " + (last[0][-90:] if last else "")
    return "waiting"


def last_row(path):
    import pandas as pd
    if not path.exists():
        return {}
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return {}
    return df.iloc[-1].to_dict() if len(df) else {}


def status(work):
    """One table of the 03 run and every 04 run; safe to read while they write."""
    import pandas as pd
    work = Path(work)
    runs = [("jigsaw", "-", work / "03_jigsaw")]
    runs += [(t, f, work / "04_finetune" / common.run_name(t, f)) for t in common.NETS for f in common.FOLDS
             if t in common.TASKS or (work / "04_finetune" / common.run_name(t, f)).exists()]
    rows = []
    for task, fold, d in runs:
        log = last_row(d / "loss.csv")
        ev = last_row(d / "eval.csv") if task != "jigsaw" else last_row(d / "holdout.csv")
        state = run_state(d) if d.exists() else "waiting"
        rmse = ev.get("rmse", ev.get("tile_acc", ""))
        rows.append({
            "task": task, "fold": fold,
            "epoch/step": f"{int(log['epoch'])}/{int(log['step'])}" if log else "",
            "loss": f"{log['loss']:.4f}" if log else "",
            "eval": "" if rmse == "" or pd.isna(rmse) else
                    (f"rmse {rmse:.4f} (e{int(ev['epoch'])})" if task != "jigsaw" else f"tile acc {rmse:.3f} (e{int(ev['epoch'])})"),
            "img/s": f"{log['images_per_s']:.0f}" if log else "",
            "state": state,
        })
    print(pd.DataFrame(rows).to_string(index=False))
    for net in common.NETS:
        for head in (common.TASKS if net == "multi" else (net,)):
            line = fold_cv(work / "04_finetune", net, head)
            if line:
                print(line)


def fold_cv(runs_dir, net, head=None):
    """The CV line of a network's head (default: the network's task): the held-out era RMSE of
    folds 0-2 pooled over their rows, at the last epoch all three have evaluated; None until
    they have, and for a head without an era."""
    import pandas as pd
    head = head or net
    evals = []
    for fold in common.FOLDS[:3]:
        path = Path(runs_dir) / common.run_name(net, fold) / "eval.csv"
        try:
            evals.append(pd.read_csv(path).query("split == 'heldout'").set_index("epoch"))
        except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError):
            return None
    common_epochs = set.intersection(*(set(e.index) for e in evals))
    if not common_epochs:
        return None
    epoch = max(common_epochs)
    col = f"rmse_{head}" if f"rmse_{head}" in evals[0] else "rmse"
    if col == "rmse" and head != net:
        return None
    rows = [e.loc[epoch] for e in evals]
    pooled = np.sqrt(sum(r["n"] * r[col] ** 2 for r in rows) / sum(r["n"] for r in rows))
    if not np.isfinite(pooled):     # word2vec: no era to score
        return None
    name = head if head == net else f"{net}/{head}"
    views = int(rows[0].get("views", 8))
    return (f"CV {name} (epoch {epoch}, {views} view{'s' if views > 1 else ''}, folds 0-2 pooled): "
            f"held-out RMSE {pooled:.4f} (per fold {' / '.join(f'{r[col]:.4f}' for r in rows)})")


def cv_plot(runs_dir, out_dir=None):
    """Per task: held-out era RMSE per epoch, one line per fold (the recipe's favourite).
    Writes cv_<task>.png into out_dir (default: runs_dir); returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    runs_dir = Path(runs_dir)
    out_dir = Path(out_dir or runs_dir)
    written = []
    for task in common.NETS:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        drawn = 0
        for fold in common.FOLDS[:-1]:
            path = runs_dir / common.run_name(task, fold) / "eval.csv"
            if path.exists():
                ev = pd.read_csv(path)
                col = "rmse" if ev["rmse"].notna().any() else "loss"
                ax.plot(ev["epoch"], ev[col], "o-", label=f"fold {fold}")
                ax.set_ylabel(f"held-out {'era RMSE' if col == 'rmse' else 'loss'}")
                drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set(xlabel="epoch", title=f"{task}: held-out per epoch")
        ax.legend()
        fig.tight_layout()
        with common.atomic_path(out_dir / f"cv_{task}.png") as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        written.append(out_dir / f"cv_{task}.png")
    return written


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("views", help="write STORE/views_<id>.png")
    v.add_argument("--store", required=True)
    v.add_argument("--id", required=True)
    s = sub.add_parser("status", help="table of every 03/04 run under WORK")
    s.add_argument("--work", required=True)
    c = sub.add_parser("cv-plot", help="WORK/04_finetune/cv_<task>.png")
    c.add_argument("--runs", required=True)
    args = p.parse_args()
    if args.command == "status":
        return status(args.work)
    if args.command == "cv-plot":
        for path in cv_plot(args.runs):
            print(f"wrote {path}")
        return
    if not common.ID_RE.match(args.id):
        common.fail(f"--id {args.id!r}: not an object_id (20 lowercase hex characters)")
    views_png(args.store, args.id)


if __name__ == "__main__":
    main()
