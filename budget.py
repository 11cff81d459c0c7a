"""The CPU hour as minutes of wall time, not a fixed amount of work: before the fine-tunes start,
a run measures this machine and picks the largest rung of LADDER whose predicted minutes, with
what the run has already spent, fit BUDGET. make writes the plan once into WORK/04_finetune/
(budget.txt for make, budget.json with the why), so a resume or a rerun keeps it; another BUDGET
plans again. Explicit SEEDS, an --epochs in FINETUNE_ARGS, or BUDGET=off pin the work instead.
Fine-tunes already finished in 04's directory without a plan (restored by `make sync-down`, which
archives runs, not 04's budget files) decide the rung themselves: work done is never replanned away.

    python budget.py plan --budget 60 --profile cpu --data DATA --folds WORK/01_sgkfold \
        --hvr WORK/02_hvr --nets 1 --out WORK/04_finetune

Prediction: the network's images trained and inferred (devices.profile_images) at the images/s
measured here just now (devices.measure_rates), times OVERHEAD; plus the minutes 00-02 took
(their provenance), plus 06 and 07's: AFTER, scaled by how long a fixed LightGBM fit (probe)
takes here against PROBE_REFERENCE. ATMA11_MEASURED_RATES="train,infer[,probe seconds]" replaces
the measurements (the tests inject a fast and a slow machine so; without the probe's seconds,
PROBE_REFERENCE's).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import common
import devices

# -----------------------------------------------------------------------------
# The rungs, cheapest first: (epochs, seeds) of the cpu profile's one four-head network per fold,
# each with its study row (docs/profiles.md, fold 0, target / onehot / sortingdate held-out RMSE):
LADDER = (
    (6, 1),      # 0.842 (the 6 / 12 / 24 epochs row)
    (12, 1),     # 0.831
    (24, 1),     # 0.808: the profile as it was sized, on a machine that trains at 110 images/s
    (32, 1),     # 0.811 / 0.809 / 0.811 against 24 epochs' 0.817 / 0.810 / 0.817 (ce_32)
    (24, 2),     # two seeds averaged: fold 0 0.811 (seeds alone 0.808, 0.823); real data pooled
                 # submission CV 0.7497 against one seed's 0.7514
    (32, 2),     # the two rows above together
    (32, 3),     # three: the real run's at 462 images/s (docs/results.md). What else the minutes
                 # could buy lost: 48 epochs 0.827 / 0.836 / 0.825 (ce_48), ResNet34 for 32 epochs
                 # 0.823 / 0.822 / 0.819 (resnet34_ce_32), each within one seed's spread (0.015)
)
# Data moved, evaluation and logs on top of the network's steps: in the real run of
# docs/results.md (462 images/s) a quiet fold run of 04 took 166-185 s against 169 s predicted
# with this factor, and 05's fold all 150 s against 150
OVERHEAD = 1.1
# 06 and 07 on the machine of docs/results.md: 06 (the k-means features learned, the stacks, the
# per-photo models) took 2.0 min of that run and 07 seconds; elsewhere scaled by the probe
# (LightGBM and numpy, not torch: their speed differs from the network's)
AFTER = 2.5            # minutes of 06 and 07 where probe() takes PROBE_REFERENCE seconds
PROBE_REFERENCE = 1.5  # seconds of probe() there, idle: `.venv/bin/python -c "import budget; print(budget.probe())"`
PLANNED_STAGES = ("00_validate", "01_sgkfold", "02_hvr")


def spent_minutes(work):
    """Minutes 00-02 took in this WORK, from their provenance (0 for a stage without one)."""
    total = 0.0
    for stage in PLANNED_STAGES:
        path = Path(work) / stage / "provenance.json"
        if path.exists():
            total += json.loads(path.read_text()).get("wall_seconds", 0) / 60
    return total


def probe():
    """Seconds of a fixed LightGBM fit with 06's booster settings on random rows and columns of
    about the real data's per-photo table's size: how fast 06 runs here."""
    import lightgbm as lgb
    import numpy as np
    import stacking
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 300))
    y = X[:, :10].sum(1) + rng.normal(size=len(X))
    started = time.perf_counter()
    lgb.train(stacking.META_PARAMS, lgb.Dataset(X, y), num_boost_round=300)
    return time.perf_counter() - started


def rates(profile):
    """(training images/s, inference images/s, probe seconds, how they were had)."""
    injected = os.environ.get("ATMA11_MEASURED_RATES", "").strip()
    if injected:
        values = [float(v) for v in injected.split(",")]
        train, infer, probed = (values + [PROBE_REFERENCE])[:3]
        return train, infer, probed, "injected (ATMA11_MEASURED_RATES)"
    train, infer = devices.measure_rates(profile)
    return train, infer, probe(), "measured just now"


def after_minutes(probed):
    """06 and 07's minutes on a machine where probe() took `probed` seconds."""
    return AFTER * probed / PROBE_REFERENCE


