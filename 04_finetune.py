"""Stage 04: fine-tune the jigsaw network on one task of one fold, with its evaluator beside it.

Reads WORK/01_sgkfold, WORK/02_hvr, WORK/03_jigsaw. Writes WORK/04_finetune/<task>_<fold>/:
  ckpt_e001.pt ...   checkpoints (the epoch-end ones are kept: the evaluator and 05 read them)
  loss.csv           step, epoch, loss, images/s           eval.csv   one row per epoch
  loss.png, provenance.json, log.txt (from make), FAILED (only when it failed), DONE

    python 04_finetune.py --task word2vec --fold 2 --folds work/01_sgkfold --hvr work/02_hvr \
        --jigsaw work/03_jigsaw --out work/04_finetune --profile cpu

Tasks (head size): target (1: the era), onehot (4: the era one-hot), sortingdate (1: the year,
standardised with the fold's train-side mean and std, de-standardised on output), word2vec (20:
the material/technique embedding from 01; objects without names are masked out of the loss).
MSE for all four, as the recipe; `--loss ce` makes onehot a cross-entropy classifier.

The evaluator is a second process (`--role evaluate`, started by the default `--role run`): it
waits for each complete epoch checkpoint, scores the fold's held-out side with 8-view TTA (the
mean) and appends a row to eval.csv: the task's own loss, and the RMSE on the era target where
the task allows (target; onehot's expected class; sortingdate's year mapped linearly to the era,
1550 -> 0 ... 1850 -> 3, clipped). Fold `all` has no held-out labels: it scores (up to 1024 of)
its own train rows instead. Training never waits for it, and its crash cannot stop training;
the run is DONE only when both finished.
"""
import fcntl
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import common
import training

# -----------------------------------------------------------------------------
LR = 1e-3              # the recipe's Adam
BETAS = (0.5, 0.999)   # the recipe's Adam betas
SEED = 0               # init of the new head; epoch RNGs derive from it too
LOG_EVERY = 10         # steps between loss.csv rows
EVAL_POLL = 1.0        # seconds between the evaluator's looks for a new checkpoint
EVAL_GIVE_UP = 120.0   # seconds a checkpoint may stay unreadable before the evaluator fails
EVAL_TRAIN_ROWS = 1024 # fold `all`: train rows the evaluator scores (it has no held-out side)
TRAINABLE_WHEN_FROZEN = ("layer3.", "layer4.", "fc.")   # the recipe's --freeze experiment

p = common.profile_parser(__doc__.split("\n")[0], "04")
p.add_argument("--task", required=True, choices=common.TASKS)
p.add_argument("--fold", required=True, choices=common.FOLDS)
p.add_argument("--folds", required=True, help="stage 01's directory")
p.add_argument("--hvr", required=True, help="stage 02's image store")
p.add_argument("--jigsaw", required=True, help="stage 03's directory")
p.add_argument("--out", required=True, help="this stage's directory (the run goes in <task>_<fold>/)")
p.add_argument("--role", default="run", choices=["run", "train", "evaluate"],
               help="run = train + evaluator process (what make calls)")
p.add_argument("--init", default="jigsaw", choices=["jigsaw", "scratch"], help="start from 03's weights or random")
p.add_argument("--arch", default=None, choices=training.ARCHS, help="network (profile); must match 03 with --init jigsaw")
p.add_argument("--epochs", type=int, default=None, help="epochs (profile; the recipe: 5, later 10)")
p.add_argument("--batch", type=int, default=None, help="global batch size (profile)")
p.add_argument("--views", type=int, default=None, choices=range(1, 9), metavar="1-8",
               help="views per image per epoch: 8 = all (recipe), fewer = random ones (profile)")
p.add_argument("--ckpt-every", type=int, default=None, help="steps between mid-epoch checkpoints (profile)")
p.add_argument("--loss", default="mse", choices=["mse", "ce"], help="ce: cross-entropy for onehot")
p.add_argument("--freeze", action="store_true", help="train only layer3, layer4 and the head")
p.add_argument("--lr", type=float, default=LR)
p.add_argument("--seed", type=int, default=SEED)
p.add_argument("--compile", action="store_true", help="torch.compile the network (GPU)")


# -----------------------------------------------------------------------------
def task_data(args):
    """(train frame, eval frame, eval split name, targets builder) for the task and fold."""
    train = pd.read_csv(common.fold_csv(args.folds, args.fold, "train"), dtype={"object_id": str})
    if args.fold == "all":
        held, split = train.iloc[:EVAL_TRAIN_ROWS], "train"
    else:
        held, split = pd.read_csv(common.fold_csv(args.folds, args.fold, "test"), dtype={"object_id": str}), "heldout"
    return train, held, split


