"""Level-two models over a finished run's level-one predictions (WORK/06_stack/oof.csv): 06's
non-negative linear blends against a ridge and a depth-2 LightGBM over the same inputs, each
nested as 06 nests its blends (fold k's rows predicted by the model fitted on the other folds'
rows; the booster's round count chosen by cross-validation over those other folds alone).

Inputs: each head's era (target, onehot, sortingdate), onehot's P(era >= c), and the per-photo
models the run's 06 wrote (meta_only: a booster on 02's statistics and the k-means features;
stats_only: on the statistics alone; photo_ridge: a ridge on meta_only's columns).

    python bench/level_two.py --work work-real [--write docs/level-two.md]
"""
import argparse
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression, RidgeCV

import benchlib
import stacking as stack
import tasks

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--work", required=True, help="a WORK whose 06 finished")
p.add_argument("--write", default=None, help="also write the table as a markdown page here")

HEADS = ["target_model", "onehot_model", "sortingdate_model", *tasks.step_columns()]
PHOTO_MODELS = ("meta_only", "stats_only", "photo_ridge")
DEPTH2 = dict(objective="regression", metric="l2", num_leaves=3, max_depth=2, learning_rate=0.02,
              min_data_in_leaf=40, feature_fraction=1.0, bagging_fraction=0.8, bagging_freq=1,
              verbose=-1, seed=0, num_threads=0, deterministic=True, force_row_wise=True)


def nested(X, y, fold, fit):
    """Out-of-fold predictions: fold k's rows by fit(X, y, fold) on the other folds' rows."""
    out = pd.Series(np.nan, index=X.index)
    for k in stack.K:
        mine = (fold == k).to_numpy()
        out[mine] = fit(X[~mine], y[~mine], fold[~mine]).predict(X[mine])
    return out


class Depth2:
    """A depth-2 booster whose round count is chosen by CV over the fit rows' own folds."""

    def fit(self, X, y, fold):
        folds = [(np.flatnonzero((fold != k).to_numpy()), np.flatnonzero((fold == k).to_numpy()))
                 for k in sorted(fold.unique())]
        cv = lgb.cv(DEPTH2, lgb.Dataset(X, y), num_boost_round=5000, folds=folds,
                    callbacks=[lgb.early_stopping(100, verbose=False)])
        self.rounds = len(cv["valid l2-mean"])
        self.model = lgb.train(DEPTH2, lgb.Dataset(X, y), num_boost_round=self.rounds)
        return self

    def predict(self, X):
        return self.model.predict(X)


def main():
    args = p.parse_args()
    oof = pd.read_csv(Path(args.work) / "06_stack" / "oof.csv", dtype={"object_id": str}).set_index("object_id")
    y, fold = oof["target"], oof["fold"].astype(str)
    photo_models = [c for c in PHOTO_MODELS if c in oof]
    inputs = [*HEADS, *photo_models]
    models = {        # name: (its inputs, a fit on the rows of the other folds)
        "blend (06)": ([*stack.BLENDS["blend"], *photo_models], lambda X, y, f: LinearRegression(positive=True).fit(X, y)),
        "blend_steps (06)": ([*stack.BLENDS["blend_steps"], *photo_models],
                             lambda X, y, f: LinearRegression(positive=True).fit(X, y)),
        "ridge": (inputs, lambda X, y, f: RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(X, y)),
        "lightgbm depth 2": (inputs, lambda X, y, f: Depth2().fit(X, y, f)),
    }
    rows = []
    for name, (columns, fit) in models.items():
        pooled, per_fold = benchlib.oof_scores(nested(oof[columns], y, fold, fit), y, fold)
        rows.append({"name": name, "pooled": pooled, "folds": per_fold})
        benchlib.emit(f"level_two_{name.split()[0]}_rmse", f"{pooled:.4f}", "")
    table = benchlib.scores_table(rows, first="level two")
    benchlib.publish(table, args.write, "Level two: the blend against a ridge and a depth-2 booster",
                     __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