def predict(profile, photos, fold_rows, nets, rate_train, rate_infer):
    """{(epochs, seeds): minutes of 04 and 05} for every rung."""
    out = {}
    for epochs, seeds in LADDER:
        images = devices.profile_images(profile, photos, fold_rows, nets, seeds, epochs=epochs)
        seconds = sum(t / rate_train + i / rate_infer for stage, (t, i) in images.items() if stage != "03")
        out[(epochs, seeds)] = OVERHEAD * seconds / 60
    return out


def choose(budget, spent, predicted, after):
    """The most work that fits: the last rung whose spent + predicted + after <= budget; the
    cheapest when none does (and the plan says it is over)."""
    fitting = [rung for rung in LADDER if spent + predicted[rung] + after <= budget]
    return fitting[-1] if fitting else LADDER[0]


def finished_rung(out, profile):
    """(epochs, seeds) of the fine-tunes already finished in 04's directory (restored by
    sync-down, or planned by a budget file since removed), None when there are none: work done
    is kept, not replanned away by another measurement."""
    done = []
    for stamp in Path(out).glob("*/DONE"):
        parsed = common.parse_run_name(stamp.parent.name)
        if parsed:
            done.append((parsed, stamp.parent))
    if not done:
        return None
    words = [(d / "options.txt").read_text().split() if (d / "options.txt").exists() else [] for _p, d in done]
    epochs = {int(w[w.index("--epochs") + 1]) if "--epochs" in w[:-1] else common.PROFILES[profile]["04"]["epochs"]
              for w in words}
    return max(epochs), 1 + max(parsed[2] for parsed, _d in done)


def cmd_plan(args):
    out = Path(args.out)
    photos, fold_rows, _where = devices.photo_counts(Path(args.data), Path(args.folds))
    spent = spent_minutes(Path(args.hvr).parent)
    kept = finished_rung(out, args.profile)
    if kept:       # nothing measured: the finished runs' speed is theirs
        rate_train = rate_infer = probed = None
        predicted, after = {kept: 0.0}, AFTER
        epochs, seeds = kept
    else:
        rate_train, rate_infer, probed, how = rates(args.profile)
        predicted = predict(args.profile, photos, fold_rows, args.nets, rate_train, rate_infer)
        after = after_minutes(probed)
        epochs, seeds = choose(args.budget, spent, predicted, after)
    total = spent + predicted[(epochs, seeds)] + after
    fits = total <= args.budget
    if kept:
        why = (f"BUDGET={args.budget:g} min: {epochs} epochs x {seeds} seed{'s' if seeds > 1 else ''}, kept from "
               f"the fine-tunes already finished in {out} (their minutes are spent; nothing predicted)")
    else:
        why = (f"BUDGET={args.budget:g} min: {epochs} epochs x {seeds} seed{'s' if seeds > 1 else ''}, predicted "
               f"{total:.0f} min ({spent:.1f} spent in 00-02, {predicted[(epochs, seeds)]:.1f} for 04-05, {after:.1f} for "
               f"06-07) at {rate_train:.0f} images/s training, {rate_infer:.0f} inference, a {probed:.1f} s "
               f"probe for 06 ({how})"
               + ("" if fits else "; the cheapest rung, and still over the budget"))
    plan = {"budget_minutes": args.budget, "epochs": epochs, "seeds": seeds, "kept": bool(kept),
            "predicted_minutes": None if kept else round(total, 2),
            "spent_minutes": round(spent, 2), "after_minutes": round(after, 2), "fits": fits,
            "rates": {"train": rate_train, "infer": rate_infer, "probe_seconds": probed,
                      "how": "not measured" if kept else how},
            "ladder": [] if kept else [{"epochs": e, "seeds": s,
                                        "predicted_minutes": round(spent + predicted[(e, s)] + after, 2)}
                                       for e, s in LADDER], "why": why}
    out.mkdir(parents=True, exist_ok=True)
    common.write_json(out / "budget.json", plan)
    common.write_text(out / "budget.txt", words(plan) + "\n")    # last: make reads it
    print(f"[budget] {why}", flush=True)


def words(plan):
    """What make reads: the budget it was planned for, and the rung."""
    return f"budget={plan['budget_minutes']:g} epochs={plan['epochs']} seeds={plan['seeds']}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("plan", help="measure, choose the rung, write OUT/budget.json and OUT/budget.txt")
    q.add_argument("--budget", type=float, required=True, help="minutes of wall time for the whole run")
    q.add_argument("--profile", required=True, choices=sorted(common.PROFILES))
    q.add_argument("--data", required=True, help="the raw data (its train.csv and test.csv are counted)")
    q.add_argument("--folds", required=True, help="stage 01's directory")
    q.add_argument("--hvr", required=True, help="stage 02's directory (the run's WORK is its parent)")
    q.add_argument("--nets", type=int, default=1, help="networks per fold")
    q.add_argument("--out", required=True, help="04's directory")
    args = p.parse_args()
    if args.budget <= 0:
        common.fail(f"BUDGET={args.budget:g}: minutes, more than 0 (or off)")
    cmd_plan(args)


if __name__ == "__main__":
    sys.exit(main())
