"""The training loop 03 and 04 share: fit, resumable and deterministic (its checkpoints:
checkpointing.py), the optimizer and torch learning-rate scheduler it builds from its settings
(FitSettings), its loss log and progress bar; and what every torch stage sets up first
(threads, the banner, what torch.compile needs).
"""
import dataclasses
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch

import checkpointing
import common
import distributed

LOG_EVERY = 10         # steps between loss.csv rows of 03 and 04: the only host syncs of a step
SCHEDULES = ("halve", "onecycle")
WARMUP = 0.25          # onecycle: the share of the steps that climbs to the peak (torch's pct_start)


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """What fit reads of a stage's options: the run's length and batches, its optimizer and
    schedule (make_optimizer, make_schedule), when it saves (checkpointing.state_due), how it
    ends (average_tail). A stage builds it from its resolved options with `pick`."""
    epochs: int
    batch: int
    seed: int
    views: int                     # views per image per epoch: the halve schedule counts them
    optim: str
    lr: float
    betas: tuple
    weight_decay: float
    schedule: str
    halve_views: int
    ckpt_every: int
    ckpt_minutes: float = checkpointing.CKPT_MINUTES
    keep_epochs: str = "all"
    average_tail: float = 0.0
    norm: str = "sync"             # 03 --norm: BatchNorm over the global batch, or each rank's
    compile: bool = False
    channels_last: bool = True
    log_every: int = LOG_EVERY

    @classmethod
    def pick(cls, options, **overrides):
        """The settings among `options` (a dict of a stage's resolved options; others ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(options, **overrides).items() if k in names})


def epoch_generator(seed, epoch):
    """The RNG of epoch e: its own instance, seeded with (seed, e); global RNGs untouched."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def fit(model, *, run_dir, dist, settings, epoch_plan, batch_loss, network=None, on_epoch_end=None):
    """Train `model` for settings.epochs epochs (a FitSettings), resumable and deterministic.

    epoch_plan(epoch, generator) -> a tensor whose rows describe the epoch's samples in order
    batch_loss(net, rows) -> (loss summed over the rows, stats dict of summed tensors)
    on_epoch_end(epoch, net) runs on rank 0 after the epoch's checkpoint is written.
    network: what each checkpoint says of the network beside the settings (its "config": arch,
    outputs, the run's options and inputs), what the evaluator, 05 and check_network read.

    The optimizer and its torch learning-rate scheduler come from the settings (make_optimizer,
    make_schedule): the recipe's Adam with lr halved after every epoch, or AdamW on a one-cycle
    schedule. The weights at every epoch end (keep_epochs: all kept, or the last: the
    evaluator and 05 read them); a resumable state (optimizer, RNG) as state_due says: on a CPU
    at every epoch end and every ckpt_every steps, on a GPU every ckpt_minutes,
    with the weights of that point (prune_checkpoints keeps only the newest state). A rerun
    continues from the newest weights with their state (settle_checkpoints) and sees exactly the
    batches it would have seen: a global batch is split across ranks, and each rank's summed loss
    is divided by the global batch size, so DDP's gradient average equals the full batch's.
    A resumed run's scheduler is replayed to its step (make_schedule), so the rates are the ones
    an uninterrupted run takes, whatever layout its state was written in.

    average_tail (a fraction of the epochs, 0: off): the last epoch's weights are the mean
    of the weights at the ends of the last round(epochs x average_tail) epochs (every float
    tensor, BatchNorm's running statistics too; tail_epochs). Their running sum travels in the
    state, so a resumed run averages the same weights.
    """
    run_dir = Path(run_dir)
    device, world, rank = dist.device, dist.world, dist.rank
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    optim = make_optimizer(model, settings)
    start_epoch, start_step, gstep, state_at = 1, 0, 0, None
    tail, tail_sum, tail_n = tail_epochs(settings), None, 0
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
    net = dist.wrap(model, settings.norm)
    compiling = None
    if settings.compile:
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

    described = {k: v for k, v in {**dataclasses.asdict(settings), **(network or {})}.items()
                 if isinstance(v, (int, float, str, bool, list))}
    schedule = None
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
        checkpointing.prune_checkpoints(run_dir, state_at, settings.keep_epochs)

    for epoch in range(start_epoch, settings.epochs + 1):
        plan = epoch_plan(epoch, epoch_generator(settings.seed, epoch)).to(device)   # one copy per epoch
        batches = math.ceil(len(plan) / settings.batch)
        if schedule is None:        # every epoch has as many steps: the first one's plan says how many
            schedule = make_schedule(optim, settings, batches, done=gstep)
        net.train()
        first = start_step if epoch == start_epoch else 0
        bar = progress(range(first, batches), dist, desc=f"{run_dir.name} e{epoch}", total=batches,
                       initial=first)
        acc, seen, n_local, t_log = {}, 0, 0, time.time()
        for step in bar:
            rows = plan[step * settings.batch:(step + 1) * settings.batch]
            global_n = len(rows)
            rows = rows[rank::world]
            lr = optim.param_groups[0]["lr"]
            optim.zero_grad(set_to_none=True)
            with distributed.autotune(global_n == settings.batch):
                loss_sum, stats = batch_loss(net, rows)
                (loss_sum * world / global_n).backward()
            optim.step()
            schedule.step()
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
            if (step + 1) % settings.log_every == 0 or last:
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
            if dist.main and not last and checkpointing.state_due(on_gpu, settings, epoch, step + 1, time.monotonic() - last_state):
                save(epoch, step + 1, with_state=True)
        if epoch > settings.epochs - tail:          # in the averaged tail (every rank: DDP's weights agree)
            weights = model.state_dict()
            tail_sum = {k: v.detach().clone() if tail_sum is None else tail_sum[k] + v for k, v in weights.items()
                        if v.is_floating_point()}
            tail_n += 1
            if epoch == settings.epochs:
                if dist.main and tail_n < tail:
                    print(f"averaging the last {tail_n} epochs' weights, not {tail}: resumed from a state "
                          f"that held no sum of the earlier ones", flush=True)
                model.load_state_dict({k: tail_sum[k] / tail_n if k in tail_sum else v for k, v in weights.items()})
        if dist.main:
            save(epoch, None, checkpointing.state_due(on_gpu, settings, epoch, None, time.monotonic() - last_state))
            if on_epoch_end:
                on_epoch_end(epoch, model)
    return model


