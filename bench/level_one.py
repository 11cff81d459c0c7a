"""06's per-photo models, as a run blends them: each per-photo booster from one seed against the
mean of one per seed (stacking.bagged over META_SEEDS), and a ridge on the booster's columns
(photo_ridge) beside them, its columns standardised against mapped to a normal by their quantiles.
On a WORK whose 06 finished (its network eras, WORK/06_stack/oof.csv, and its k-means features,
WORK/06_stack/kmeans.npz); each model scored as 06 scores it (out of fold, pooled, and per fold),
and the blend of the run's network eras with it (06's `blend`, nested).

Rows:
  <model> seed 0       meta_only / stats_only as one booster (06 before the bagging)
  <model> bagged       the same, the mean over stacking.META_SEEDS (06's)
  photo_ridge standardised / quantiles   the ridge on meta_only's columns (06's: quantiles)
  blend: ...           06's blend of the network eras with the models named

    python bench/level_one.py --work work-real [--write docs/level-one.md]
"""
import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import benchlib
import kmeans_features
import stacking as stack

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--work", required=True, help="a WORK whose 06 finished")
p.add_argument("--write", default=None, help="also write the table as a markdown page here")


def standardised(_rows):
    """The ridge with its columns standardised only (the row that lost to 06's quantiles)."""
    return make_pipeline(StandardScaler(), RidgeCV(alphas=stack.RIDGE_ALPHAS))


def main():
    args = p.parse_args()
    work = Path(args.work)
    folds, oof_fold, y = benchlib.fold_labels(work)
    meta = stack.meta_table(work / "02_hvr", "on")
    learned = kmeans_features.stored_photo_features(work / "02_hvr", work / "06_stack" / "kmeans.npz")
    tables = {"meta_only": meta.join(learned, how="left").loc[oof_fold.index], "stats_only": meta.loc[oof_fold.index]}
    run = pd.read_csv(work / "06_stack" / "oof.csv", dtype={"object_id": str}).set_index("object_id").loc[y.index]
    nets = run[stack.BLENDS["blend"]]

    rows, preds = [], {}

    def record(name, pred, columns, rounds="-"):
        preds[name] = pred.loc[y.index]
        pooled, per_fold = benchlib.oof_scores(preds[name], y, oof_fold)
        rows.append({"name": name, "columns": columns, "pooled": pooled, "rounds": rounds, "folds": per_fold})
        benchlib.emit(re.sub(r"[^a-z0-9]+", "_", name).strip("_") + "_rmse", f"{pooled:.4f}", "")

    for name, table in tables.items():
        pred, _test, rounds, _m = stack.bagged(table, None, folds, oof_fold, seeds=stack.META_SEEDS[:1])
        record(f"{name} seed 0", stack.out_of_fold(pred, oof_fold), table.shape[1], "/".join(map(str, rounds)))
        pred, _test, rounds, _m = stack.bagged(table, None, folds, oof_fold)
        record(f"{name} bagged", stack.out_of_fold(pred, oof_fold), table.shape[1], f"{np.mean(rounds):.0f} (mean)")
    for name, model in (("standardised", standardised), ("quantiles", stack.ridge_model)):
        pred, _test = stack.ridge_level_one(tables["meta_only"], y, None, oof_fold, model=model)
        record(f"photo_ridge {name}", stack.out_of_fold(pred, oof_fold), tables["meta_only"].shape[1])

    blends = {"blend: seed 0 boosters (06 before)": ["meta_only seed 0", "stats_only seed 0"],
              "blend: bagged boosters": ["meta_only bagged", "stats_only bagged"],
              "blend: seed 0 boosters, photo_ridge": ["meta_only seed 0", "stats_only seed 0", "photo_ridge quantiles"],
              "blend: bagged boosters, photo_ridge standardised": ["meta_only bagged", "stats_only bagged",
                                                                   "photo_ridge standardised"],
              "blend: bagged boosters, photo_ridge (06)": ["meta_only bagged", "stats_only bagged", "photo_ridge quantiles"]}
    for name, models in blends.items():
        inputs = nets.join(pd.DataFrame({m: preds[m] for m in models}))
        pred, *_rest = stack.blend(inputs, inputs, y.to_numpy(), oof_fold)
        record(name, stack.out_of_fold(pred, oof_fold), inputs.shape[1])
    table = benchlib.scores_table(rows, first="level-one model")
    benchlib.publish(table, args.write, "Level one: the per-photo models bagged, and a ridge beside them",
                     __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
