"""The statistics-only booster (06's meta_only): the recipe's LightGBM parameters against
06's META_PARAMS, on a WORK whose stages 01 and 02 are done (the real data: 2 minutes of `make hvr`).

Two scores per parameter set, pooled over the 3 folds' out-of-fold rows:
  shared_rounds: each fold's booster trains on the other folds' rows for up to --rounds rounds;
                 the RMSE at every round count r, one r for all folds, and its minimum (an r
                 chosen once for 3 folds: less optimistic than each fold stopping on its own rows)
  as_06:         06's own cross_validate (each fold early-stopped on its held-out side)

    python bench/meta_params.py --work work-real
"""
import argparse
import importlib
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

import benchlib
import common

stack = importlib.import_module("06_stack")

# -----------------------------------------------------------------------------
ROUNDS = 1000     # the curve's length: both sets are past their minimum by then

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--work", required=True, help="a WORK with 01_sgkfold and 02_hvr done")
p.add_argument("--rounds", type=int, default=ROUNDS)


def curve(params, meta, y, folds, oof_fold, rounds):
    """Pooled out-of-fold RMSE after 1..rounds rounds, one round count for every fold."""
    squared = np.zeros(rounds)
    for k in stack.K:
        held = folds[k]["test"]["object_id"]
        fit = oof_fold.index[(oof_fold != k).to_numpy() & ~oof_fold.index.isin(held)]
        model = lgb.train(params, lgb.Dataset(meta.loc[fit], y.loc[fit]), num_boost_round=rounds)
        mine = oof_fold.index[oof_fold == k]       # the rows 06 scores with this fold
        per_tree = np.stack([model.predict(meta.loc[mine], start_iteration=r, num_iteration=1)
                             for r in range(rounds)])
        squared += ((np.cumsum(per_tree, 0) - y.loc[mine].to_numpy()) ** 2).sum(1)
    return np.sqrt(squared / len(oof_fold))


def main():
    args = p.parse_args()
    work = Path(args.work)
    read = lambda k, s: pd.read_csv(common.fold_csv(work / "01_sgkfold", k, s), dtype={"object_id": str})
    folds = {k: {"train": read(k, "train"), "test": read(k, "test")} for k in common.FOLDS}
    oof_fold = pd.read_csv(work / "01_sgkfold" / "oof_fold.csv", dtype={"object_id": str, "fold": str}
                           ).set_index("object_id")["fold"]
    meta = stack.meta_table(work / "02_hvr", "on").loc[oof_fold.index]
    y = folds["all"]["train"].set_index("object_id")["target"].loc[oof_fold.index]
    test = meta.iloc[:1]      # cross_validate's test side; unused here
    sets = {"recipe": (stack.LGB_PARAMS, stack.EARLY_STOP), "meta": (stack.META_PARAMS, stack.META_EARLY_STOP)}
    for name, (params, patience) in sets.items():
        rmse = curve(params, meta, y, folds, oof_fold, args.rounds)
        benchlib.emit(f"meta_only_{name}_shared_rounds_rmse", f"{rmse.min():.4f}", "")
        benchlib.emit(f"meta_only_{name}_shared_rounds_best", str(int(rmse.argmin()) + 1), "rounds")
        pred, *_rest = stack.cross_validate(meta, test, folds, oof_fold, params=params, patience=patience)
        pooled = pd.concat([pred[k].loc[oof_fold.index[oof_fold == k]] for k in stack.K]).loc[oof_fold.index]
        benchlib.emit(f"meta_only_{name}_as_06_rmse", f"{stack.rmse(pooled, y):.4f}", "")


if __name__ == "__main__":
    main()
