"""Stage 04: fine-tune a network on one task (or all four) of one fold, and evaluate every epoch.

Reads WORK/01_sgkfold, WORK/02_hvr, WORK/03_jigsaw. Writes WORK/04_finetune/<task>_<fold>/
(with --seed k > 0: <task>_<fold>_s<k>/, another network of the same task and fold):
  ckpt_e001.pt ...   each epoch's network (weights, epoch, config: the evaluator and 05 read them)
  state_e010.pt      the optimizer and RNG to continue from (training.fit: one, the newest)
  loss.csv           step, epoch, loss, images/s           eval.csv   one row per epoch
  heldout_views.npz  folds 0-2: the last epoch's 8-view outputs of the held-out side (05 uses them)
  loss.png, provenance.json, log.txt (from make), FAILED (only when it failed), DONE

    python 04_finetune.py --task word2vec --fold 2 --folds work/01_sgkfold --hvr work/02_hvr \
        --jigsaw work/03_jigsaw --out work/04_finetune --profile cpu

The tasks and their heads (sizes, targets, losses, eras): tasks.py. MSE for all four, as the
recipe; `--loss ce` makes onehot a cross-entropy classifier; `--task multi` trains one backbone
with all four heads on the sum of their losses.
`--precision` chooses bf16 autocast or float32. The variants the budget study measured and no
profile took (`--shift`, `--mixup`, `--photo-inputs`) live in variants.py, which hands 04 its
training batches (`Batches` here: the recipe's).
The trainer and its evaluator are one script in two roles, as in the recipe: they share the
fold's data and the task's targets.

Evaluation scores each epoch's checkpoint on the fold's held-out side and appends a row to
eval.csv: the loss, and the RMSE on the era target of every head that has one (target;
onehot's expected class; sortingdate's year mapped linearly to the era, 1550 -> 0 ... 1850 -> 3,
clipped); `rmse` is the run's first such head. Each epoch: the mean over `eval_views` views of
`eval_rows` rows (a fixed random subset; 0: all); the last epoch: all 8 views of every row, the
run's figure comparable with the recipe's. Fold `all` has no held-out labels: it scores (up to
1024 of) its own train rows instead.
Where the evaluator runs (--eval, make EVAL): `process`, the recipe and the default on a GPU,
is a second process (`--role evaluate`, started by `--role run`): it waits for each complete
epoch checkpoint, training never waits for it, its crash cannot stop training, and it exits when
the trainer dies; should it die or stall, the trainer says why and scores the rest inline.
`inline`, the default on a CPU (a second process would hold one of two cores for the whole run)
and on a GPU in an exclusive compute mode (a second process could not use it), scores each epoch
in the trainer's process at its end, while training waits.
"""
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import common
import devices
import pixels
import reporting
import tasks
import training
import variants

# -----------------------------------------------------------------------------
SEED = 0               # init of the new head; epoch RNGs derive from it too
EVAL_POLL = 0.2        # seconds between the evaluator's looks for a new checkpoint (a stat: free)
EVAL_GIVE_UP = 120.0   # seconds a checkpoint may stay unreadable before the evaluator fails
EVAL_LOG = "evaluator.log"   # the evaluator process's stderr
TRAINABLE_WHEN_FROZEN = ("layer3.", "layer4.", "fc.")   # the recipe's --freeze experiment

p = common.profile_parser(__doc__.split("\n")[0])
p.add_argument("--task", required=True, choices=tasks.NETS, help="one task, or multi: all four heads")
p.add_argument("--fold", required=True, choices=common.FOLDS)
p.add_argument("--folds", required=True, help="stage 01's directory")
p.add_argument("--hvr", required=True, help="stage 02's image store")
p.add_argument("--jigsaw", required=True, help="stage 03's directory")
p.add_argument("--out", required=True, help="this stage's directory (the run goes in <task>_<fold>/)")
p.add_argument("--role", default="run", choices=["run", "train", "evaluate"],
               help="run = train + evaluator process (what make calls)")
p.add_argument("--init", default=None, choices=["jigsaw", "scratch", "xavier"],
               help="start from 03's weights, or random: torchvision's init (scratch) or the seed's "
                    "xavier_normal with gain 0.02 (profile)")
