"""The training loop 03 and 04 share: fit, resumable and deterministic (its checkpoints:
checkpointing.py), the optimizers and learning-rate schedules it takes from the config, its loss
log and progress bar; and what every torch stage sets up first (threads, the banner, what
torch.compile needs).
"""
import math
import os
import sys
import time
from pathlib import Path

import torch

import checkpointing
import common
import distributed

LOG_EVERY = 10         # steps between loss.csv rows of 03 and 04: the only host syncs of a step


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
    schedule. The weights at every epoch end (config keep_epochs: all kept, or the last: the
    evaluator and 05 read them); a resumable state (optimizer, RNG) as state_due says: on a CPU
    at every epoch end and every config ckpt_every steps, on a GPU every config ckpt_minutes,
    with the weights of that point (prune_checkpoints keeps only the newest state). A rerun
    continues from the newest weights with their state (settle_checkpoints) and sees exactly the
    batches it would have seen: a global batch is split across ranks, and each rank's summed loss
    is divided by the global batch size, so DDP's gradient average equals the full batch's.

    config average_tail (a fraction of the epochs, 0: off): the last epoch's weights are the mean
    of the weights at the ends of the last round(epochs x average_tail) epochs (every float
    tensor, BatchNorm's running statistics too; tail_epochs). Their running sum travels in the
    state, so a resumed run averages the same weights.
    """
    run_dir = Path(run_dir)
    device, world, rank = dist.device, dist.world, dist.rank
    model.to(device)
    if config.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    optim = make_optimizer(model, config)
    start_epoch, start_step, gstep, state_at = 1, 0, 0, None
    tail, tail_sum, tail_n = tail_epochs(config), None, 0
    ckpts = checkpointing.list_checkpoints(run_dir)
    if ckpts:
        epoch, step, path = ckpts[-1]
        # on the host: load_state_dict copies the weights onto the model's device, and the
        # optimizer's state where the optimizer keeps it (Adam's `step` counters: the host,
        # where each costs no sync; the device, for the fused kernel that reads them there)
        weights = checkpointing.load_checkpoint(path, "cpu")
        if "optim" in weights:          # a checkpoint of the earlier layout: weights and state in one
            state = weights
        elif checkpointing.beside(path, epoch, step).exists():
            state = checkpointing.load_checkpoint(checkpointing.beside(path, epoch, step), "cpu")
        else:
            common.fail(f"{path}: no {checkpointing.beside(path, epoch, step).name} beside it to continue from; run the "
                        f"stage again (it continues from the newest weights that have their state)")
        model.load_state_dict(weights["model"])
        optim.load_state_dict(state["optim"])
        torch.set_rng_state(state["torch_rng"].cpu())
        gstep, state_at = state["global_step"], (epoch, step)
        if "tail_sum" in state:
            tail_sum, tail_n = {k: v.to(device) for k, v in state["tail_sum"].items()}, state["tail_n"]
        start_epoch, start_step = (epoch + 1, 0) if step is None else (epoch, step)
        if dist.main:
            print(f"resuming from {path.name} (epoch {epoch}, step {step or 'end'})", flush=True)
    net = dist.wrap(model, config.get("norm", "sync"))
    compiling = None
    if config.get("compile"):
        missing = compile_needs(device)
        if missing:
            common.fail(f"--compile: torch.compile builds its kernels with {' and '.join(missing)}, and "
                        f"this machine has none (the CUDA runtime image ships no compiler); run "
                        f"without --compile, or install them")
        net = torch.compile(net)
        compiling = time.time()     # the kernels compile during the first step: its time is reported
    log_path = run_dir / "loss.csv"
    if dist.main:
        keep_log_until(log_path, gstep)

    described = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool, list))}
    on_gpu, last_state = device.type == "cuda", time.monotonic()

    def save(epoch, step, with_state):
        """The weights at (epoch, step), step None at the epoch's end; with_state, first the state
        to continue from there: weights whose state was due are never without it, and a kill
        between the two leaves a state without weights, which settle_checkpoints removes."""
        nonlocal state_at, last_state
        where = {"epoch": epoch, "step": step, "global_step": gstep}
        if with_state:
            averaging = {"tail_sum": tail_sum, "tail_n": tail_n} if tail_sum is not None else {}
            checkpointing.save_checkpoint(run_dir / common.ckpt_name(epoch, step, state=True),
                            {"optim": optim.state_dict(), "torch_rng": torch.get_rng_state(), **where, **averaging})
            state_at, last_state = (epoch, step), time.monotonic()
        checkpointing.save_checkpoint(run_dir / common.ckpt_name(epoch, step), {"model": model.state_dict(), **where, "config": described})
        checkpointing.prune_checkpoints(run_dir, state_at, config.get("keep_epochs", "all"))

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
            lr = lr_at(config, epoch, step, batches)
            for group in optim.param_groups:
                group["lr"] = lr
            optim.zero_grad(set_to_none=True)
            with distributed.autotune(global_n == config["batch"]):
                loss_sum, stats = batch_loss(net, rows)
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
                # the only host sync: log interval; summed over the ranks, so the log is the global batch's
                keys = list(acc)
                totals = dist.reduce_sum(torch.stack([acc[k] for k in keys] + [torch.tensor(float(n_local), device=device)]))
                figures = dict(zip(keys, totals[:-1].tolist()))
                n = max(totals[-1].item(), 1)
                rate = seen / max(time.time() - t_log, 1e-9)
                row = {"step": gstep, "epoch": epoch, "loss": figures.pop("loss") / n,
                       **{k: v / n for k, v in figures.items()}, "images_per_s": rate * 1.0, "lr": lr}
                if dist.main:
                    append_log(log_path, row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{rate:.0f}", refresh=False)
                acc, seen, n_local, t_log = {}, 0, 0, time.time()
            if dist.main and not last and checkpointing.state_due(on_gpu, config, epoch, step + 1, time.monotonic() - last_state):
                save(epoch, step + 1, with_state=True)
        if epoch > config["epochs"] - tail:          # in the averaged tail (every rank: DDP's weights agree)
            weights = model.state_dict()
            tail_sum = {k: v.detach().clone() if tail_sum is None else tail_sum[k] + v for k, v in weights.items()
                        if v.is_floating_point()}
            tail_n += 1
            if epoch == config["epochs"]:
                if dist.main and tail_n < tail:
                    print(f"averaging the last {tail_n} epochs' weights, not {tail}: resumed from a state "
                          f"that held no sum of the earlier ones", flush=True)
                model.load_state_dict({k: tail_sum[k] / tail_n if k in tail_sum else v for k, v in weights.items()})
        if dist.main:
            save(epoch, None, checkpointing.state_due(on_gpu, config, epoch, None, time.monotonic() - last_state))
            if on_epoch_end:
                on_epoch_end(epoch, model)
    return model


def tail_epochs(config):
    """How many last epochs' weights the final weights average (config average_tail, a fraction
    of the epochs); 0 when fewer than two: nothing is averaged."""
    tail = round(config["epochs"] * config.get("average_tail", 0))
    return tail if tail >= 2 else 0


def compile_needs(device):
    """What torch.compile lacks here to build kernels ([] when nothing): Inductor compiles C++
    for a CPU, and Triton builds a C launcher, against Python's headers, for a GPU."""
    import shutil
    import sysconfig
    if device.type == "cpu":
        compilers, what = (os.environ.get("CXX"), "c++", "g++", "clang++"), "a C++ compiler (g++, clang++ or $CXX)"
    else:
        compilers, what = (os.environ.get("CC"), "cc", "gcc", "clang"), "a C compiler (cc, gcc, clang or $CC)"
    missing = [] if any(c and shutil.which(c) for c in compilers) else [what]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if device.type == "cuda" and not headers.exists():
        missing.append(f"Python's headers ({headers})")
    return missing


