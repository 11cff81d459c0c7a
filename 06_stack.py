"""Stage 06: LightGBM stacking of the 8-view features, and the tuned post-processing.

Reads WORK/01_sgkfold, WORK/05_features/<task>_<fold>/*.parquet, WORK/02_hvr/stats.csv.
Writes WORK/06_stack/:
  cv.csv              per fold and overall: the constant mean, the same booster on the per-photo
                      statistics alone (meta_only), each single network, the stack in both modes
                      with and without the statistics, and the final prediction after
                      post-processing (tuned, and the recipe's knobs)
  oof.csv, test.csv   out-of-fold and test predictions (stack per mode, final)
  params.json         mode, best iterations, post-processing ratio and threshold (and their CV)
  importance.png, confusion.png, provenance.json, DONE

    python 06_stack.py --folds work/01_sgkfold --features work/05_features \
        --hvr work/02_hvr --out work/06_stack

Two modes, both always computed and reported; --mode picks the one the submission uses.
  seed: as the recipe: fold k's booster trains on fold k's *training-side* network outputs
        (the rows that network was fitted on), stops early on its held-out side; the `all`
        booster (fold `all` network's train outputs, the mean best iteration) predicts test.
  oof:  each train row's features come from the fold network that did not see it; boosters
        are cross-validated over those rows with the same folds; the `all` booster (all rows,
        mean best iteration) predicts test from the 3 fold networks' test features averaged.
Out-of-fold predictions use each row's out-of-fold fold (01's oof_fold.csv).

Past the recipe, --meta on: the stack's table gains the per-photo statistics of stage 02
(photo_stats.py: size, aspect, colour, edges), which the square networks never see. Both
tables are always stacked and scored; --meta picks the one the submission uses. The
ablations --meta native / stored keep the size and only the colour and edge statistics of the
photo as decoded / of the stored S x S pixels.

Post-processing (the recipe): final = ratio * stack + (1 - ratio) * the target network's TTA
mean; where the onehot network's TTA-mean score for a class exceeds the threshold, that class;
clip to [0, 3]. --post tuned picks ratio and threshold on a grid by CV, nested: the score of
fold k comes from the values chosen on the other folds' rows. --post recipe: 0.5 and 0.94.
"""
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

import common
import photo_stats

# -----------------------------------------------------------------------------
LGB_PARAMS = dict(objective="regression", metric="l2", boosting_type="gbdt", num_leaves=31,
                  learning_rate=0.05, feature_fraction=0.9, bagging_fraction=0.8, bagging_freq=5,
                  verbose=-1, seed=0, num_threads=0, deterministic=True, force_row_wise=True)
ROUNDS = 10_000          # upper bound; early stopping decides
EARLY_STOP = 10          # the recipe's early-stopping patience
RECIPE_POST = (0.5, 0.94)
RATIOS = np.round(np.arange(0.0, 1.0001, 0.05), 2)
THRESHOLDS = [0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, np.inf]   # inf: no override
K = ("0", "1", "2")

p = common.profile_parser(__doc__.split("\n")[0], "06")
p.add_argument("--folds", required=True, help="stage 01's directory")
p.add_argument("--features", required=True, help="stage 05's directory")
p.add_argument("--out", required=True, help="this stage's directory")
p.add_argument("--nets", nargs="+", default=list(common.TASKS), choices=common.NETS,
               help="the networks 05 described: the four tasks' (the recipe) or multi")
p.add_argument("--mode", default="seed", choices=["seed", "oof"],
               help="which stack the submission uses (seed: better CV on the real data, README)")
p.add_argument("--hvr", required=True, help="stage 02's directory (its stats.csv)")
p.add_argument("--meta", default="on", choices=["off", "on", "native", "stored"],
               help="the submission's stack: with 02's per-photo statistics (on: better CV on the real "
                    "data, README; native / stored: only those of the photo as decoded / of the stored "
                    "pixels) or the recipe's 104 columns alone (off); both stacks are always scored")
p.add_argument("--post", default="tuned", choices=["tuned", "recipe"], help="post-processing knobs: CV grid or 0.5/0.94")


def features(source, fold, split, extra=None):
    """The 104-column table of one fold's networks on one split, indexed by object_id, plus
    the `extra` per-object columns (02's per-photo statistics) when given. source: (05's
    directory, the networks: the four tasks' own, or the one `multi` with the same columns)."""
    feat_dir, nets = source
    parts = [pd.read_parquet(Path(feat_dir) / common.run_name(n, fold) / f"{split}.parquet").set_index("object_id")
             for n in nets]
    table = pd.concat(parts, axis=1)
    return table if extra is None else table.join(extra, how="left")