def targets(task, df, folds_dir, date_stats):
    """(y (N, D) float32, w (N,) float32 loss weights) in the space the network is trained in."""
    if task == "target":
        y = df[["target"]].to_numpy(np.float32)
    elif task == "onehot":
        y = np.eye(common.N_CLASSES, dtype=np.float32)[df["target"].to_numpy()]
    elif task == "sortingdate":
        y = ((df[["sorting_date"]].to_numpy(np.float32) - date_stats[0]) / date_stats[1])
    else:
        w2v = pd.read_csv(Path(folds_dir) / "word2vec.csv", dtype={"object_id": str}).set_index("object_id")
        y = w2v.loc[df["object_id"]].to_numpy(np.float32)
    w = (~np.isnan(y).any(axis=1)).astype(np.float32)       # word2vec: no names -> masked
    return torch.from_numpy(np.nan_to_num(y)), torch.from_numpy(w)


def per_sample_loss(task, kind, out, y):
    if task == "onehot" and kind == "ce":
        return F.cross_entropy(out, y.argmax(1), reduction="none")
    return ((out - y) ** 2).mean(1)


def era_prediction(task, kind, mean_out, date_stats):
    """The era (0..3, continuous) a task's TTA-mean output implies, or None (word2vec)."""
    if task == "target":
        return mean_out[:, 0]
    if task == "onehot":
        prob = mean_out.softmax(1) if kind == "ce" else mean_out.clamp(min=0)
        prob = prob / prob.sum(1, keepdim=True).clamp(min=1e-6)
        return prob @ torch.arange(common.N_CLASSES, dtype=prob.dtype)
    if task == "sortingdate":
        year = mean_out[:, 0] * date_stats[1] + date_stats[0]
        return ((year - 1550) / 100).clamp(0, 3)
    return None


def build(args, outputs, device):
    model = training.build_model(args.arch, outputs)
    if args.init == "jigsaw":
        ckpts = [c for c in training.list_checkpoints(args.jigsaw) if c[1] is None]
        if not common.is_done(args.jigsaw) or not ckpts:
            common.fail(f"{args.jigsaw}: no finished jigsaw run (make jigsaw), or use --init scratch")
        state = training.load_checkpoint(ckpts[-1][2])
        if state["config"].get("arch") != args.arch:
            common.fail(f"--arch {args.arch} but {args.jigsaw} trained {state['config'].get('arch')}")
        training.load_backbone(model, state["model"])
    if args.freeze:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(TRAINABLE_WHEN_FROZEN)
    return model.to(device)


# -----------------------------------------------------------------------------
def train(args, run_dir, dist):
    images, ids, meta = training.load_store(args.hvr)
    device, cuda = dist.device, dist.device.type == "cuda"
    train_df, _, _ = task_data(args)
    date_stats = (float(train_df["sorting_date"].mean()), float(train_df["sorting_date"].std()))
    pos = training.store_rows(ids, train_df["object_id"], args.hvr)
    store = training.to_pixels(images[np.sort(pos.numpy())], device)  # only this fold's photos
    pos = torch.from_numpy(np.searchsorted(np.sort(pos.numpy()), pos.numpy())).to(device)
    y, w = (t.to(device) for t in targets(args.task, train_df, args.folds, date_stats))
    vidx = training.view_index(meta["size"]).to(device)
    training.banner("04", args, dist, task=args.task, fold=args.fold, train=len(train_df),
                    size=meta["size"], arch=args.arch, init=args.init)

    def epoch_plan(epoch, g):
        n = len(train_df)
        if args.views == 8:
            row, view = torch.arange(n).repeat_interleave(8), torch.arange(8).repeat(n)
        else:
            row = torch.arange(n).repeat_interleave(args.views)
            view = torch.rand(n, 8, generator=g).argsort(1)[:, : args.views].reshape(-1)
        plan = torch.stack([row, view], 1)
        return plan[torch.randperm(len(plan), generator=g)]

    def batch_loss(net, rows):
        x = training.to_input(store[pos[rows[:, 0]]], rows[:, 1], vidx, channels_last=cuda)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out = net(x).float()
        return (per_sample_loss(args.task, args.loss, out, y[rows[:, 0]]) * w[rows[:, 0]]).sum(), {}

    common.seed_everything(args.seed)
    model = build(args, common.TASK_DIMS[args.task], device)
    config = dict(vars(args), lr=args.lr, betas=list(BETAS), log_every=LOG_EVERY, channels_last=cuda,
                  size=meta["size"], outputs=common.TASK_DIMS[args.task],
                  date_mean=date_stats[0], date_std=date_stats[1])
    training.fit(model, run_dir=run_dir, dist=dist, config=config, epoch_plan=epoch_plan,
                 batch_loss=batch_loss)
    return config


