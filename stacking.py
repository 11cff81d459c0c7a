"""Stacking of stage 05's features: the tables 06 reads, its LightGBM stacks, the level-two
blends, the recipe's post-processing and the nested choice of what is submitted. 06_stack.py
runs them; the studies in bench/ (meta_params, stack_params, texture_study) score their
variants with the same functions.

Two stack modes:
  seed: as the recipe: fold k's booster trains on fold k's *training-side* network outputs, stops
        early on its held-out side; the `all` booster (fold `all` network's train outputs, the
        mean best iteration) predicts test.
  oof:  each train row's features come from the fold network that did not see it; boosters are
        cross-validated over those rows; the `all` booster (all rows, mean best iteration)
        predicts test from the 3 fold networks' test features averaged (none with 05
        --fold-test no, the cpu profile: then the oof stacks are scored, never submitted).

Past the recipe, the `_meta` stacks' table gains 02's per-photo statistics (photo_stats.py),
which the square networks never see; meta_table's native / stored keep only those of the photo
as decoded / of the stored S x S pixels.

Past the recipe too, `blend`: a non-negative linear blend (with an intercept) of the single
networks' eras and the per-photo models (level_one: `meta_only`, `stats_only`, `photo_ridge`),
its weights fitted on the out-of-fold rows of the other folds (fold k's rows never weigh their
own prediction); the test side uses weights fitted on every row.
`blend_steps` takes onehot's class probabilities in place of its expected class, as P(era >= c)
for c = 1, 2, 3 (their sum is the expected class), each weighed on its own.
The boosters see the networks and the statistics as 104 + 99 raw columns on ~2k rows; a blend
sees four to six predictions, each already cross-validated (docs/results.md has the CVs).

Post-processing (the recipe): final = ratio * stack + (1 - ratio) * the target network's TTA
mean; where the onehot network's TTA-mean score for a class exceeds the threshold, that class;
clip to [0, 3]. The recipe's knobs: 0.5 and 0.94.
"""
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import QuantileTransformer

import common
import photo_stats
import tasks

# -----------------------------------------------------------------------------
LGB_PARAMS = dict(objective="regression", metric="l2", boosting_type="gbdt", num_leaves=31,
                  learning_rate=0.05, feature_fraction=0.9, bagging_fraction=0.8, bagging_freq=5,
                  verbose=-1, seed=0, num_threads=0, deterministic=True, force_row_wise=True)
ROUNDS = 10_000          # upper bound; early stopping decides
EARLY_STOP = 10          # the recipe's early-stopping patience
# meta_only is no stack of the recipe's: on ~2k rows of 109 correlated statistics a slower booster
# that sees half the columns per tree does better (bench/meta_params.py on the real data: pooled
# CV 0.7688 against 0.7781 with the recipe's; 0.7690 against 0.7763 at each one's best round
# count shared by the 3 folds; with the 89 before the LBP: 0.8049 against 0.8105).
META_PARAMS = {**LGB_PARAMS, "learning_rate": 0.02, "feature_fraction": 0.5}
META_EARLY_STOP = 50     # patience scaled with the smaller rate
# Each per-photo booster is the mean of one per seed (its row and column sampling): on the real
# run of docs/results.md the blend 0.7369 against 0.7379 with seed 0 alone (bench/level_one.py,
# docs/level-one.md), for 4 more fits of each.
META_SEEDS = (0, 1, 2, 3, 4)
# photo_ridge: a ridge over the same columns, each mapped to a normal by its quantiles, its penalty
# chosen by leave-one-out on the fit rows: alone 0.8073, the blend with it 0.7351; with the
# columns standardised only (a few statistics are heavy-tailed) 0.8131 and 0.7359 (level-one.md).
RIDGE_ALPHAS = np.logspace(0, 5, 11)
RIDGE_QUANTILES = 500
RECIPE_POST = (0.5, 0.94)
RATIOS = np.round(np.arange(0.0, 1.0001, 0.05), 2)
THRESHOLDS = [0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, np.inf]   # inf: no override
K = ("0", "1", "2")
# The level-two blends and their inputs besides the per-photo models: each era head's era; or the same with
# onehot's P(era >= c) in place of its expected class (their sum), each step weighed on its own.
BLENDS = {"blend": [f"{h}_model" for h in tasks.ERA_HEADS],
          "blend_steps": ["target_model", *tasks.step_columns(), "sortingdate_model"]}


