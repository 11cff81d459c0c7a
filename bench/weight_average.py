"""Weight averaging at the end of the cpu profile's fine-tune: the last epoch's weights against the
uniform mean of the last K epochs' (every float tensor, BatchNorm's running statistics included),
each scored as the run scores its last epoch (8-view TTA mean, every held-out row of the fold).

The cpu profile's network (one four-head ResNet18 at 48 px, AdamW one-cycle) trains through the
real 04_finetune.py with every epoch's weights kept as trained (--keep-epochs all --average-tail 0),
one run per fold and seed asked for; a finished run (its DONE) is not trained again. The profile
took the best tail here, as the fraction --average-tail of 04 (profiles.py).

Printed per fold and seed, and the mean over them with the runs' spread (max - min):
  wa_f<fold>_s<seed>_last<K>_<head>_rmse   held-out era RMSE of the mean of the last K epochs
                                           (K = 1: the run's own last epoch, what 05 reads)
  wa_f<fold>_s<seed>_last<K>_bn_<head>_rmse   (--bn) the same mean with BatchNorm's running
                                           statistics recomputed over every view of the fold's
                                           training photos, as SWA does, not averaged

    python bench/weight_average.py --folds WORK/01_sgkfold --hvr WORK/02_hvr --out WORK/study-wa \
        [--fold 0 1 2] [--seeds 0] [--epochs 32] [--tails 1 2 4 8] [--write docs/weight-average.md]
"""
import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

import benchlib
import checkpointing
import common
import inference
import models
import pixels
import reporting
import tasks

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--folds", required=True, help="stage 01's directory")
p.add_argument("--hvr", required=True, help="stage 02's store (PROFILE=cpu: 48 px)")
p.add_argument("--out", required=True, help="the study's directory (its runs/)")
p.add_argument("--fold", nargs="+", default=["0", "1", "2"], choices=["0", "1", "2"])
p.add_argument("--seeds", nargs="+", type=int, default=[0])
p.add_argument("--epochs", type=int, default=32, help="the fine-tune's epochs (the budget's 32-epoch rungs)")
p.add_argument("--width", type=int, default=None, help="the network's first-stage channels (default: the cpu profile's)")
p.add_argument("--tails", nargs="+", type=int, default=[1, 2, 4, 8], help="K: the last K epochs averaged")
p.add_argument("--bn", action="store_true",
               help="also each mean with BatchNorm's statistics recomputed on the fold's training photos")
p.add_argument("--python", default=sys.executable)
p.add_argument("--write", default=None, help="also write the table as a markdown page here")

HEADS = ("target", "onehot", "sortingdate")


def train(args, fold, seed):
    """The run's directory, trained by 04 unless done."""
    runs = Path(args.out) / "runs"
    run_dir = runs / common.run_name("multi", fold, seed)
    if not common.is_done(run_dir):
        subprocess.run([args.python, "04_finetune.py", "--task", "multi", "--fold", fold, "--folds", args.folds,
                        "--hvr", args.hvr, "--jigsaw", Path(args.out) / "no_jigsaw", "--out", runs,
                        "--profile", "cpu", "--epochs", str(args.epochs), "--keep-epochs", "all",
                        "--average-tail", "0", "--seed", str(seed),
                        *(["--width", str(args.width)] if args.width else [])], check=True, cwd=benchlib.ROOT)
    return run_dir


def averaged(states):
    """The uniform mean of these checkpoints' weights (integer tensors: the last one's), and the
    last one's config."""
    last = states[-1]["model"]
    mean = {k: (sum(s["model"][k] for s in states) / len(states)) if v.is_floating_point() else v
            for k, v in last.items()}
    return mean, states[-1]["config"]


def recompute_bn(model, train_px, vidx, batch=256):
    """BatchNorm's running statistics measured again, for these weights, over every view of the
    fold's training photos (torch.optim.swa_utils.update_bn: a cumulative mean, no momentum)."""
    chunks = [train_px[i:i + batch] for i in range(0, len(train_px), batch)]      # views of train_px, no copy
    views = (pixels.to_input(c, torch.full((len(c),), v), vidx, channels_last=True) for v in range(8) for c in chunks)
    torch.optim.swa_utils.update_bn(views, model)       # one batch in memory at a time


def heldout_rmse(weights, config, px, vidx, y, train_px=None):
    """{head: era RMSE} of these weights' 8-view TTA mean on the held-out pixels, as 05 scores
    them; with train_px, BatchNorm's statistics recomputed first (recompute_bn)."""
    model = models.build_model(config["arch"], config["outputs"], config.get("width"))
    model.load_state_dict(weights)
    if train_px is not None:
        recompute_bn(model.to(memory_format=torch.channels_last), train_px, vidx)
    views = inference.predict_views(model, px, vidx, torch.device("cpu"), 256, precision=config.get("precision", "fp32"))
    mean = tasks.in_units("multi", views, config).mean(1).numpy()
    names = [tasks.column(t, d) for t in tasks.TASKS for d in range(tasks.TASK_DIMS[t])]
    return {h: float(((e - y) ** 2).mean() ** 0.5) for h, e in tasks.head_eras(pd.DataFrame(mean, columns=names)).items()}


def main():
    args = p.parse_args()
    images, ids, meta = pixels.load_store(args.hvr)
    vidx = pixels.view_index(meta["size"])
    rows = []
    for fold in args.fold:
        held, fit = (common.read_fold(args.folds, fold, side) for side in ("test", "train"))
        px = pixels.to_pixels(images[pixels.store_rows(ids, held["object_id"], args.hvr).numpy()], torch.device("cpu"))
        train_px = pixels.to_pixels(images[pixels.store_rows(ids, fit["object_id"], args.hvr).numpy()],
                                    torch.device("cpu")) if args.bn else None
        y = held["target"].to_numpy()
        for seed in args.seeds:
            ckpts = checkpointing.list_checkpoints(train(args, fold, seed))
            epochs = [path for _epoch, step, path in ckpts if step is None]
            tails = [k for k in args.tails if k <= len(epochs)]
            states = [checkpointing.load_checkpoint(path, "cpu") for path in epochs[-max(tails):]]    # each read once
            for k in tails:
                weights = averaged(states[-k:])
                recomputed = [(train_px, "_bn")] if train_px is not None and k > 1 else []
                for bn, tag in [(None, ""), *recomputed]:
                    rmse = heldout_rmse(*weights, px, vidx, y, bn)
                    rows.append({"fold": fold, "seed": seed, "last": k, "bn": "recomputed" if tag else "averaged", **rmse})
                    for head in HEADS:
                        benchlib.emit(f"wa_f{fold}_s{seed}_last{k}{tag}_{head}_rmse", f"{rmse[head]:.4f}", "")
    df = pd.DataFrame(rows)
    summary = df.groupby(["last", "bn"])[list(HEADS)].agg(["mean", lambda v: v.max() - v.min()])
    summary.columns = [f"{h} {'mean' if s == 'mean' else 'spread'}" for h, s in summary.columns]
    runs = len(df) // len(summary)
    table = "\n".join(["Per run:", "", reporting.markdown(df), "", f"Mean over the {runs} run(s) (fold x seed), and "
                       "the spread (max - min) of the runs:", "", reporting.markdown(summary.reset_index())])
    benchlib.publish(table, args.write, "Weight averaging: the last epoch against the mean of the last K",
                     __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