p.add_argument("--arch", default=None, choices=training.ARCHS, help="network (profile); must match 03 with --init jigsaw")
p.add_argument("--width", type=int, default=None, help="a ResNet's first-stage channels (profile; the recipe: 64); must match 03 with --init jigsaw")
p.add_argument("--epochs", type=int, default=None, help="epochs (profile; the recipe: 5, later 10)")
p.add_argument("--batch", type=int, default=None, help="global batch size (profile)")
p.add_argument("--views", type=int, default=None, choices=range(1, 9), metavar="1-8",
               help="views per image per epoch: 8 = all (recipe), fewer = random ones (profile)")
p.add_argument("--ckpt-every", type=int, default=None, help="on a CPU: steps between mid-epoch checkpoints (profile)")
p.add_argument("--ckpt-minutes", type=float, default=training.CKPT_MINUTES,
               help="on a GPU: minutes of training between resumable checkpoints")
p.add_argument("--loss", default=None, choices=["mse", "ce"],
               help="onehot's loss: mse on the one-hot (the recipe) or ce, a cross-entropy classifier (profile)")
p.add_argument("--freeze", action="store_true", help="train only layer3, layer4 and the head")
training.add_optimizer_options(p)
p.add_argument("--keep-epochs", default=None, choices=["all", "last"],
               help="epoch-end checkpoints kept: all (the evaluator process reads them) or the last "
                    "(profile)")
p.add_argument("--eval-views", type=int, default=None, choices=(1, 8), help="views scored per epoch (profile)")
p.add_argument("--eval-rows", type=int, default=None, help="rows scored per epoch, 0: all (profile)")
p.add_argument("--seed", type=int, default=SEED, choices=range(0, 10), metavar="0-9",
               help="init and batch order; a seed other than 0 trains into <task>_<fold>_s<seed>/")
p.add_argument("--eval", default="auto", choices=["auto", "process", "inline"],
               help="the evaluator: a process of its own (the recipe), inline at epoch ends, or auto: "
                    "a process on a GPU that allows two, else inline (make EVAL)")
p.add_argument("--eval-stall", type=float, default=600.0,
               help="seconds an evaluator process may go without scoring an epoch once training has "
                    "ended, before it is stopped and the rest is scored inline")
p.add_argument("--compile", action="store_true", help="torch.compile the network (GPU)")
p.add_argument("--precision", default=None, choices=training.PRECISIONS,
               help="bf16 autocast: auto = on GPUs and CPUs with native bf16 (profile)")
variants.add_options(p)      # the study's variants: shifted views, mixup, photo inputs


# -----------------------------------------------------------------------------
def task_data(args):
    """(train frame, evaluation frame, its split name: heldout, or train for fold all)."""
    train = common.read_fold(args.folds, args.fold, "train")
    if args.fold == "all":
        held, split = train.iloc[:common.EVAL_TRAIN_ROWS], "train"
    else:
        held, split = common.read_fold(args.folds, args.fold, "test"), "heldout"
    return train, held, split


def targets(task, df, folds_dir, date_stats):
    """(y (N, D) float32, w (N, heads) float32 loss weights) for every head of the network."""
    parts = [tasks.head_targets(t, df, folds_dir, date_stats) for t, _ in tasks.heads(task)]
    return (torch.from_numpy(np.concatenate([y for y, _ in parts], 1)),
            torch.from_numpy(np.stack([w for _, w in parts], 1)))


def build(args, outputs, device, inputs=0):
    model = training.build_model(args.arch, outputs, inputs, width=args.width)
    if args.init == "xavier":
        training.xavier_init(model)
    if args.init == "jigsaw":
        _, path = training.finished_checkpoint(args.jigsaw, "04 --init jigsaw",
                                               setup={"input_hvr": args.input_hvr})   # pretrained on our store
        state = training.load_weights(path)
        trained = (state["config"].get("arch"), state["config"].get("width", training.WIDTH))
        if trained != (args.arch, args.width):
            common.fail(f"--arch {args.arch} --width {args.width} but {args.jigsaw} trained {trained[0]} "
                        f"of width {trained[1]}")
        training.load_backbone(model, state["model"])
    if args.freeze:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(TRAINABLE_WHEN_FROZEN)
    return model.to(device)