def features(source, fold, split, extra=None):
    """The 104-column table of one fold's networks on one split, indexed by object_id, plus
    the `extra` per-object columns (02's per-photo statistics) when given. source: (05's
    directory, the networks: the four tasks' own, or the one `multi` with the same columns)."""
    feat_dir, nets = source
    parts = [pd.read_parquet(Path(feat_dir) / common.run_name(n, fold) / f"{split}.parquet").set_index("object_id")
             for n in nets]
    table = pd.concat(parts, axis=1)
    return table if extra is None else table.join(extra, how="left")


def meta_table(hvr_dir, which, expected=None):
    """02's per-photo statistics, indexed by object_id, every column prefixed meta_; `which`:
    native / stored keep the size and only that half of the colour and edge columns; the texture
    columns (photo_stats.NATIVE_ONLY: measured on the photo as decoded alone) go with native.
    Each id once, and (`expected`) a row for each of these ids."""
    path = Path(hvr_dir) / "stats.csv"
    if not path.exists():
        common.fail(f"{path} is missing: this WORK's stage 02 predates the per-photo statistics. Run "
                    f"02_hvr_augment.sh with the same options into another directory and copy its stats.csv "
                    f"here (the store comes out byte-identical), or use a new WORK")
    table = pd.read_csv(path, dtype={"object_id": str})
    common.check_ids(table["object_id"], path, hvr_dir, expected=expected, extra_ok=True)
    table = table.set_index("object_id")
    if which == "native":
        table = table.drop(columns=[c for c in table.columns if c.endswith("_stored")])
    elif which == "stored":
        table = table.drop(columns=[c for c in (*photo_stats.PIXEL_COLUMNS, *photo_stats.NATIVE_ONLY)
                                    if c in table])      # a WORK of before the texture has none
    return table.add_prefix("meta_")


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def boost(X_tr, y_tr, X_va=None, y_va=None, rounds=None, params=LGB_PARAMS, patience=EARLY_STOP):
    """A booster for `rounds` rounds, or early-stopped on (X_va, y_va) after `patience` rounds
    without gain (the recipe's parameters unless given)."""
    train = lgb.Dataset(X_tr, y_tr)
    if rounds is not None:
        return lgb.train(params, train, num_boost_round=rounds)
    valid = lgb.Dataset(X_va, y_va, reference=train)
    return lgb.train(params, train, num_boost_round=ROUNDS, valid_sets=[valid],
                     callbacks=[lgb.early_stopping(patience, verbose=False)])


def post_process(stack, target_tta, onehot_tta, ratio, threshold):
    final = ratio * stack + (1 - ratio) * target_tta
    best = onehot_tta.argmax(1)
    sure = onehot_tta.max(1) > threshold
    final = np.where(sure, best, final)
    return np.clip(final, 0, 3)


def tune_post(stack, target_tta, onehot_tta, y):
    """(ratio, threshold, rmse) of the grid point with the lowest RMSE on these rows."""
    scores = [(rmse(post_process(stack, target_tta, onehot_tta, r, t), y), r, t)
              for r in RATIOS for t in THRESHOLDS]
    score, r, t = min(scores)
    return float(r), float(t), score


def stack_seed(source, folds, extra, params=LGB_PARAMS, patience=EARLY_STOP):
    """The recipe: per fold, the booster learns on the network's own training-side outputs."""
    pred, iters = {}, []
    for k in K:
        X_tr = features(source, k, "train", extra).loc[folds[k]["train"]["object_id"]]
        X_va = features(source, k, "heldout", extra).loc[folds[k]["test"]["object_id"]]
        m = boost(X_tr, folds[k]["train"]["target"], X_va, folds[k]["test"]["target"], params=params, patience=patience)
        iters.append(m.best_iteration)
        pred[k] = pd.Series(m.predict(X_va, num_iteration=m.best_iteration), index=X_va.index)
    X_all = features(source, "all", "train", extra).loc[folds["all"]["train"]["object_id"]]
    final = boost(X_all, folds["all"]["train"]["target"], rounds=max(1, round(np.mean(iters))), params=params)
    test = final.predict(features(source, "all", "test", extra))
    return pred, test, iters, final