def add_optimizer_options(p):
    """The optimizer and learning-rate schedule options of a training stage (03, 04); the profile
    supplies what the command line leaves out (make_optimizer, lr_at)."""
    p.add_argument("--optim", default=None, choices=["adam", "adamw"], help="optimizer (profile; the recipe: adam)")
    p.add_argument("--lr", type=float, default=None, help="learning rate, the peak for onecycle (profile)")
    p.add_argument("--betas", type=float, nargs=2, default=None, help="Adam betas (profile; the recipe: 0.5 0.999)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (profile)")
    p.add_argument("--schedule", default=None, choices=SCHEDULES, help="lr schedule (profile; the recipe: halve)")
    p.add_argument("--halve-views", type=int, default=None,
                   help="halve: views per image between halvings (profile; the recipe: 8, once per 8-view epoch)")


def make_optimizer(model, config):
    """The recipe's Adam (config betas, no weight decay), or AdamW with config weight_decay; on a
    GPU torch's fused kernel (fused_adam), elsewhere its default, whose CPU results the resume
    tests compare bit for bit."""
    params, betas = list(model.parameters()), tuple(config["betas"])
    fused = {"fused": True} if fused_adam(params) else {}
    if config.get("optim", "adam") == "adam":
        return torch.optim.Adam(params, lr=config["lr"], betas=betas, **fused)
    return torch.optim.AdamW(params, lr=config["lr"], betas=betas, weight_decay=config["weight_decay"], **fused)


def fused_adam(params):
    """Whether Adam runs fused: every parameter a floating-point tensor on a GPU. One kernel
    launch for all the parameters instead of several per tensor (ResNet34: 110 tensors per
    step); the same update up to rounding."""
    return bool(params) and all(p.device.type == "cuda" and p.is_floating_point() for p in params)


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


def banner(stage, profile, dist, **sizes):
    """A torch stage's first line: its profile, its device and what it works on (`sizes`)."""
    if dist.main:
        extra = " ".join(f"{k}={v}" for k, v in sizes.items())
        print(f"[{stage}] profile={profile} device={dist.describe()} {extra}", flush=True)
