"""Single-layer k-means features (kmeans_features.py) against and beside 02's statistics, on a
WORK whose stages 01 and 02 are done (the real data: `make folds hvr DATA=... PROFILE=cpu WORK=...`).

Rows, each scored as 06 scores its level-one models (06's folds, pooled over the out-of-fold rows,
and per fold):
  meta_only            the booster on 02's statistics alone (the reference; 06's stats_only)
  meta+km_whole        the same booster with the K centroids' activations over the whole photo
                       (06's meta_only)
  meta+km_quadrants    ... with the 4 x K activations per quadrant
  km_ridge             a ridge regression on the 4 x K activations (standardised; its penalty
                       chosen by leave-one-out on the fit rows; clipped to the eras' 0-3)
  meta_only+km_ridge   a non-negative blend of the two, nested (06's blend)
Where the WORK holds a finished 06 (06_stack/oof.csv), also 06's blend of its network eras with
each booster, with both (the boosters 06 blends, one seed each: its meta_only is meta+km_whole
here, its stats_only this meta_only; 06 bags 5 seeds of each and adds photo_ridge:
docs/level-one.md), and with km_ridge beside them.

    python bench/kmeans_study.py --work work-real [--k 256] [--write docs/kmeans.md]
"""
import argparse
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import benchlib
import kmeans_features
import pixels
import stacking as stack

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--work", required=True, help="a WORK with 01_sgkfold and 02_hvr done (and perhaps 06_stack)")
p.add_argument("--k", type=int, default=kmeans_features.K, help="centroids")
p.add_argument("--samples", type=int, default=kmeans_features.SAMPLES, help="patches the centroids learn from")
p.add_argument("--write", default=None, help="also write the table as a markdown page here")


RIDGE_ALPHAS = np.logspace(2, 5, 7)     # the ridge's penalties, chosen by leave-one-out on its fit rows
# (below 100 a fold's leave-one-out choice extrapolated to RMSE 2.65 on its held-out rows)


def km_ridge(_rows):
    """km_ridge's model (stacking.ridge_level_one fits it): standardised columns, then RidgeCV."""
    return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))


def main():
    args = p.parse_args()
    folds, oof_fold, meta, y = benchlib.statistics_inputs(args.work)
    images, ids, _meta = pixels.load_store(Path(args.work) / "02_hvr")
    started = time.time()
    model = kmeans_features.learn(images, k=args.k, samples=args.samples)
    learned = time.time()
    km = pd.DataFrame(kmeans_features.encode(images, model), index=ids, columns=kmeans_features.columns(args.k))
    benchlib.emit("kmeans_learn_seconds", f"{learned - started:.1f}", "s")
    benchlib.emit("kmeans_encode_seconds", f"{time.time() - learned:.1f}", "s")
    km = km.loc[oof_fold.index]
    whole = pd.DataFrame(km.to_numpy().reshape(len(km), 4, -1).mean(1), index=km.index,
                         columns=kmeans_features.columns(args.k, quadrants=False))      # as photo_features

    rows, preds = [], {}

    def record(name, pred, columns, rounds="-"):
        pooled, per_fold = benchlib.oof_scores(pred, y, oof_fold)
        preds[name] = pred.loc[y.index]
        rows.append({"name": name, "columns": columns, "pooled": pooled, "rounds": rounds, "folds": per_fold})
        benchlib.emit(re.sub(r"[^a-z0-9]+", "_", name).strip("_") + "_rmse", f"{pooled:.4f}", "")

    def booster(name, table):
        pred, _test, rounds, _m = stack.cross_validate(table, None, folds, oof_fold, params=stack.META_PARAMS,
                                                       patience=stack.META_EARLY_STOP)
        record(name, stack.out_of_fold(pred, oof_fold), table.shape[1], "/".join(map(str, rounds)))

    booster("meta_only", meta)
    booster("meta+km_whole", meta.join(whole))
    booster("meta+km_quadrants", meta.join(km))
    pred, _test = stack.ridge_level_one(km, y, None, oof_fold, model=km_ridge)
    record("km_ridge", stack.out_of_fold(pred, oof_fold), km.shape[1])
    both = pd.DataFrame({"meta_only": preds["meta_only"], "km_ridge": preds["km_ridge"]})
    blended, *_rest = stack.blend(both, both, y.to_numpy(), oof_fold)
    record("meta_only+km_ridge", stack.out_of_fold(blended, oof_fold), 2)

    run = Path(args.work) / "06_stack" / "oof.csv"
    if run.exists():
        oof = pd.read_csv(run, dtype={"object_id": str}).set_index("object_id").loc[y.index]
        nets = oof[[c for c in oof.columns if c.endswith("_model")]]
        for name, extra in (("blend of meta_only", ["meta_only"]), ("blend of meta+km_whole", ["meta+km_whole"]),
                            ("blend of both", ["meta+km_whole", "meta_only"]),
                            ("blend of both+km_ridge", ["meta+km_whole", "meta_only", "km_ridge"])):
            inputs = nets.assign(**{c: preds[c] for c in extra})
            blended, *_rest = stack.blend(inputs, inputs, y.to_numpy(), oof_fold)
            record(name, stack.out_of_fold(blended, oof_fold), inputs.shape[1])

    table = benchlib.scores_table(rows)
    benchlib.publish(table, args.write, "k-means features beside the statistics", __doc__.split("\n\n")[1])


if __name__ == "__main__":
    main()
