"""Stage 06: LightGBM stacking of the 8-view features, and the tuned post-processing.

Reads WORK/01_sgkfold, WORK/05_features/<task>_<fold>/*.parquet, WORK/02_hvr/stats.csv and
WORK/02_hvr's store (k-means features of every photo: kmeans_features.py).
Writes WORK/06_stack/:
  cv.csv              per fold and overall: the constant mean, the per-photo models (boosters
                      on the statistics and the photos' k-means features, meta_only, and on the
                      statistics alone, stats_only, each bagged over stacking.META_SEEDS; a
                      ridge on meta_only's columns, photo_ridge), each single network,
                      the four stacks (two modes, with and without the statistics), the recipe's
                      own submission (`recipe`) and the submitted prediction (`final`)
  oof.csv, test.csv   out-of-fold and test predictions (every stack, recipe, final)
  params.json         what was submitted: the stack, post-processing ratio and threshold, CVs
  kmeans.npz          the k-means features of 02's store, reused by a restack of the same store
  importance.png, confusion.png, provenance.json, DONE

    python 06_stack.py --folds work/01_sgkfold --features work/05_features \
        --hvr work/02_hvr --out work/06_stack [--nets multi] [--submit recipe]

The method (the seed and oof stacks, the _meta statistics, the blends, the recipe's
post-processing) is stacking.py's; this script runs it and writes the tables.

What is submitted: --submit recipe: the recipe's own stack (seed mode, its 104 columns, 0.5 /
0.94; the `recipe` column). --submit best (default): the stack with the lowest CV and the
post-processing knobs tuned on a grid, both chosen nested: fold k's score comes from the stack
and knobs chosen on the other folds' rows (--mode, --meta off, --post recipe narrow the choice).
"""
import argparse
import time

import pandas as pd

import common
import kmeans_features
import reporting
import stacking
import tasks

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--folds", required=True, help="stage 01's directory")
p.add_argument("--features", required=True, help="stage 05's directory")
p.add_argument("--out", required=True, help="this stage's directory")
p.add_argument("--nets", nargs="+", default=list(tasks.TASKS), choices=tasks.NETS,
               help="the networks 05 described: the four tasks' (the recipe) or multi")
p.add_argument("--submit", default="best", choices=["best", "recipe"],
               help="best: the stack with the lowest CV (of --mode and --meta, when given), tuned "
                    "post-processing; recipe: the recipe's own (seed mode, its 104 columns, 0.5 / 0.94)")
p.add_argument("--mode", default=None, choices=["seed", "oof"],
               help="--submit best: only this mode's stacks (and not the blends)")
p.add_argument("--hvr", required=True, help="stage 02's directory (its stats.csv)")
p.add_argument("--meta", default="on", choices=["off", "on", "native", "stored"],
               help="the _meta stacks' per-photo statistics: both halves (on), only those of the photo as "
                    "decoded (native) or of the stored pixels (stored); off: --submit best takes only "
                    "the recipe's 104 columns (no _meta stack, no blend)")
p.add_argument("--post", default="tuned", choices=["tuned", "recipe"], help="--submit best: post-processing knobs, CV grid or 0.5/0.94")


def main():
    args = common.parse(p, "06")
    stage = common.Stage(args.out)
    folds, oof_fold = stacking.read_folds(args.folds)
    train = folds["all"]["train"].set_index("object_id")
    test_ids = folds["all"]["test"]["object_id"]
    source = (args.features, args.nets)
    stacking.check_features(source, folds)
    meta = stacking.meta_table(args.hvr, args.meta, expected=pd.concat([train.index.to_series(), test_ids]))
    learned = kmeans_features.stored_photo_features(args.hvr, stage.dir / "kmeans.npz")
    stacks, photo_models = stacking.level_one(source, folds, oof_fold, meta, learned)
    oof = stacking.out_of_fold_table(source, train, oof_fold, {**photo_models, **stacks})
    test_all = stacking.features(source, "all", "test")
    blends = stacking.level_two(oof, test_all, photo_models, test_ids, oof_fold)

    untested = [n for n, (_pred, test_pred, *_rest) in stacks.items() if test_pred is None]   # cannot be submitted
    if untested:
        print(f"[06] {', '.join(untested)}: scored, not submittable (the fold networks described no test "
              f"side: 05 --fold-test no)", flush=True)
    tta, hot = oof[tasks.TTA_COLUMNS[0]].to_numpy(), oof[list(tasks.TTA_COLUMNS[1:])].to_numpy()
    oof["recipe"] = stacking.post_process(oof["stack_seed"].to_numpy(), tta, hot, *stacking.RECIPE_POST)
    if args.submit == "recipe":
        chosen, post, (ratio, threshold) = "stack_seed", "recipe", stacking.RECIPE_POST
        candidates = [chosen]
        oof["final"] = oof["recipe"]
    else:
        candidates, post = stacking.submittable(stacks, untested, args.mode, args.meta), args.post
        chosen, (ratio, threshold) = stacking.choose(oof, candidates, post)
    oof["final_recipe_post"] = stacking.post_process(oof[chosen].to_numpy(), tta, hot, *stacking.RECIPE_POST)

    # The test side: the `all` networks' TTA means and the chosen stack.
    test = pd.DataFrame(index=test_all.index)
    for name, (_pred, test_pred, *_rest) in stacks.items():
        if name not in untested:
            test[name] = test_pred
    for name, (test_pred, *_rest) in blends.items():
        test[name] = test_pred
    test_tta, test_hot = tasks.target_tta(test_all), tasks.onehot_tta(test_all)
    test["final"] = stacking.post_process(test[chosen].to_numpy(), test_tta, test_hot, ratio, threshold)
    test["recipe"] = stacking.post_process(test["stack_seed"].to_numpy(), test_tta, test_hot, *stacking.RECIPE_POST)

    columns = [*photo_models, *[c for c in oof if c.endswith("_model")], *stacks, *blends, "recipe", "final",
               "final_recipe_post"]
    cv = stacking.cv_table(oof, columns)
    common.write_csv(stage.dir / "cv.csv", cv, float_format="%.5f")
    common.write_csv(stage.dir / "oof.csv", oof.reset_index(), float_format="%.6g")
    common.write_csv(stage.dir / "test.csv", test.reset_index(), float_format="%.6g")
    common.write_json(stage.dir / "params.json", {
        "submit": args.submit, "stack": chosen, "meta": args.meta, "post": post, "ratio": ratio, "threshold": threshold,
        "candidates": candidates,
        "best_iterations": {name: [int(i) for i in v[2]] for name, v in stacks.items()},
        "blend_weights": {name: {"intercept": float(blender.intercept_), **dict(zip(inputs, map(float, blender.coef_)))}
                          for name, (_test, blender, inputs) in blends.items()},
        "cv_overall": {c: float(cv.iloc[-1][c]) for c in ["const_mean", *columns]},
    })
    shown = stacking.importance(*blends[chosen][1:]) if chosen in blends else stacking.importance(stacks[chosen][3])
    reporting.stack_plots(stage.dir, shown, oof["target"].to_numpy(), oof["final"].to_numpy())
    stage.finish(vars(args))
    print(cv.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"[06] submission ({args.submit}): {chosen}, post-processing ratio {ratio} threshold {threshold} "
          f"(CV {cv.iloc[-1]['final']:.4f}; the recipe's stack {cv.iloc[-1]['recipe']:.4f}) "
          f"[{time.time() - stage.started:.1f}s]", flush=True)


if __name__ == "__main__":
    main()
