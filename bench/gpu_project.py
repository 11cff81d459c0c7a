"""bench/gpu.sh's last step: per-epoch rates of the 03 and 04 runs it made, and the projected wall
time of the whole profile (its epochs, 4 tasks x 4 folds of fine-tunes, 16 feature runs) on one
GPU like this one and on four.

Measured (by gpu.sh, in WORK): 02 over every photo; 03 for one epoch (or part of one, when its
time limit stopped it); one 04 run (task target, fold 0) for one epoch with its evaluator; one 05
run on that model. A rate is the logged images over the logged seconds of loss.csv (every
interval's images over its wall time, checkpoint writes included), its first interval left out
where there are others: that one holds cuDNN's autotuning and the first kernels' loading, paid
once per run, so it counts in the run's fixed cost (start, store load, autotuning, last
evaluation, files): its wall time less its images at the steady rate.

What is counted is what the profile trains on (devices.profile_images: 03 on every photo where
the profile says holdout_trains, as `full` does; each fold's own train rows for 04; 05 over every
object for every network). Four GPUs: 03 under DDP at four times the rate times --ddp-efficiency
(DDP_EFFICIENCY, an assumption, printed beside the figures: a one-GPU machine cannot measure
NCCL's all-reduce or SyncBatchNorm's statistics across GPUs; a four-GPU host does, with the
command bench/gpu.sh names), the 16 fine-tunes and 16 feature runs four at a time, longest
first, as make -j4 would at best. The evaluators run beside their trainers and are not counted; 06/07
(LightGBM, on the CPU) are not in it: `make bench` measures them.

    python bench/gpu_project.py --work WORK --profile full --walls 02=12.1,03=250,04=40,05=9
"""
import argparse
import heapq
import json
from pathlib import Path

import benchlib
import tasks

common = benchlib.common

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--work", required=True)
p.add_argument("--profile", required=True, choices=sorted(common.PROFILES))
p.add_argument("--walls", required=True, help="stage=seconds,... as gpu.sh measured them (02, 03, 04, 05)")
p.add_argument("--prefix", default="gpu")
# An assumption, not a measurement: each step all-reduces ResNet34's gradients and SyncBatchNorm
# exchanges every BatchNorm layer's statistics, which no one-GPU run can time
DDP_EFFICIENCY = 0.8
p.add_argument("--ddp-efficiency", type=float, default=DDP_EFFICIENCY,
               help="four GPUs' 03 rate as a share of four times one GPU's (assumed)")


def logged(run_dir, batch, samples):
    """(images logged, steady images/s) of a one-epoch run's loss.csv: the rate over every
    interval but the first (autotuning) where there are others; `samples` is the epoch's size
    (its last batch is short when batch does not divide it)."""
    import pandas as pd
    log = pd.read_csv(Path(run_dir) / "loss.csv")
    images = log["step"].diff().fillna(log["step"].iloc[0]) * batch
    if log["step"].iloc[-1] * batch >= samples:          # the epoch ran to its end
        images.iloc[-1] -= log["step"].iloc[-1] * batch - samples
    steady = slice(1, None) if len(log) > 1 else slice(None)
    seconds = (images / log["images_per_s"]).iloc[steady].sum()
    return images.sum(), images.iloc[steady].sum() / seconds


def makespan(jobs, gpus):
    """Wall time of `jobs` (seconds each) on `gpus` GPUs, longest first onto the first free one."""
    free = [0.0] * gpus
    for job in sorted(jobs, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + job)
    return max(free)


def main():
    args = p.parse_args()
    import devices
    work = Path(args.work)
    walls = {k: float(v) for k, v in (kv.split("=") for kv in args.walls.split(","))}
    prof = common.PROFILES[args.profile]
    c3, c4 = prof["03"], prof["04"]
    photos = len((work / "02_hvr" / "ids.txt").read_text().split())
    rows = {f: len(common.read_fold(work / "01_sgkfold", f, "train")) for f in common.FOLDS}
    images = devices.profile_images(args.profile, photos, rows)
    trained03 = photos if c3["holdout_trains"] else photos - c3["holdout"]
    ran03 = work / "03_jigsaw" / "provenance.json"      # absent when its time limit stopped it
    ran03 = json.loads(ran03.read_text())["config"] if ran03.exists() else c3
    epoch03 = trained03 * ran03["views"] * ran03["perms"]        # the epoch 03 ran (--cpu: shorter)
    done03, rate03 = logged(work / "03_jigsaw", c3["batch"], epoch03)
    fixed03 = max(walls["03"] - done03 / rate03, 0.0)
    done04, rate04 = logged(work / "04_finetune" / "target_0", c4["batch"], rows["0"] * c4["views"])
    fixed04 = max(walls["04"] - done04 / rate04, 0.0)
    t = args.prefix
    benchlib.emit(f"{t}_ddp_efficiency_assumed", args.ddp_efficiency, "x")
    benchlib.emit(f"{t}_jigsaw_rate", rate03, "images/s")
    benchlib.emit(f"{t}_jigsaw_epoch", trained03 * c3["views"] * c3["perms"] / rate03, "s")
    if done03 < epoch03:
        benchlib.note(f"03 was stopped after {done03:.0f} samples of its epoch: its epoch time is extrapolated")
    benchlib.emit(f"{t}_finetune_rate", rate04, "images/s")
    benchlib.emit(f"{t}_finetune_epoch_fold0", rows["0"] * c4["views"] / rate04, "s")
    benchlib.emit(f"{t}_finetune_run_fixed", fixed04, "s")
    benchlib.emit(f"{t}_features_run", walls["05"], "s")
    runs04 = [fixed04 + rows[f] * c4["views"] * c4["epochs"] / rate04 for _ in tasks.TASKS for f in common.FOLDS]
    runs05 = [walls["05"]] * (len(tasks.TASKS) * len(common.FOLDS))
    for gpus in (1, 4):
        t03 = fixed03 + images["03"][0] / (rate03 * (1 if gpus == 1 else gpus * args.ddp_efficiency))
        t04, t05 = makespan(runs04, gpus), makespan(runs05, gpus)
        total = walls["02"] + t03 + t04 + t05
        tag = f"{t}_projected_{gpus}gpu"
        benchlib.emit(f"{tag}_03_jigsaw_{c3['epochs']}_epochs", t03 / 60, "min")
        benchlib.emit(f"{tag}_04_finetune_16_runs_{c4['epochs']}_epochs", t04 / 60, "min")
        benchlib.emit(f"{tag}_05_features_16_runs", t05 / 60, "min")
        benchlib.emit(f"{tag}_{args.profile}_profile", total / 60, "min")


if __name__ == "__main__":
    main()
