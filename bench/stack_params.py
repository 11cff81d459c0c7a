"""06's LightGBM stacks under other booster settings than the recipe's, on a finished WORK (stages
01-05 done: the real data's `make all` up to `make features`).

Each stack of 06 (seed / oof mode, with and without 02's statistics) is rebuilt by 06's own
functions under each parameter set; the figure is its pooled out-of-fold RMSE, as 06's cv.csv
computes it (each fold early-stopped on its held-out side, the recipe's way). First, per fold,
the `target` head's era RMSE on the rows the seed stack learns from (the fold network's own
training side) and on those it predicts (the held-out side).

    python bench/stack_params.py --work work-real
"""
import argparse
from pathlib import Path

import benchlib
import stacking as stack
import tasks

# -----------------------------------------------------------------------------
SLOW = stack.META_PARAMS          # learning rate 0.02, half the columns per tree
SETS = {   # name: (params, patience)
    "recipe": (stack.LGB_PARAMS, stack.EARLY_STOP),
    "slow": (SLOW, stack.META_EARLY_STOP),
    "small": ({**SLOW, "num_leaves": 7, "min_data_in_leaf": 50}, stack.META_EARLY_STOP),
    "small_l2": ({**SLOW, "num_leaves": 7, "min_data_in_leaf": 50, "lambda_l2": 10.0}, stack.META_EARLY_STOP),
    "stumps": ({**SLOW, "num_leaves": 3, "min_data_in_leaf": 100}, 100),
}

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--work", required=True, help="a WORK with stages 01-05 done")
p.add_argument("--nets", default="multi", choices=["multi", "tasks"],
               help="multi (the cpu profile) or tasks (the four tasks' networks)")
p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))


def main():
    args = p.parse_args()
    work = Path(args.work)
    folds, oof_fold = stack.read_folds(work / "01_sgkfold")
    y = folds["all"]["train"].set_index("object_id")["target"]
    nets = ["multi"] if args.nets == "multi" else list(tasks.TASKS)
    source = (work / "05_features", nets)
    for k in stack.K:     # the seed stack learns from the network's own training rows, predicts held-out ones
        for side, split in (("train", "train"), ("heldout", "test")):
            era = folds[k][split].set_index("object_id")["target"]
            head = stack.features(source, k, side).loc[era.index, tasks.column("target", 0)]
            benchlib.emit(f"target_head_fold{k}_{side}_rmse", f"{stack.rmse(head, era):.4f}", "(era RMSE)")
    meta = stack.meta_table(work / "02_hvr", "on")
    for name in args.sets:
        params, patience = SETS[name]
        for suffix, extra in (("", None), ("_meta", meta)):
            seed = stack.stack_seed(source, folds, extra, params=params, patience=patience)
            oof = stack.stack_oof(source, folds, oof_fold, extra, params=params, patience=patience)
            for mode, (pred, _test, iters, _model) in (("seed", seed), ("oof", oof)):
                pooled = stack.out_of_fold(pred, oof_fold)
                benchlib.emit(f"stack_{mode}{suffix}_{name}_rmse", f"{stack.rmse(pooled, y.loc[pooled.index]):.4f}",
                              f"(rounds {'/'.join(map(str, iters))})")


if __name__ == "__main__":
    main()
