"""The statistics-only booster (06's stats_only; its meta_only adds the k-means features): the
recipe's LightGBM parameters against 06's META_PARAMS, on a WORK whose stages 01 and 02 are
done (the real data: 2 minutes of `make hvr`).

Two scores per parameter set, pooled over the 3 folds' out-of-fold rows:
  shared_rounds: each fold's booster trains on the other folds' rows for up to --rounds rounds;
                 the RMSE at every round count r, one r for all folds, and its minimum (an r
                 chosen once for 3 folds: less optimistic than each fold stopping on its own rows)
  as_06:         06's own cross_validate (each fold early-stopped on its held-out side; for
                 META_PARAMS bagged over META_SEEDS, as 06 runs it)

    python bench/meta_params.py --work work-real
"""
import argparse

import lightgbm as lgb
import numpy as np

import benchlib
import stacking as stack

# -----------------------------------------------------------------------------
ROUNDS = 1000     # the curve's length: both sets are past their minimum by then

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--work", required=True, help="a WORK with 01_sgkfold and 02_hvr done")
p.add_argument("--rounds", type=int, default=ROUNDS)


def curve(params, meta, y, folds, oof_fold, rounds):
    """Pooled out-of-fold RMSE after 1..rounds rounds, one round count for every fold (LightGBM's
    own per-round l2 on the rows 06 scores with each fold)."""
    squared = np.zeros(rounds)
    for k in stack.K:
        held = folds[k]["test"]["object_id"]
        fit = oof_fold.index[(oof_fold != k).to_numpy() & ~oof_fold.index.isin(held)]
        mine = oof_fold.index[oof_fold == k]
        train = lgb.Dataset(meta.loc[fit], y.loc[fit])
        history = {}
        lgb.train(params, train, num_boost_round=rounds, callbacks=[lgb.record_evaluation(history)],
                  valid_sets=[lgb.Dataset(meta.loc[mine], y.loc[mine], reference=train)], valid_names=["mine"])
        squared += np.asarray(history["mine"]["l2"]) * len(mine)
    return np.sqrt(squared / len(oof_fold))


def main():
    args = p.parse_args()
    folds, oof_fold, meta, y = benchlib.statistics_inputs(args.work)
    sets = {"recipe": (stack.LGB_PARAMS, stack.EARLY_STOP), "meta": (stack.META_PARAMS, stack.META_EARLY_STOP)}
    for name, (params, patience) in sets.items():
        rmse = curve(params, meta, y, folds, oof_fold, args.rounds)
        benchlib.emit(f"meta_only_{name}_shared_rounds_rmse", f"{rmse.min():.4f}", "")
        benchlib.emit(f"meta_only_{name}_shared_rounds_best", str(int(rmse.argmin()) + 1), "rounds")
        if name == "meta":      # as 06 runs it: bagged over its seeds
            pred, *_rest = stack.bagged(meta, None, folds, oof_fold)
        else:
            pred, *_rest = stack.cross_validate(meta, None, folds, oof_fold, params=params, patience=patience)
        benchlib.emit(f"meta_only_{name}_as_06_rmse", f"{stack.rmse(stack.out_of_fold(pred, oof_fold).loc[y.index], y):.4f}", "")


if __name__ == "__main__":
    main()