# -----------------------------------------------------------------------------
class Batches:
    """The recipe's training batches: each epoch, `views` views of every image (all 8, or that
    many drawn at random per image) in a shuffled order; a batch's loss is the sum over its
    samples of every head's loss, weighted (a head without a target for the row weighs 0)."""

    def __init__(self, args, n, store, pos, vidx, targets, extra, device):
        self.views, self.precision, self.device, self.n = args.views, args.precision, device, n
        self.task, self.loss_kind = args.task, args.loss
        self.store, self.pos, self.vidx, self.inputs = store, pos, vidx, extra
        self.y, self.w = targets

    def plan(self, epoch, g):
        """Rows (image, view) in the epoch's order."""
        n = self.n
        if self.views == 8:
            row, view = torch.arange(n).repeat_interleave(8), torch.arange(8).repeat(n)
        else:
            row = torch.arange(n).repeat_interleave(self.views)
            view = torch.rand(n, 8, generator=g).argsort(1)[:, : self.views].reshape(-1)
        plan = torch.stack([row, view], 1)
        return plan[torch.randperm(len(plan), generator=g)]

    def pixels(self, rows, offsets=None):
        return pixels.to_input(self.store[self.pos[rows[:, 0]]], rows[:, 1], self.vidx, channels_last=True,
                               offsets=offsets)

    def extra(self, rows):
        return None if self.inputs is None else self.inputs[rows[:, 0]]

    def forward(self, net, x, extra):
        with training.autocast(self.device, self.precision):
            return net(x, extra).float()

    def losses(self, out, rows):
        return tasks.head_losses(self.task, self.loss_kind, out, self.y[rows[:, 0]]) * self.w[rows[:, 0]]

    def loss(self, net, rows):
        return self.losses(self.forward(net, self.pixels(rows), self.extra(rows)), rows).sum(), {}


def train(args, run_dir, dist, on_epoch_end=None):
    images, ids, meta = pixels.load_store(args.hvr)
    device = dist.device
    train_df, _, _ = task_data(args)
    date_stats = (float(train_df["sorting_date"].mean()), float(train_df["sorting_date"].std()))
    pos = pixels.store_rows(ids, train_df["object_id"], args.hvr)
    store = pixels.to_pixels(images[np.sort(pos.numpy())], device)  # only this fold's photos
    pos = torch.from_numpy(np.searchsorted(np.sort(pos.numpy()), pos.numpy())).to(device)
    y, w = (t.to(device) for t in targets(args.task, train_df, args.folds, date_stats))
    extra = variants.photo_inputs(args.hvr, train_df["object_id"], args.photo_inputs)
    extra = None if extra is None else extra.to(device)
    vidx = pixels.view_index(meta["size"]).to(device)
    training.banner("04", args, dist, task=args.task, fold=args.fold, train=len(train_df),
                    size=meta["size"], arch=args.arch, init=args.init, epochs=args.epochs,
                    schedule=f"{args.optim}/{args.schedule}/lr={args.lr:g}")
    batches = variants.batches(args, Batches(args, len(train_df), store, pos, vidx, (y, w), extra, device),
                               train_df["object_id"])

    common.seed_everything(args.seed)
    inputs = 0 if extra is None else extra.shape[1]
    model = build(args, tasks.TASK_DIMS[args.task], device, inputs)
    config = dict(vars(args), log_every=training.LOG_EVERY, channels_last=True, size=meta["size"],
                  outputs=tasks.TASK_DIMS[args.task], inputs=inputs, date_mean=date_stats[0], date_std=date_stats[1])
    training.fit(model, run_dir=run_dir, dist=dist, config=config, epoch_plan=batches.plan,
                 batch_loss=batches.loss, on_epoch_end=on_epoch_end)
    return config


