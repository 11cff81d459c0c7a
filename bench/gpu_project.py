"""bench/gpu.sh's last step: per-epoch times of the 03 and 04 runs it made, and the projected wall
time of the whole recipe (PROFILE's epochs, 16 fine-tunes, 16 feature runs) on this machine.

Measured (by gpu.sh, in WORK): 02 over every photo; 03 for one epoch (or part of one, when its
time limit stopped it); one 04 run (task target, fold 0) for one epoch with its evaluator; one 05
run on that model. An epoch's time is its samples over the mean rate that fit logged in loss.csv
(every interval's images over its wall time, checkpoint writes included); a run's fixed cost
(start, store load, last evaluation, files) is its wall time less the logged time.

Projection, one GPU, the Makefile's order (stages in turn, the 16 fine-tunes one at a time):
  02 + [03 fixed + E03 x epochs] + sum over 16 runs [04 fixed + E04 x epochs x rows / fold-0 rows]
  + 16 x (05 wall). 06/07 (LightGBM, on the CPU) are not in it: `make bench` measures them.

    python bench/gpu_project.py --work WORK --profile full --walls 02=12.1,03=250,04=40,05=9
"""
import argparse
from pathlib import Path

import benchlib

common = benchlib.common

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--work", required=True)
p.add_argument("--profile", required=True, choices=sorted(common.PROFILES))
p.add_argument("--walls", required=True, help="stage=seconds,... as gpu.sh measured them (02, 03, 04, 05)")
p.add_argument("--prefix", default="gpu")


def logged(run_dir, batch, samples):
    """(images logged, seconds logged, mean images/s) of a one-epoch run's loss.csv; `samples`
    is the epoch's size (its last batch is short when batch does not divide it)."""
    import pandas as pd
    log = pd.read_csv(Path(run_dir) / "loss.csv")
    images = log["step"].diff().fillna(log["step"].iloc[0]) * batch
    if log["step"].iloc[-1] * batch >= samples:          # the epoch ran to its end
        images.iloc[-1] -= log["step"].iloc[-1] * batch - samples
    seconds = (images / log["images_per_s"]).sum()
    return images.sum(), seconds, images.sum() / seconds


def main():
    args = p.parse_args()
    import pandas as pd
    work = Path(args.work)
    walls = {k: float(v) for k, v in (kv.split("=") for kv in args.walls.split(","))}
    prof = common.PROFILES[args.profile]
    photos = len((work / "02_hvr" / "ids.txt").read_text().split())
    c3, c4 = prof["03"], prof["04"]
    epoch03 = (photos - c3["holdout"]) * c3["views"] * c3["perms"]
    done03, secs03, rate03 = logged(work / "03_jigsaw", c3["batch"], epoch03)
    e03 = epoch03 / rate03
    fixed03 = max(walls["03"] - secs03, 0.0)
    rows = {f: len(pd.read_csv(common.fold_csv(work / "01_sgkfold", f, "train"))) for f in common.FOLDS}
    _, secs04, rate04 = logged(work / "04_finetune" / "target_0", c4["batch"], rows["0"] * c4["views"])
    e04 = rows["0"] * c4["views"] / rate04
    fixed04 = max(walls["04"] - secs04, 0.0)
    t = args.prefix
    benchlib.emit(f"{t}_jigsaw_rate", rate03, "images/s")
    benchlib.emit(f"{t}_jigsaw_epoch", e03, "s")
    if done03 < epoch03:
        benchlib.note(f"03 was stopped after {done03:.0f} of {epoch03} samples: its epoch time is extrapolated")
    benchlib.emit(f"{t}_finetune_rate", rate04, "images/s")
    benchlib.emit(f"{t}_finetune_epoch_fold0", e04, "s")
    benchlib.emit(f"{t}_finetune_run_fixed", fixed04, "s")
    benchlib.emit(f"{t}_features_run", walls["05"], "s")
    t03 = fixed03 + c3["epochs"] * e03
    t04 = sum(fixed04 + c4["epochs"] * e04 * rows[f] / rows["0"] for f in common.FOLDS) * len(common.TASKS)
    t05 = walls["05"] * len(common.TASKS) * len(common.FOLDS)
    total = walls["02"] + t03 + t04 + t05
    benchlib.emit(f"{t}_projected_02_hvr", walls["02"] / 60, "min")
    benchlib.emit(f"{t}_projected_03_jigsaw_{c3['epochs']}_epochs", t03 / 60, "min")
    benchlib.emit(f"{t}_projected_04_finetune_16_runs_{c4['epochs']}_epochs", t04 / 60, "min")
    benchlib.emit(f"{t}_projected_05_features_16_runs", t05 / 60, "min")
    benchlib.emit(f"{t}_projected_full_recipe", total / 60, "min")


if __name__ == "__main__":
    main()