def blend(oof_inputs, test_inputs, y, oof_fold):
    """Level 2 over level-1 predictions (columns of oof_inputs, the same columns of test_inputs):
    a non-negative least-squares blend with an intercept; fold k's rows are predicted with the
    weights fitted on the other folds' rows, the test side with those fitted on every row."""
    pred = {}
    for k in K:
        mine = (oof_fold == k).to_numpy()
        fit = LinearRegression(positive=True).fit(oof_inputs[~mine], y[~mine])
        pred[k] = pd.Series(fit.predict(oof_inputs[mine]), index=oof_inputs.index[mine])
    final = LinearRegression(positive=True).fit(oof_inputs, y)
    return pred, final.predict(test_inputs[oof_inputs.columns]), final


def importance(model, names=None):
    """The picture's numbers: a booster's gain per feature, or a blend's weight per input."""
    if isinstance(model, LinearRegression):
        return pd.Series(model.coef_, index=names)
    return pd.Series(model.feature_importance("gain"), index=model.feature_name())


def stack_oof(source, folds, oof_fold, extra, params=LGB_PARAMS, patience=EARLY_STOP):
    """Out-of-fold: the features of each train row come from the network that never saw it.
    Its test prediction is None where the fold networks have no test side (fold_test())."""
    X = pd.concat([features(source, k, "heldout", extra).loc[oof_fold.index[oof_fold == k]] for k in K])
    X_test = sum(features(source, k, "test", extra) for k in K) / len(K) if fold_test(source) else None
    return cross_validate(X.loc[oof_fold.index], X_test, folds, oof_fold, params=params, patience=patience)


def fold_test(source):
    """Whether 05 described test.csv with the fold networks too (05 --fold-test yes)."""
    feat_dir, nets = source
    return all((Path(feat_dir) / common.run_name(n, k) / "test.parquet").exists() for n in nets for k in K)


def cross_validate(X, X_test, folds, oof_fold, params=LGB_PARAMS, patience=EARLY_STOP):
    """Boosters over the folds (fit on the other folds' rows, early-stopped on this fold's held-
    out side), then one on every row with their mean best iteration, which predicts X_test
    (none, and no test prediction, when X_test is None)."""
    y = folds["all"]["train"].set_index("object_id")["target"].loc[X.index]
    pred, iters = {}, []
    for k in K:
        held = folds[k]["test"]["object_id"]
        fit_rows = oof_fold.index[(oof_fold != k).to_numpy() & ~oof_fold.index.isin(held)]
        m = boost(X.loc[fit_rows], y.loc[fit_rows], X.loc[held], y.loc[held], params=params, patience=patience)
        iters.append(m.best_iteration)
        pred[k] = pd.Series(m.predict(X.loc[held], num_iteration=m.best_iteration), index=held.to_numpy())
    if X_test is None:
        return pred, None, iters, None
    final = boost(X, y, rounds=max(1, round(np.mean(iters))), params=params)
    return pred, final.predict(X_test), iters, final


def bagged(X, X_test, folds, oof_fold, seeds=META_SEEDS):
    """cross_validate with META_PARAMS once per seed, averaged: ({fold: Series}, test prediction
    or None, every seed's best iterations, seed 0's final model)."""
    runs = [cross_validate(X, X_test, folds, oof_fold, params={**META_PARAMS, "seed": s}, patience=META_EARLY_STOP)
            for s in seeds]
    pred = {k: sum(run[0][k] for run in runs) / len(runs) for k in K}
    test = None if X_test is None else sum(run[1] for run in runs) / len(runs)
    return pred, test, [i for run in runs for i in run[2]], runs[0][3]


def ridge_model(rows):
    """The ridge of photo_ridge for `rows` fit rows: quantiles to a normal, then RidgeCV."""
    return make_pipeline(QuantileTransformer(output_distribution="normal", n_quantiles=min(RIDGE_QUANTILES, rows)),
                         RidgeCV(alphas=RIDGE_ALPHAS))