class Evaluator:
    """Scores a model on the fold's held-out side (fold all: its first train rows) and keeps
    eval.csv: one row per epoch, the loss and each era head's RMSE."""

    def __init__(self, args, run_dir, device):
        images, ids, meta = pixels.load_store(args.hvr)
        train_df, self.held, self.split = task_data(args)
        self.date_stats = (float(train_df["sorting_date"].mean()), float(train_df["sorting_date"].std()))
        self.px = pixels.to_pixels(images[pixels.store_rows(ids, self.held["object_id"], args.hvr).numpy()], device)
        self.y, self.w = targets(args.task, self.held, args.folds, self.date_stats)
        self.extra = variants.photo_inputs(args.hvr, self.held["object_id"], args.photo_inputs)
        self.boxes = variants.crop_boxes(args.hvr, self.held["object_id"], args.crop) if args.crop else None
        self.era = torch.tensor(self.held["target"].to_numpy(), dtype=torch.float32)
        n = len(self.held)     # the rows of an epoch's score: a fixed random subset, or all
        self.subset = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: args.eval_rows or n].sort().values
        self.args, self.device, self.path = args, device, run_dir / "eval.csv"
        self.eras = [t for t, _ in tasks.heads(args.task) if t in tasks.ERA_HEADS]
        self.columns = ["epoch", "split", "n", "views", "loss", "rmse", *map(tasks.eval_column, self.eras), "seconds"]

    def inputs(self):
        return 0 if self.extra is None else self.extra.shape[1]

    def done(self):
        return common.read_epoch_rows(self.path)

    def score(self, epoch, model):
        started = time.time()
        args = self.args
        last = epoch == args.epochs      # all 8 views of every row: the run's figure
        views = range(8 if last else args.eval_views)
        rows = torch.arange(len(self.held)) if last else self.subset
        extra = None if self.extra is None else self.extra[rows].to(self.device)
        outputs = variants.predict_views(vars(args), model, self.px[rows.to(self.px.device)], self.device,
                                         args.batch * 4, views, precision=args.precision, extra=extra,
                                         boxes=None if self.boxes is None else self.boxes[rows]).cpu()
        if last and self.split == "heldout":      # 05 describes this side with them, no second pass
            training.save_views(self.path.parent / training.HELDOUT_VIEWS, self.held["object_id"], outputs,
                                epoch=epoch, bf16=training.bf16(self.device, args.precision))
        mean_out = outputs.mean(1)
        y, w, era = self.y[rows], self.w[rows], self.era[rows]
        losses = tasks.head_losses(args.task, args.loss, mean_out, y)
        loss = ((losses * w).sum(0) / w.sum(0).clamp(min=1)).sum().item()
        rmse = {}
        for t, cols in tasks.heads(args.task):
            pred = tasks.era_prediction(t, args.loss, mean_out[:, cols], self.date_stats)
            if pred is not None:
                rmse[t] = ((pred - era) ** 2).mean().sqrt().item()
        first = rmse[self.eras[0]] if self.eras else None
        values = [epoch, self.split, len(rows), len(views), f"{loss:.6g}", "" if first is None else f"{first:.6g}",
                  *(f"{rmse[t]:.6g}" for t in self.eras), f"{time.time() - started:.2f}"]
        done = self.done()
        done[epoch] = ",".join(map(str, values))
        common.write_text(self.path, ",".join(self.columns) + "\n" + "".join(done[e] + "\n" for e in sorted(done)))
        shown = ", ".join(f"{t} era RMSE {v:.4f}" for t, v in rmse.items())
        print(f"[04 eval] {self.path.parent.name} epoch {epoch}: {self.split} ({len(rows)} rows, {len(views)} view"
              f"{'s' if len(views) > 1 else ''}) loss {loss:.4f}" + (f", {shown}" if shown else ""), flush=True)