def evaluate(args, run_dir, dist):
    """The evaluator: score each complete epoch checkpoint once, in order, then stop."""
    images, ids, meta = training.load_store(args.hvr)
    device = dist.device
    train_df, held, split = task_data(args)
    date_stats = (float(train_df["sorting_date"].mean()), float(train_df["sorting_date"].std()))
    px = training.to_pixels(images[training.store_rows(ids, held["object_id"], args.hvr).numpy()], device)
    y, w = targets(args.task, held, args.folds, date_stats)
    era = torch.tensor(held["target"].to_numpy(), dtype=torch.float32)
    vidx = training.view_index(meta["size"]).to(device)
    model = training.build_model(args.arch, common.TASK_DIMS[args.task]).to(device)
    path = run_dir / "eval.csv"
    unreadable = {}
    while True:
        rows = read_eval(path)
        todo = [e for e in range(1, args.epochs + 1) if e not in rows]
        if not todo:
            return
        ckpt = run_dir / common.ckpt_name(todo[0])
        if not ckpt.exists():        # complete checkpoints only: a write in progress has a temp name
            time.sleep(EVAL_POLL)
            continue
        try:
            state = training.load_checkpoint(ckpt, device)
        except (RuntimeError, EOFError, OSError) as e:   # a writer that skipped the atomic rename
            unreadable[ckpt] = unreadable.get(ckpt, 0) + 1
            if unreadable[ckpt] * EVAL_POLL > EVAL_GIVE_UP:
                common.fail(f"{ckpt}: unreadable for {EVAL_GIVE_UP:.0f}s ({e})")
            time.sleep(EVAL_POLL)
            continue
        model.load_state_dict(state["model"])
        mean_out = training.predict_views(model, px, vidx, device, args.batch).mean(1).cpu()
        loss = (per_sample_loss(args.task, args.loss, mean_out, y) * w).sum() / w.sum().clamp(min=1)
        pred = era_prediction(args.task, args.loss, mean_out, date_stats)
        rmse = "" if pred is None else f"{((pred - era) ** 2).mean().sqrt().item():.6g}"
        rows[todo[0]] = f"{todo[0]},{split},{len(held)},{loss.item():.6g},{rmse}"
        common.write_text(path, "epoch,split,n,loss,rmse\n" + "".join(rows[e] + "\n" for e in sorted(rows)))
        print(f"[04 eval] {run_dir.name} epoch {todo[0]}: {split} loss {loss.item():.4f}"
              + (f", era RMSE {rmse}" if rmse else ""), flush=True)


def read_eval(path):
    lines = path.read_text().splitlines()[1:] if path.exists() else []
    return {int(l.split(",")[0]): l for l in lines}


def run(args, run_dir, dist):
    """Training here, the evaluator in a second process; DONE when both succeeded."""
    started = time.time()
    evaluator = None
    if dist.main:
        lock = open(run_dir / ".running", "w")     # `make status`: held while this run is alive
        fcntl.flock(lock, fcntl.LOCK_EX)
        (run_dir / "FAILED").unlink(missing_ok=True)
        argv = [a for a in sys.argv[1:] if a not in ("--role", "run")]
        env = dict(os.environ, TORCH_THREADS="1", WORLD_SIZE="1", RANK="0", LOCAL_RANK="0")
        evaluator = subprocess.Popen([sys.executable, __file__, *argv, "--role", "evaluate"], env=env)
        if dist.device.type == "cpu" and torch.get_num_threads() > 1:
            # The evaluator's core is its own: two processes whose thread pools overlap on the
            # same cores stall each other's barriers (measured here: training fell ~10x).
            torch.set_num_threads(torch.get_num_threads() - 1)
    try:
        config = train(args, run_dir, dist)
    except BaseException:
        if evaluator:
            evaluator.terminate()
            evaluator.wait()
        if dist.main:
            common.write_text(run_dir / "FAILED", traceback.format_exc().strip().splitlines()[-1] + "\n")
        raise
    if not dist.main:
        return
    if evaluator.wait() != 0:
        common.write_text(run_dir / "FAILED", f"evaluator exited with {evaluator.returncode}\n")
        common.fail(f"{run_dir}: the evaluator failed (exit {evaluator.returncode}); "
                    f"training is complete: rerun to evaluate the missing epochs")
    training.plot_curves(run_dir / "loss.png", run_dir / "loss.csv", ["loss"], f"{run_dir.name}: training loss")
    common.write_provenance(run_dir, config, started)
    common.mark_done(run_dir)


def main():
    args = common.parse(p, "04")
    training.configure_threads()
    dist = training.Dist()
    run_dir = Path(args.out) / common.run_name(args.task, args.fold)
    if args.role == "evaluate":
        run_dir.mkdir(parents=True, exist_ok=True)
        evaluate(args, run_dir, dist)
    else:
        if dist.main:
            common.start_stage(run_dir)
        (train if args.role == "train" else run)(args, run_dir, dist)
    dist.close()


if __name__ == "__main__":
    main()