def ridge_level_one(X, y, X_test, oof_fold, model=ridge_model):
    """A linear level-one model: fold k's rows (X and y by object_id, oof_fold's rows) predicted by
    model(rows).fit on the other folds' rows, X_test (None: no test prediction) by the one fitted
    on every row; clipped to the eras' 0-3. ({fold: Series}, test prediction)."""
    def fit(rows):
        return model(len(rows)).fit(X.loc[rows], y.loc[rows])

    pred = {}
    for k in K:
        mine = (oof_fold == k).to_numpy()
        rows = oof_fold.index[mine]
        pred[k] = pd.Series(np.clip(fit(oof_fold.index[~mine]).predict(X.loc[rows]), 0, 3), index=rows)
    return pred, None if X_test is None else np.clip(fit(oof_fold.index).predict(X_test), 0, 3)


def check_features(source, folds):
    """Every table of 05 that 06 reads holds the ids 05 was to describe (05's splits: a fold's
    train and held-out sides, test.csv's for fold all and, with --fold-test yes, the folds), each
    once: the offending ids and the file named before anything is stacked."""
    feat_dir, nets = source
    sides = {(k, "train"): folds[k]["train"] for k in common.FOLDS}
    sides.update({(k, "heldout"): folds[k]["test"] for k in K})
    sides.update({(k, "test"): folds["all"]["test"] for k in (*K, "all")})
    for (fold, split), side in sides.items():
        for net in nets:
            run = Path(feat_dir) / common.run_name(net, fold)
            path = run / f"{split}.parquet"
            if split == "test" and fold != "all" and not path.exists():
                continue        # 05 --fold-test no: fold_test() says so
            ids = pd.read_parquet(path, columns=["object_id"])["object_id"]
            common.check_ids(ids, path, run, expected=side["object_id"])


def read_folds(folds_dir):
    """Stage 01's folds ({fold: {"train", "test"}: tables}) and each train row's out-of-fold fold."""
    folds = {k: {s: common.read_fold(folds_dir, k, s) for s in ("train", "test")} for k in common.FOLDS}
    oof_fold = common.read_oof_fold(folds_dir)
    common.check_ids(oof_fold.index, Path(folds_dir) / "oof_fold.csv", folds_dir,
                     expected=folds["all"]["train"]["object_id"])      # every train row, in one fold
    return folds, oof_fold


def out_of_fold(pred, oof_fold):
    """One prediction per train row: row r's from fold oof_fold[r] ({fold: Series by object_id})."""
    return pd.concat([pred[k].loc[oof_fold.index[oof_fold == k]] for k in K])


def level_one(source, folds, oof_fold, meta, learned=None):
    """Every stack, keyed by its cv.csv column (both modes, without and with the statistics), and
    the models of the per-photo features alone (the reference points, and the blends' view of
    them): the booster `meta_only` on 02's statistics and `learned` (per-photo columns by
    object_id: the k-means features) where given; `stats_only`, on the statistics alone, only
    then (the blends weigh both: each sees what the other does not); `photo_ridge`, a ridge on
    meta_only's columns. Each stack (out-of-fold predictions by fold, test prediction, best
    iterations, final model); each photo model a bagged()'s or ridge_level_one()'s result;
    both as {column: that}."""
    stacks = {}
    for suffix, extra in (("", None), ("_meta", meta)):
        stacks["stack_seed" + suffix] = stack_seed(source, folds, extra)
        stacks["stack_oof" + suffix] = stack_oof(source, folds, oof_fold, extra)
    tables = {"meta_only": meta if learned is None else meta.join(learned, how="left")}
    if learned is not None:
        tables["stats_only"] = meta
    test_ids = folds["all"]["test"]["object_id"]
    photo_models = {name: bagged(table.loc[oof_fold.index], table.loc[test_ids], folds, oof_fold)
                    for name, table in tables.items()}
    y = folds["all"]["train"].set_index("object_id")["target"]
    table = tables["meta_only"]
    photo_models["photo_ridge"] = ridge_level_one(table.loc[oof_fold.index], y, table.loc[test_ids], oof_fold)
    return stacks, photo_models