def meta_table(hvr_dir, which):
    """02's per-photo statistics, indexed by object_id, every column prefixed meta_; `which`:
    native / stored keep the size and only that half of the colour and edge columns."""
    path = Path(hvr_dir) / "stats.csv"
    if not path.exists():
        common.fail(f"{path} is missing: this WORK's stage 02 predates the per-photo statistics. Run "
                    f"02_hvr_augment.sh with the same options into another directory and copy its stats.csv "
                    f"here (the store comes out byte-identical), or use a new WORK")
    table = pd.read_csv(path, dtype={"object_id": str}).set_index("object_id")
    if which == "native":
        table = table.drop(columns=[c for c in table.columns if c.endswith("_stored")])
    elif which == "stored":
        table = table.drop(columns=[c for c in photo_stats.PIXEL_COLUMNS])
    return table.add_prefix("meta_")


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def single_models(X):
    """The era each single network implies from its TTA mean (for cv.csv)."""
    onehot = X[[f"onehot_{c}_mean" for c in range(4)]].clip(lower=0).to_numpy()
    prob = onehot / np.clip(onehot.sum(1, keepdims=True), 1e-6, None)
    return {"target": X["target_0_mean"].to_numpy(),
            "onehot": prob @ np.arange(4),
            "sortingdate": np.clip((X["sortingdate_0_mean"].to_numpy() - 1550) / 100, 0, 3)}


def boost(X_tr, y_tr, X_va=None, y_va=None, rounds=None):
    train = lgb.Dataset(X_tr, y_tr)
    if rounds is not None:
        return lgb.train(LGB_PARAMS, train, num_boost_round=rounds)
    valid = lgb.Dataset(X_va, y_va, reference=train)
    return lgb.train(LGB_PARAMS, train, num_boost_round=ROUNDS, valid_sets=[valid],
                     callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False)])


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


def stack_seed(source, folds, extra):
    """The recipe: per fold, the booster learns on the network's own training-side outputs."""
    pred, iters = {}, []
    for k in K:
        X_tr = features(source, k, "train", extra).loc[folds[k]["train"]["object_id"]]
        X_va = features(source, k, "heldout", extra).loc[folds[k]["test"]["object_id"]]
        m = boost(X_tr, folds[k]["train"]["target"], X_va, folds[k]["test"]["target"])
        iters.append(m.best_iteration)
        pred[k] = pd.Series(m.predict(X_va, num_iteration=m.best_iteration), index=X_va.index)
    X_all = features(source, "all", "train", extra).loc[folds["all"]["train"]["object_id"]]
    final = boost(X_all, folds["all"]["train"]["target"], rounds=max(1, round(np.mean(iters))))
    test = final.predict(features(source, "all", "test", extra))
    return pred, test, iters, final


def stack_oof(source, folds, oof_fold, extra):
    """Out-of-fold: the features of each train row come from the network that never saw it."""
    X = pd.concat([features(source, k, "heldout", extra).loc[oof_fold.index[oof_fold == k]] for k in K])
    X_test = sum(features(source, k, "test", extra) for k in K) / len(K)
    return cross_validate(X.loc[oof_fold.index], X_test, folds, oof_fold)


def cross_validate(X, X_test, folds, oof_fold):
    """Boosters over the folds (fit on the other folds' rows, early-stopped on this fold's held-
    out side), then one on every row with their mean best iteration, which predicts X_test."""
    y = folds["all"]["train"].set_index("object_id")["target"].loc[X.index]
    pred, iters = {}, []
    for k in K:
        held = folds[k]["test"]["object_id"]
        fit_rows = oof_fold.index[(oof_fold != k).to_numpy() & ~oof_fold.index.isin(held)]
        m = boost(X.loc[fit_rows], y.loc[fit_rows], X.loc[held], y.loc[held])
        iters.append(m.best_iteration)
        pred[k] = pd.Series(m.predict(X.loc[held], num_iteration=m.best_iteration), index=held.to_numpy())
    final = boost(X, y, rounds=max(1, round(np.mean(iters))))
    return pred, final.predict(X_test), iters, final