def tail_epochs(settings):
    """How many last epochs' weights the final weights average (average_tail, a fraction of the
    epochs); 0 when fewer than two: nothing is averaged."""
    tail = round(settings.epochs * settings.average_tail)
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
    supplies what the command line leaves out (make_optimizer, make_schedule)."""
    p.add_argument("--optim", default=None, choices=["adam", "adamw"], help="optimizer (profile; the recipe: adam)")
    p.add_argument("--lr", type=float, default=None, help="learning rate, the peak for onecycle (profile)")
    p.add_argument("--betas", type=float, nargs=2, default=None, help="Adam betas (profile; the recipe: 0.5 0.999)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (profile)")
    p.add_argument("--schedule", default=None, choices=SCHEDULES, help="lr schedule (profile; the recipe: halve)")
    p.add_argument("--halve-views", type=int, default=None,
                   help="halve: views per image between halvings (profile; the recipe: 8, once per 8-view epoch)")


def make_optimizer(model, settings):
    """The recipe's Adam (betas, no weight decay), or AdamW with weight_decay; on a GPU torch's
    fused kernel (fused_adam), elsewhere its default, whose CPU results the resume tests compare
    bit for bit."""
    params, betas = list(model.parameters()), tuple(settings.betas)
    fused = {"fused": True} if fused_adam(params) else {}
    if settings.optim == "adam":
        return torch.optim.Adam(params, lr=settings.lr, betas=betas, **fused)
    return torch.optim.AdamW(params, lr=settings.lr, betas=betas, weight_decay=settings.weight_decay, **fused)


def fused_adam(params):
    """Whether Adam runs fused: every parameter a floating-point tensor on a GPU. One kernel
    launch for all the parameters instead of several per tensor (ResNet34: 110 tensors per
    step); the same update up to rounding."""
    return bool(params) and all(p.device.type == "cuda" and p.is_floating_point() for p in params)


def make_schedule(optim, settings, batches, done=0):
    """torch's learning-rate scheduler of the run, `batches` steps per epoch, stepped after every
    optimizer step, at step `done` (a resumed run: replayed from the start, so a rate is a
    function of the step alone, as in an uninterrupted run, and a state need not carry it).

    halve:    the recipe: StepLR, lr halved after every `halve_views` views per image (the recipe
              trains 8 views per epoch and halves per epoch: halve_views = 8 = views).
    onecycle: OneCycleLR without its momentum cycling: from lr/25 up to lr over the first WARMUP
              of the steps, then down to lr/25e4, both on a cosine.
    """
    for group in optim.param_groups:        # a resumed optimizer holds the rate it stopped at
        group["lr"] = settings.lr
        group.pop("initial_lr", None)
    if settings.schedule == "halve":
        if settings.halve_views % settings.views:
            common.fail(f"--halve-views {settings.halve_views}: the rate is halved at epoch ends, so it "
                        f"counts whole epochs of --views {settings.views}; use a multiple of it")
        schedule = torch.optim.lr_scheduler.StepLR(optim, step_size=batches * settings.halve_views // settings.views,
                                                   gamma=0.5)
    else:
        total = settings.epochs * batches
        # OneCycleLR divides by its warm-up's length in steps less one: zero for a warm-up of one
        # step (4 in all), which a hair more warm-up avoids without moving any step's rate
        warmup = WARMUP * (1 + 1e-9) if WARMUP * total == 1 else WARMUP
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optim, max_lr=settings.lr, total_steps=total, pct_start=warmup, anneal_strategy="cos",
            cycle_momentum=False, div_factor=25.0, final_div_factor=1e4)
    with warnings.catch_warnings():         # a replay steps the scheduler before the optimizer
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(done):
            schedule.step()
    return schedule


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
