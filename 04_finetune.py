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
`--precision` chooses bf16 autocast or float32. `--average-tail f` (the cpu profile: 0.375) makes
the last epoch's weights, the ones evaluated and described by 05, the mean of the last f of the
epochs' (training.fit).
The trainer and its evaluator are one script in two roles, as in the recipe: they share the
fold's data and the task's targets. The evaluator, and the trainer's supervision of it, are in
evaluator.py.

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
import traceback
from pathlib import Path

import numpy as np
import torch

import checkpointing
import common
import devices
import distributed
import evaluator
import inference
import models
import pixels
import reporting
import tasks
import training

# -----------------------------------------------------------------------------
SEED = 0               # init of the new head; epoch RNGs derive from it too

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
p.add_argument("--arch", default=None, choices=models.ARCHS, help="network (profile); must match 03 with --init jigsaw")
p.add_argument("--width", type=int, default=None, help="a ResNet's first-stage channels (profile; the recipe: 64); must match 03 with --init jigsaw")
p.add_argument("--epochs", type=int, default=None, help="epochs (profile; the recipe: 5, later 10)")
p.add_argument("--batch", type=int, default=None, help="global batch size (profile)")
p.add_argument("--views", type=int, default=None, choices=range(1, 9), metavar="1-8",
               help="views per image per epoch: 8 = all (recipe), fewer = random ones (profile)")
p.add_argument("--ckpt-every", type=int, default=None, help="on a CPU: steps between mid-epoch checkpoints (profile)")
p.add_argument("--ckpt-minutes", type=float, default=checkpointing.CKPT_MINUTES,
               help="on a GPU: minutes of training between resumable checkpoints")
p.add_argument("--loss", default=None, choices=["mse", "ce"],
               help="onehot's loss: mse on the one-hot (the recipe) or ce, a cross-entropy classifier (profile)")
training.add_optimizer_options(p)
p.add_argument("--average-tail", type=float, default=None,
               help="the last epoch's weights: the mean of the last epochs' (this fraction of them; 0: off) (profile)")
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
p.add_argument("--precision", default=None, choices=inference.PRECISIONS,
               help="bf16 autocast: auto = on GPUs and CPUs with native bf16 (profile)")


# -----------------------------------------------------------------------------
def build(args, outputs, device):
    model = models.build_model(args.arch, outputs, width=args.width)
    if args.init == "xavier":
        models.xavier_init(model)
    if args.init == "jigsaw":
        _, path = checkpointing.finished_checkpoint(args.jigsaw, "04 --init jigsaw",
                                                    setup={"input_hvr": args.input_hvr})   # pretrained on our store
        state = checkpointing.load_weights(path)
        trained = (state["config"].get("arch"), state["config"].get("width", models.WIDTH))
        if trained != (args.arch, args.width):
            common.fail(f"--arch {args.arch} --width {args.width} but {args.jigsaw} trained {trained[0]} "
                        f"of width {trained[1]}")
        models.load_backbone(model, state["model"])
    return model.to(device)


# -----------------------------------------------------------------------------
class Batches:
    """The recipe's training batches: each epoch, `views` views of every image (all 8, or that
    many drawn at random per image) in a shuffled order; a batch's loss is the sum over its
    samples of every head's loss, weighted (a head without a target for the row weighs 0)."""

    def __init__(self, n, store, pos, vidx, targets, device, *, views, precision, task, loss):
        self.n, self.store, self.pos, self.vidx, self.device = n, store, pos, vidx, device
        self.views, self.precision, self.task, self.loss_kind = views, precision, task, loss
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

    def loss(self, net, rows):
        x = pixels.to_input(self.store[self.pos[rows[:, 0]]], rows[:, 1], self.vidx, channels_last=True)
        with inference.autocast(self.device, self.precision):
            out = net(x).float()
        losses = tasks.head_losses(self.task, self.loss_kind, out, self.y[rows[:, 0]]) * self.w[rows[:, 0]]
        return losses.sum(), {}


def train(args, run_dir, dist, on_epoch_end=None):
    images, ids, meta = pixels.load_store(args.hvr)
    device = dist.device
    train_df, _, _ = evaluator.task_data(args.folds, args.fold)
    date_stats = (float(train_df["sorting_date"].mean()), float(train_df["sorting_date"].std()))
    pos = pixels.store_rows(ids, train_df["object_id"], args.hvr)
    store = pixels.to_pixels(images[np.sort(pos.numpy())], device)  # only this fold's photos
    pos = torch.from_numpy(np.searchsorted(np.sort(pos.numpy()), pos.numpy())).to(device)
    y, w = (t.to(device) for t in evaluator.targets(args.task, train_df, args.folds, date_stats))
    vidx = pixels.view_index(meta["size"]).to(device)
    training.banner("04", args.profile, dist, task=args.task, fold=args.fold, train=len(train_df),
                    size=meta["size"], arch=args.arch, init=args.init, epochs=args.epochs,
                    schedule=f"{args.optim}/{args.schedule}/lr={args.lr:g}")
    batches = Batches(len(train_df), store, pos, vidx, (y, w), device, views=args.views, precision=args.precision,
                      task=args.task, loss=args.loss)

    common.seed_everything(args.seed)
    model = build(args, tasks.TASK_DIMS[args.task], device)
    network = dict(vars(args), size=meta["size"], outputs=tasks.TASK_DIMS[args.task],
                   date_mean=date_stats[0], date_std=date_stats[1])
    training.fit(model, run_dir=run_dir, dist=dist, settings=training.FitSettings.pick(vars(args)),
                 network=network, epoch_plan=batches.plan, batch_loss=batches.loss, on_epoch_end=on_epoch_end)
    return network


# A run's results, removed with its checkpoints when it starts over (checkpointing.settle_checkpoints).
RUN_OUTPUTS = ("loss.csv", "eval.csv", inference.HELDOUT_VIEWS, "loss.png", "provenance.json")


def settle(args, run_dir):
    """Keep only what this run may continue from (the same options, 01, 02 and 03 as built now),
    and forget the evaluations of any epoch it will train again."""
    done = checkpointing.settle_checkpoints(run_dir, vars(args), RUN_OUTPUTS)
    common.forget_epochs_after(run_dir / "eval.csv", done)
    views = run_dir / inference.HELDOUT_VIEWS
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
        evaluation = evaluator.Evaluation(evaluator.Run.of(vars(args)), run_dir, dist, placement, __file__)
    try:
        network = train(args, run_dir, dist, on_epoch_end=evaluation.epoch_end if evaluation else None)
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
    stage.finish(dict(network, evaluator=evaluation.story))


def main():
    args = common.parse(p, "04")
    if not 0 <= args.average_tail <= 1:
        common.fail(f"--average-tail {args.average_tail:g}: a fraction of the epochs, from 0 (off) to 1")
    # what the run is built from, in its checkpoints: another build of them is another setup
    args.input_folds = checkpointing.input_identity(args.folds)
    args.input_hvr = checkpointing.input_identity(args.hvr)
    args.input_jigsaw = checkpointing.input_identity(args.jigsaw) if args.init == "jigsaw" else "none"
    training.configure_threads()
    dist = distributed.Dist()
    run_dir = Path(args.out) / common.run_name(args.task, args.fold, args.seed)
    if args.role == "evaluate":
        run_dir.mkdir(parents=True, exist_ok=True)
        evaluator.evaluate(evaluator.Run.of(vars(args)), run_dir, dist)
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