def evaluate(args, run_dir, dist):
    """The evaluator process (GPU): score each complete epoch checkpoint once, in order, then
    stop; stop too when the trainer that started it has died."""
    # the trainer's pid, handed down: read at start-up, getppid() could already be init's
    parent = int(os.environ.get("ATMA11_TRAINER_PID") or os.getppid())
    ev = Evaluator(args, run_dir, dist.device)
    model = training.build_model(args.arch, tasks.TASK_DIMS[args.task], ev.inputs(), args.width).to(dist.device)
    unreadable = {}
    while True:
        todo = [e for e in range(1, args.epochs + 1) if e not in ev.done()]
        if not todo:
            return
        ckpt = run_dir / common.ckpt_name(todo[0])
        if not ckpt.exists():        # complete checkpoints only: a write in progress has a temp name
            if os.getppid() != parent:
                common.fail(f"{run_dir}: the trainer died; the evaluator stops with it")
            time.sleep(EVAL_POLL)
            continue
        try:
            state = training.load_weights(ckpt)
        except training.UnreadableCheckpoint as e:   # a writer that skipped the atomic rename
            unreadable[ckpt] = unreadable.get(ckpt, 0) + 1
            if unreadable[ckpt] * EVAL_POLL > EVAL_GIVE_UP:
                common.fail(f"{ckpt}: unreadable for {EVAL_GIVE_UP:.0f}s ({e})")
            time.sleep(EVAL_POLL)
            continue
        training.check_network(ckpt, state, vars(args), "04's evaluator")
        model.load_state_dict(state["model"])
        ev.score(todo[0], model)


def evaluate_missing(args, run_dir, dist, ev):
    """Score the epochs whose checkpoint is there but not their eval.csv row (a kill between
    the two): before training resumes, since a profile may delete old epochs' checkpoints."""
    have = {e for e, step, _ in training.list_checkpoints(run_dir) if step is None}
    missing = [e for e in range(1, args.epochs + 1) if e not in ev.done() and e in have]
    if missing:
        model = training.build_model(args.arch, tasks.TASK_DIMS[args.task], ev.inputs(), args.width).to(dist.device)
        for epoch in missing:
            path = run_dir / common.ckpt_name(epoch)
            state = training.load_weights(path)
            training.check_network(path, state, vars(args), "04's evaluator")
            model.load_state_dict(state["model"])
            ev.score(epoch, model)


def gpu_slot_fd():
    """[the descriptor of the GPU slot lock that devices.py on-gpu handed down], or []."""
    try:
        fd = int(os.environ.get("GPU_SLOT_FD", ""))
        os.fstat(fd)
        return [fd]
    except (ValueError, OSError):
        return []


class Evaluation:
    """A run's evaluation: a process of its own (the recipe's watcher of checkpoints), or inline
    at each epoch end. A process that dies, or stalls once training has ended, hands over to
    inline scoring of what it left, and the run says why: the trainer never waits without bound."""

    def __init__(self, args, run_dir, dist, placement):
        self.args, self.run_dir, self.dist = args, run_dir, dist
        self.proc, self.inline, self.story = None, None, placement
        if placement == "process":
            argv = [a for a in sys.argv[1:] if a not in ("--role", "run")]
            env = dict(os.environ, TORCH_THREADS="1", WORLD_SIZE="1", RANK="0", LOCAL_RANK="0",
                       LOCAL_WORLD_SIZE="1", ATMA11_TRAINER_PID=str(os.getpid()))
            self.log = run_dir / EVAL_LOG
            with open(self.log, "a") as err:     # its last line says why, should it die
                self.proc = subprocess.Popen([sys.executable, __file__, *argv, "--role", "evaluate"], env=env,
                                             stderr=err, pass_fds=gpu_slot_fd())   # the GPU stays held while it lives
            print(f"[04] evaluator: a process of its own (pid {self.proc.pid}), stderr in {self.log}", flush=True)
        else:
            self.go_inline()

    def go_inline(self, why=None):
        if why:
            print(f"[04] {why}: the held-out side is scored inline from here on", flush=True)
            self.story = f"process, then inline: {why}"
        self.proc, self.inline = None, Evaluator(self.args, self.run_dir, self.dist.device)
        evaluate_missing(self.args, self.run_dir, self.dist, self.inline)   # a kill between a checkpoint and its row

    def died(self):
        """Why the evaluator process ended before its work, or None while it lives (or succeeded)."""
        code = self.proc.poll()
        if code in (None, 0):
            return None
        tail = [l for l in self.log.read_text(errors="replace").splitlines() if l.strip()][-1:] if self.log.exists() else []
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        return f"the evaluator process {how}" + (f" ({tail[0].strip()[:200]})" if tail else "")

    def epoch_end(self, epoch, model):
        if self.proc is not None and (why := self.died()):
            return self.go_inline(why)          # scores this epoch too: its checkpoint is written
        if self.inline is not None:
            self.inline.score(epoch, model)

    def finish(self):
        """Every epoch scored: the process's rows awaited (the clock restarts at each new one),
        then whatever is missing scored inline."""
        if self.proc is not None:
            rows, since = len(common.read_epoch_rows(self.run_dir / "eval.csv")), time.time()
            while self.proc.poll() is None and time.time() - since < self.args.eval_stall:
                time.sleep(EVAL_POLL)
                now = len(common.read_epoch_rows(self.run_dir / "eval.csv"))
                rows, since = now, (time.time() if now > rows else since)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                self.go_inline(f"the evaluator process scored no epoch for {self.args.eval_stall:.0f}s and was stopped")
            elif why := self.died():
                self.go_inline(why)
        if self.inline is not None:
            evaluate_missing(self.args, self.run_dir, self.dist, self.inline)
        missing = [e for e in range(1, self.args.epochs + 1) if e not in common.read_epoch_rows(self.run_dir / "eval.csv")]
        if missing:
            common.fail(f"{self.run_dir}: epochs {missing} were not evaluated and their checkpoints are gone; "
                        f"rerun to train and evaluate them")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


