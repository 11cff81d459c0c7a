"""The learned route to texture: the cpu profile's four-head network trained on C x C crops of the
photos at their own resolution (04 --crop, variants.py), against the whole photo at 48 px, alone
and in 06's blend, on the three folds of a finished PROFILE=cpu WORK.

Steps (each skipped when its DONE is there: the study resumes):
  1. 02 builds a second store from the same photos at --size (the real photos' long side: 224),
     --mode pad: each photo as it is, centred on an edge-replicated square (OUT/02_native);
  2. 04 trains `--task multi --crop C` on each fold as the cpu profile does (--epochs over it),
     scoring its held-out side from a grid of --eval-crops x --eval-crops crops in each of the
     8 views (OUT/04_finetune/multi_<k>);
  3. each head's era from its held-out outputs (the views' mean, as 04's evaluator scores): the
     RMSE of each alone, pooled and per fold; then 06's blend (non-negative least squares, each
     fold's rows predicted with the weights fitted on the others') of the WORK's own inputs
     (oof.csv: its networks' eras and meta_only), with and without the crop network's eras.

    python bench/crop_study.py --work work-real --photos data/raw/photos --out work-real/crops \
        [--crop 48 --epochs 24] [--write docs/crops.md]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import benchlib
import common
import stacking as stack
import tasks

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--work", required=True, help="a finished PROFILE=cpu WORK (01, 02, 06 done)")
p.add_argument("--photos", required=True, help="the photos that WORK's 02 read")
p.add_argument("--out", required=True, help="the study's own directory (its store and networks)")
p.add_argument("--size", type=int, default=224, help="the second store's side (default 224, the photos' long side)")
p.add_argument("--crop", type=int, default=48, help="04 --crop (default 48: the cpu profile's input size)")
p.add_argument("--eval-crops", type=int, default=3, help="04 --eval-crops (default 3: a 3 x 3 grid)")
p.add_argument("--epochs", type=int, default=None, help="04 --epochs (default: the cpu profile's)")
p.add_argument("--folds", default="0,1,2", help="the folds trained (a toy run: one)")
p.add_argument("--python", default=sys.executable)
p.add_argument("--write", default=None, help="also write the table as a markdown page here")


def stage(name, cmd, done, out):
    """Run one stage command (its output to OUT/study.log) unless `done` exists; its wall
    minutes, kept in OUT/minutes.json for a later run that finds it done."""
    kept = out / "minutes.json"
    minutes = json.loads(kept.read_text()) if kept.exists() else {}
    if done.exists():
        benchlib.note(f"{done.parent} is done: not rerun")
        return minutes.get(name, float("nan"))
    t0, log = time.time(), out / "study.log"
    with open(log, "a") as f:
        rc = subprocess.run([str(c) for c in cmd], cwd=benchlib.ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"{' '.join(map(str, cmd))} exited {rc}; the end of {log}:\n" + log.read_text()[-3000:])
    minutes[name] = (time.time() - t0) / 60
    common.write_text(kept, json.dumps(minutes, indent=1) + "\n")
    return minutes[name]


def crop_eras(run_dir):
    """{crop_<head>_model: Series of eras by object_id} of a finished run's held-out side."""
    views = np.load(run_dir / "heldout_views.npz")
    config = json.loads((run_dir / "provenance.json").read_text())["config"]
    mean_out = views["outputs"].mean(1)
    index = pd.Index(views["object_id"].astype(str), name="object_id")
    out = {}
    for t, cols in tasks.heads("multi"):
        era = tasks.era_prediction(t, config["loss"], torch.from_numpy(np.ascontiguousarray(mean_out[:, cols])),
                                   (config["date_mean"], config["date_std"]))
        if era is not None:
            out[f"crop_{t}_model"] = pd.Series(np.asarray(era, dtype=np.float64), index=index)
    return out