def out_of_fold_table(source, train, oof_fold, level1):
    """One row per train row, its every prediction from the fold that held it out: the target,
    the fold, the networks' TTA means (the post-processing's inputs), each head's era
    (<head>_model) and each level-one model's (`level1`: {column: its cross_validate-like result})."""
    oof = pd.DataFrame(index=train.index)
    oof["target"] = train["target"]
    oof["fold"] = oof_fold
    singles = {}
    for k in K:
        rows = oof_fold.index[oof_fold == k]
        X = features(source, k, "heldout").loc[rows]
        for name, values in tasks.head_eras(X).items():
            singles.setdefault(name, []).append(pd.Series(values, index=rows))
        oof.loc[rows, tasks.TTA_COLUMNS[0]] = tasks.target_tta(X)
        for name, values in zip(tasks.TTA_COLUMNS[1:], tasks.onehot_tta(X).T):
            oof.loc[rows, name] = values
        for name, values in tasks.onehot_steps(X).items():
            oof.loc[rows, name] = values
    for name, parts in singles.items():
        oof[name + "_model"] = pd.concat(parts)
    for name, (pred, *_rest) in level1.items():
        oof[name] = out_of_fold(pred, oof_fold)
    return oof


def level_two(oof, test_all, photo_models, test_ids, oof_fold):
    """The single networks' eras (or onehot's steps) and the per-photo models (level_one's),
    blended linearly (BLENDS): adds each blend's column to oof; returns {blend: (its test
    prediction, the fitted blend, its inputs' names)}."""
    test_inputs = pd.DataFrame({f"{n}_model": v for n, v in tasks.head_eras(test_all).items()}, index=test_all.index)
    for name, values in tasks.onehot_steps(test_all).items():
        test_inputs[name] = values
    for name, (_pred, test_pred, *_rest) in photo_models.items():
        test_inputs[name] = pd.Series(test_pred, index=test_ids.to_numpy()).loc[test_all.index]
    blends = {}
    for name, inputs in BLENDS.items():
        inputs = [*inputs, *photo_models]
        pred, test_pred, blender = blend(oof[inputs], test_inputs[inputs], oof["target"].to_numpy(), oof_fold)
        oof[name] = pd.concat([pred[k] for k in K])
        blends[name] = (test_pred, blender, inputs)
    return blends


def submittable(stacks, untested, mode, meta):
    """The predictions --submit best may choose from: `mode` (seed, oof; None: both, and the
    blends) and `meta` (off: no _meta stack, no blend) narrow them."""
    candidates = [n for n in stacks if (mode is None or n.startswith(f"stack_{mode}"))
                  and (meta != "off" or not n.endswith("_meta")) and n not in untested]
    candidates += list(BLENDS) if mode is None and meta != "off" else []
    if not candidates:
        common.fail(f"--mode {mode}: its stacks have no test side (05 ran with --fold-test no: "
                    f"make FOLD_TEST=yes, or another --mode)")
    return candidates


def choose(oof, candidates, post):
    """The submitted prediction, chosen nested: fold k's `final` rows are post-processed with the
    candidate and knobs chosen on the other folds' rows. Returns (the candidate, (ratio,
    threshold)) chosen on every row, for the test side."""
    tta, hot = oof[tasks.TTA_COLUMNS[0]].to_numpy(), oof[list(tasks.TTA_COLUMNS[1:])].to_numpy()
    target = oof["target"].to_numpy()

    def pick(rows):
        """The candidate with the lowest RMSE on these rows, and its knobs there."""
        name = min(candidates, key=lambda n: rmse(oof[n].to_numpy()[rows], target[rows]))
        if post == "recipe":
            return name, RECIPE_POST
        r, t, _ = tune_post(oof[name].to_numpy()[rows], tta[rows], hot[rows], target[rows])
        return name, (r, t)

    for k in K:
        other, mine = (oof["fold"] != k).to_numpy(), (oof["fold"] == k).to_numpy()
        name, knobs = pick(other)
        oof.loc[mine, "final"] = post_process(oof[name].to_numpy()[mine], tta[mine], hot[mine], *knobs)
    return pick(np.ones(len(oof), bool))


def cv_table(oof, columns):
    """RMSE of every column per fold and overall, beside the baseline (`const_mean`: each fold's
    train-side mean era, as a constant, added to oof)."""
    for k in K:
        oof.loc[oof["fold"] == k, "const_mean"] = oof["target"][oof["fold"] != k].mean()
    rows = []
    for k in (*K, "overall"):
        part = oof if k == "overall" else oof[oof["fold"] == k]
        rows.append({"fold": k, "n": len(part), **{c: rmse(part[c], part["target"]) for c in ["const_mean", *columns]}})
    return pd.DataFrame(rows)