# A run's results, removed with its checkpoints when it starts over (training.settle_checkpoints).
RUN_OUTPUTS = ("loss.csv", "eval.csv", training.HELDOUT_VIEWS, "loss.png", "provenance.json")


def settle(args, run_dir):
    """Keep only what this run may continue from (the same options, 01, 02 and 03 as built now),
    and forget the evaluations of any epoch it will train again."""
    done = training.settle_checkpoints(run_dir, vars(args), RUN_OUTPUTS)
    common.forget_epochs_after(run_dir / "eval.csv", done)
    views = run_dir / training.HELDOUT_VIEWS
    if views.exists() and done < args.epochs:
        views.unlink()


def run(args, run_dir, dist, stage):
    """Training and its evaluation (EVAL: a second process, or inline at epoch ends); DONE when
    both succeeded. stage: the run's common.Stage (rank 0's; None on the others)."""
    evaluation = None
    if dist.main:
        lock = open(run_dir / ".running", "w")     # `make status`: held while this run is alive
        common.lock(lock, run_dir / ".running")
        (run_dir / "FAILED").unlink(missing_ok=True)
        placement, why = devices.evaluator_placement(dist.device, args.eval)
        if placement == "process" and args.keep_epochs != "all":
            common.fail(f"--eval process: the evaluator reads every epoch's checkpoint, and profile "
                        f"{args.profile} keeps the last one only; use --eval inline (make EVAL=inline)")
        print(f"[04] evaluator placement: {placement} ({why})", flush=True)
        evaluation = Evaluation(args, run_dir, dist, placement)
    try:
        config = train(args, run_dir, dist, on_epoch_end=evaluation.epoch_end if evaluation else None)
        if evaluation:
            evaluation.finish()
    except BaseException:
        if dist.main:
            evaluation.stop()
            common.write_text(run_dir / "FAILED", traceback.format_exc().strip().splitlines()[-1] + "\n")
        raise
    if not dist.main:
        return
    reporting.plot_curves(run_dir / "loss.png", run_dir / "loss.csv", ["loss"], f"{run_dir.name}: training loss")
    stage.finish(dict(config, evaluator=evaluation.story))


def main():
    args = common.parse(p, "04")
    # what the run is built from, in its checkpoints: another build of them is another setup
    args.input_folds = training.input_identity(args.folds)
    args.input_hvr = training.input_identity(args.hvr)
    args.input_jigsaw = training.input_identity(args.jigsaw) if args.init == "jigsaw" else "none"
    training.configure_threads()
    dist = training.Dist()
    run_dir = Path(args.out) / common.run_name(args.task, args.fold, args.seed)
    if args.role == "evaluate":
        run_dir.mkdir(parents=True, exist_ok=True)
        evaluate(args, run_dir, dist)
    else:
        stage = common.Stage(run_dir) if dist.main else None
        if dist.main:
            settle(args, run_dir)
        dist.barrier()          # under torchrun (--role train), the other ranks read what rank 0 kept
        if args.role == "train":
            train(args, run_dir, dist)
        else:
            run(args, run_dir, dist, stage)
    dist.close()


if __name__ == "__main__":
    main()