def table(rows):
    head = ["model", "pooled", *(f"fold {k}" for k in stack.K), "blend weights"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, (pooled, folds, weights) in rows.items():
        lines.append("| " + " | ".join([name, f"{pooled:.4f}", *(f"{v:.4f}" for v in folds), weights]) + " |")
    return "\n".join(lines)


def verdict(rows):
    """The page's conclusion: does the blend take the crop network, and what does it gain."""
    if "blend_with_crops" not in rows:
        return "No blend: it needs all three folds."
    gain = rows["blend"][0] - rows["blend_with_crops"][0]
    if gain > 0.001:
        return f"With the crop network's eras the blend's pooled CV is lower by {gain:.4f}."
    return (f"The crop network's eras do not lower the blend's pooled CV ({rows['blend_with_crops'][0]:.4f} "
            f"against {rows['blend'][0]:.4f}): not adopted.")


def main():
    args = p.parse_args()
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folds_dir, native, runs = work / "01_sgkfold", out / "02_native", out / "04_finetune"
    minutes = {"02": stage("02", [benchlib.ROOT / "02_hvr_augment.sh", "--photos", args.photos,
                                  "--ids", work / "00_validate" / "photos.csv", "--out", native,
                                  "--size", args.size, "--mode", "pad", "--python", args.python], native / "DONE", out)}
    trained = args.folds.split(",")
    for k in trained:
        extra = ["--epochs", args.epochs] if args.epochs else []
        minutes[f"04_{k}"] = stage(f"04_{k}", [args.python, "04_finetune.py", "--task", "multi", "--fold", k,
                                    "--folds", folds_dir, "--hvr", native, "--jigsaw", work / "03_jigsaw",
                                    "--out", runs, "--profile", "cpu", "--init", "scratch", "--crop", args.crop,
                                    "--eval-crops", args.eval_crops, *extra],
                                   runs / f"multi_{k}" / "DONE", out)
    for name, value in minutes.items():
        benchlib.emit(f"minutes_{name}", f"{value:.1f}", "min")

    _folds, oof_fold, y = benchlib.fold_labels(work)
    crop = {}
    for k in trained:            # each row from the network of its out-of-fold fold (held-out sides overlap)
        mine = oof_fold.index[oof_fold.astype(str) == k]
        for col, series in crop_eras(runs / f"multi_{k}").items():
            crop.setdefault(col, []).append(series.loc[mine])
    crop = pd.DataFrame({c: pd.concat(parts) for c, parts in crop.items()})
    rows_scored = oof_fold.index[oof_fold.astype(str).isin(trained)]      # the folds trained
    y, oof_fold, crop = y.loc[rows_scored], oof_fold.loc[rows_scored], crop.loc[rows_scored]
    oof = pd.read_csv(work / "06_stack" / "oof.csv", dtype={"object_id": str}).set_index("object_id").loc[rows_scored]
    whole = oof[[c for c in oof.columns if c.endswith("_model")] + ["meta_only"]]
    rows = {}
    for col in [*whole.columns, *crop.columns]:
        source = whole if col in whole else crop
        pooled, per_fold = benchlib.oof_scores(source[col], y, oof_fold)
        rows[col] = (pooled, per_fold, "")
        benchlib.emit(f"{col}_rmse", f"{pooled:.4f}", "")
    if len(trained) == len(stack.K):        # the blend is fitted across folds: all three
        for name, inputs in (("blend", whole), ("blend_with_crops", whole.join(crop))):
            pred, _test, final = stack.blend(inputs, inputs, y.to_numpy(), oof_fold)
            pooled, per_fold = benchlib.oof_scores(stack.out_of_fold(pred, oof_fold), y, oof_fold)
            weights = ", ".join(f"{c} {w:.3f}" for c, w in zip(inputs.columns, final.coef_))
            rows[name] = (pooled, per_fold, weights)
            benchlib.emit(f"{name}_rmse", f"{pooled:.4f}", "")
    print()
    print(table(rows))
    if args.write:
        command = " ".join(["python", "bench/crop_study.py", *sys.argv[1:]])
        common.write_text(Path(args.write), "\n".join([
            "# The learned route: a network on crops at the photos' own resolution", "",
            "```", command, "```", "",
            f"The cpu profile's four-head network, trained on {args.crop} x {args.crop} crops of a "
            f"{args.size}-pixel store (02 --mode pad: the photos as they are) and scored on a "
            f"{args.eval_crops} x {args.eval_crops} grid of crops in each of the 8 views (`crop_*`), beside "
            "the WORK's own whole-photo network at 48 px (`*_model`) and statistics' booster "
            "(`meta_only`). Pooled: RMSE over the out-of-fold rows; fold k: the rows whose out-of-fold "
            "fold is k. The blends are 06's (non-negative least squares, each fold's rows predicted "
            "with the weights fitted on the others'); their weights are those fitted on every row.", "",
            table(rows), "",
            verdict(rows), "",
            "Wall minutes of the study's own stages: " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items()) + ".", ""]))


if __name__ == "__main__":
    main()