def plots(out, model, y, final):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    gain = pd.Series(model.feature_importance("gain"), index=model.feature_name()).sort_values()[-25:]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.barh(gain.index, gain.to_numpy())
    ax.set(title="LightGBM gain, top 25 features (the submission's booster)", xlabel="gain")
    fig.tight_layout()
    with common.atomic_path(out / "importance.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    cm = pd.crosstab(pd.Series(y, name="true era"), pd.Series(np.rint(final).astype(int), name="predicted (rounded)"))
    cm = cm.reindex(index=range(4), columns=range(4), fill_value=0)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm.to_numpy(), cmap="Blues")
    for (i, j), v in np.ndenumerate(cm.to_numpy()):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set(xticks=range(4), yticks=range(4), xlabel="predicted (rounded)", ylabel="true era",
           title="out-of-fold confusion")
    fig.tight_layout()
    with common.atomic_path(out / "confusion.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def main():
    args = common.parse(p, "06")
    started = time.time()
    out = common.start_stage(args.out)
    read = lambda k, s: pd.read_csv(common.fold_csv(args.folds, k, s), dtype={"object_id": str})
    folds = {k: {"train": read(k, "train"), "test": read(k, "test")} for k in common.FOLDS}
    oof_fold = pd.read_csv(Path(args.folds) / "oof_fold.csv", dtype={"object_id": str, "fold": str}
                           ).set_index("object_id")["fold"]
    train = folds["all"]["train"].set_index("object_id")
    y = train["target"]

    source = (args.features, args.nets)
    meta = meta_table(args.hvr, args.meta)
    # Every stack, keyed by its cv.csv column: both modes, without and with the statistics.
    stacks = {}
    for suffix, extra in (("", None), ("_meta", meta)):
        stacks["stack_seed" + suffix] = stack_seed(source, folds, extra)
        stacks["stack_oof" + suffix] = stack_oof(source, folds, oof_fold, extra)
    chosen = f"stack_{args.mode}" + ("" if args.meta == "off" else "_meta")
    # The reference point: the same booster on the statistics alone (DATA.md's 0.81).
    meta_only = cross_validate(meta.loc[oof_fold.index], meta.loc[folds["all"]["test"]["object_id"]],
                               folds, oof_fold)
    # Out-of-fold view of everything: row r from fold oof_fold[r], on that fold's held-out side.
    oof = pd.DataFrame(index=train.index)
    oof["target"] = y
    oof["fold"] = oof_fold
    singles = {}
    for k in K:
        rows = oof_fold.index[oof_fold == k]
        X = features(source, k, "heldout").loc[rows]
        for name, values in single_models(X).items():
            singles.setdefault(name, []).append(pd.Series(values, index=rows))
        oof.loc[rows, "target_tta"] = X["target_0_mean"]
        for c in range(4):
            oof.loc[rows, f"onehot_{c}"] = X[f"onehot_{c}_mean"]
    for name, parts in singles.items():
        oof[name + "_model"] = pd.concat(parts)
    for name, (pred, *_rest) in {"meta_only": meta_only, **stacks}.items():
        oof[name] = pd.concat([pred[k].loc[oof_fold.index[oof_fold == k]] for k in K])

    stack = oof[chosen].to_numpy()
    tta, hot = oof["target_tta"].to_numpy(), oof[[f"onehot_{c}" for c in range(4)]].to_numpy()
    if args.post == "recipe":
        ratio, threshold = RECIPE_POST
        oof["final"] = post_process(stack, tta, hot, ratio, threshold)
    else:       # nested: fold k is scored with the knobs chosen on the other folds' rows
        for k in K:
            other, mine = (oof["fold"] != k).to_numpy(), (oof["fold"] == k).to_numpy()
            r, t, _ = tune_post(stack[other], tta[other], hot[other], y.to_numpy()[other])
            oof.loc[mine, "final"] = post_process(stack[mine], tta[mine], hot[mine], r, t)
        ratio, threshold, _ = tune_post(stack, tta, hot, y.to_numpy())
    oof["final_recipe_post"] = post_process(stack, tta, hot, *RECIPE_POST)

    # The test side: the `all` networks' TTA means and the chosen stack.
    test_all = features(source, "all", "test")
    test = pd.DataFrame(index=test_all.index)
    for name, (_pred, test_pred, *_rest) in stacks.items():
        test[name] = test_pred
    test_hot = test_all[[f"onehot_{c}_mean" for c in range(4)]].to_numpy()
    test["final"] = post_process(test[chosen].to_numpy(), test_all["target_0_mean"].to_numpy(),
                                 test_hot, ratio, threshold)

    for k in K:     # the baseline: each fold's train-side mean era, as a constant
        oof.loc[oof["fold"] == k, "const_mean"] = y[oof["fold"] != k].mean()
    columns = ["const_mean", "meta_only", *[f"{n}_model" for n in singles], *stacks, "final", "final_recipe_post"]
    rows = []
    for k in (*K, "overall"):
        part = oof if k == "overall" else oof[oof["fold"] == k]
        rows.append({"fold": k, "n": len(part), **{c: rmse(part[c], part["target"]) for c in columns}})
    cv = pd.DataFrame(rows)
    common.write_csv(out / "cv.csv", cv, float_format="%.5f")
    common.write_csv(out / "oof.csv", oof.reset_index(), float_format="%.6g")
    common.write_csv(out / "test.csv", test.reset_index(), float_format="%.6g")
    common.write_json(out / "params.json", {
        "stack": chosen, "mode": args.mode, "meta": args.meta, "post": args.post, "ratio": ratio, "threshold": threshold,
        "best_iterations": {name: [int(i) for i in v[2]] for name, v in stacks.items()},
        "cv_overall": {c: float(cv.iloc[-1][c]) for c in columns},
    })
    plots(out, stacks[chosen][3], y.to_numpy(), oof["final"].to_numpy())
    common.write_provenance(out, vars(args), started)
    common.mark_done(out)
    print(cv.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"[06] submission: {chosen}, post-processing ratio {ratio} threshold {threshold} "
          f"[{time.time() - started:.1f}s]", flush=True)


if __name__ == "__main__":
    main()
