"""Stage 01: grouped, stratified folds and the word2vec targets, as in the recipe.

Reads DATA (train.csv, test.csv, materials.csv, techniques.csv). Writes WORK/01_sgkfold/:
  fold_{k}_train.csv, fold_{k}_test.csv   k in 0 1 2 all (fold `all` test = test.csv ids)
  word2vec.csv                            object_id, w2v_0..w2v_19 for every train object
  oof_fold.csv                            object_id, fold: the one fold that holds each row out
                                          before the moves (out-of-fold stacking reads it)
  folds.json                              per fold sizes, class counts, rows moved; then DONE

    python 01_sgkfold.py --data DATA --out work/01_sgkfold

Folds: StratifiedGroupKFold(n_splits=3) from scikit-learn, y = target, groups = art_series_id,
rows in file order, no shuffle. Then, as the recipe did, a fold whose train side is not a
multiple of --align loses train rows to its test side one at a time: each time a row of the
class most over-represented in that train side (share minus the whole set's share), from a
series with no other row in that train side (so no series lands on both sides); the last such
row in file order, so the choice is deterministic.

word2vec: one sentence per train object, its materials (file order; "pencil" and "chalk"
renamed "pencil (material)" / "chalk (material)") then its techniques; gensim Word2Vec
(vector_size 20, window 1, min_count 1, 100 epochs, one worker, fixed seed, a process-
independent hash); the object's vector is the mean of its words' vectors. An object with no
names gets empty cells (NaN): 04 masks those rows out of the word2vec loss.
"""
import argparse
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from gensim.models import Word2Vec
from sklearn.model_selection import StratifiedGroupKFold

import common
import rawdata
import tasks

# -----------------------------------------------------------------------------
N_SPLITS = 3           # the recipe's 3-fold CV
W2V_DIM = 20           # 04's word2vec head has 20 outputs
RENAMED = {"pencil": "pencil (material)", "chalk": "chalk (material)"}  # names in both tables

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--data", required=True, help="raw-data directory")
p.add_argument("--out", required=True, help="this stage's directory")
p.add_argument("--align", type=int, default=64, help="train sides are cut to a multiple of this (1: no cut)")
p.add_argument("--seed", type=int, default=42, help="word2vec seed")
p.add_argument("--w2v-epochs", type=int, default=100, help="the recipe's 100 epochs")


def split_folds(train, align, where="train.csv"):
    """[(train_idx, test_idx, oof_idx)] per fold, positions into `train` (file order).

    oof_idx is the test side before the moves: each train row is in exactly one fold's
    oof_idx (its out-of-fold fold); a moved row is also on a second fold's test side.
    """
    sgkf = StratifiedGroupKFold(n_splits=N_SPLITS)
    y, groups = train["target"].to_numpy(), train["art_series_id"].to_numpy()
    overall = np.bincount(y, minlength=tasks.N_CLASSES) / len(y)
    folds = []
    for tr, te in sgkf.split(np.zeros(len(y)), y, groups):
        tr, moved = list(tr), []
        if len(tr) < align:
            common.fail(f"{where}: fold {len(folds)}'s train side has {len(tr)} rows, fewer than "
                        f"--align {align} ({len(y)} train rows in all); it needs more data, or --align 1")
        while len(tr) % align:
            share = np.bincount(y[tr], minlength=tasks.N_CLASSES) / len(tr)
            series_count = pd.Series(groups[tr]).value_counts()
            for cls in np.argsort(overall - share, kind="stable"):   # most over-represented first
                lone = [i for i in tr if y[i] == cls and series_count[groups[i]] == 1]
                if lone:
                    break
            else:
                common.fail(f"{where}: fold {len(folds)} has {len(tr)} train rows and no single-row series "
                            f"left to move to reach a multiple of --align {align}; use --align 1")
            tr.remove(lone[-1])
            moved.append(train["object_id"].iat[lone[-1]])
        moved_idx = np.flatnonzero(train["object_id"].isin(moved))
        folds.append((np.array(tr), np.sort(np.concatenate([te, moved_idx])), te))
    return folds


def check_folds(train, folds, align):
    """The invariants every later stage relies on; a violation stops the stage."""
    y, groups = train["target"].to_numpy(), train["art_series_id"].to_numpy()
    overall = np.bincount(y, minlength=tasks.N_CLASSES) / len(y)
    seen = np.zeros(len(train), int)
    for k, (tr, te, oof) in enumerate(folds):
        if set(tr) & set(te) or len(tr) + len(te) != len(train):
            raise RuntimeError(f"fold {k}: train and test sides overlap or miss rows")
        shared = set(groups[tr]) & set(groups[te])
        if shared:
            raise RuntimeError(f"fold {k}: series on both sides: {common.show_ids(sorted(shared))}")
        if len(tr) % align:
            raise RuntimeError(f"fold {k}: train side {len(tr)} is not a multiple of {align}")
        shares = np.bincount(y[tr], minlength=tasks.N_CLASSES) / len(tr)
        cls = int(np.abs(shares - overall).argmax())
        gap = abs(shares[cls] - overall[cls])
        tolerance = max(0.01, 1 / len(tr))     # 1 pp; one row's share on a tiny (demo) set
        if gap > tolerance + 1e-12:
            sizes = pd.Series(groups[y == cls]).value_counts()
            raise RuntimeError(
                f"fold {k}: target {cls} is {shares[cls]:.1%} of the train side but {overall[cls]:.1%} "
                f"of all rows (off by {gap:.3f} > {tolerance:.3f}): its {sizes.sum()} rows are in "
                f"{len(sizes)} series (the largest, {sizes.index[0]!r}, has {sizes.iloc[0]}), which "
                f"grouped folds keep whole, so they cannot be spread evenly; more series of that era "
                f"are needed")
        if not set(oof) <= set(te):
            raise RuntimeError(f"fold {k}: a row held out before the moves is on the train side")
        seen[oof] += 1
    if (seen != 1).any():
        raise RuntimeError(f"{(seen != 1).sum()} train rows are not out-of-fold in exactly one fold")


def word2vec_table(train, materials, techniques, seed, epochs):
    materials = materials.assign(name=materials["name"].replace(RENAMED))
    names = pd.concat([materials, techniques], ignore_index=True)
    sentences = names.groupby("object_id", sort=False)["name"].apply(list)
    model = Word2Vec(sentences=list(sentences), vector_size=W2V_DIM, window=1, min_count=1,
                     epochs=epochs, workers=1, seed=seed,
                     hashfxn=lambda s: zlib.crc32(s.encode()))   # builtin hash() varies per process
    vectors = np.full((len(train), W2V_DIM), np.nan, dtype=np.float32)
    for row, oid in enumerate(train["object_id"]):
        if oid in sentences.index:
            vectors[row] = np.mean([model.wv[w] for w in sentences[oid]], axis=0)
    table = pd.DataFrame(vectors, columns=[f"w2v_{i}" for i in range(W2V_DIM)])
    table.insert(0, "object_id", train["object_id"].to_numpy())
    return table


def main():
    args = common.parse(p, "01")
    with common.disk_full_is_an_error(args.out):
        run(args)


def run(args):
    stage = common.Stage(args.out)
    out = stage.dir
    try:
        train = rawdata.load_train(args.data)
        test = rawdata.load_test(args.data, train["object_id"])
        materials = rawdata.load_names(args.data, "materials.csv", train["object_id"])
        techniques = rawdata.load_names(args.data, "techniques.csv", train["object_id"])
    except common.DataError as e:
        common.fail(str(e))
    if train["art_series_id"].nunique() < N_SPLITS:
        common.fail(f"{Path(args.data) / 'train.csv'}: {N_SPLITS} folds need at least {N_SPLITS} series")
    counts = np.bincount(train["target"], minlength=tasks.N_CLASSES)
    few = [c for c in range(tasks.N_CLASSES) if counts[c] < N_SPLITS]
    if few:       # StratifiedGroupKFold would only warn, and a fold would lack the class
        common.fail(f"{Path(args.data) / 'train.csv'}: target {few[0]} has {counts[few[0]]} row(s); "
                    f"{N_SPLITS} stratified folds need at least {N_SPLITS} rows of every target "
                    f"(rows per target 0-{tasks.N_CLASSES - 1}: {counts.tolist()})")

    folds = split_folds(train, args.align, Path(args.data) / "train.csv")
    try:
        check_folds(train, folds, args.align)
    except RuntimeError as e:
        common.fail(f"{Path(args.data) / 'train.csv'}: {e}")
    summary, oof_fold = {}, np.full(len(train), -1)
    for k, (tr, te, oof) in enumerate(folds):
        oof_fold[oof] = k
        moved = sorted(set(train["object_id"].iloc[te]) - set(train["object_id"].iloc[oof]))
        common.write_csv(common.fold_csv(out, k, "train"), train.iloc[tr])
        common.write_csv(common.fold_csv(out, k, "test"), train.iloc[te])
        summary[str(k)] = {
            "train": len(tr), "test": len(te), "moved_to_test": moved,
            "train_classes": np.bincount(train["target"].iloc[tr], minlength=tasks.N_CLASSES).tolist(),
            "test_classes": np.bincount(train["target"].iloc[te], minlength=tasks.N_CLASSES).tolist(),
        }
    common.write_csv(out / "oof_fold.csv", pd.DataFrame({"object_id": train["object_id"], "fold": oof_fold}))
    common.write_csv(common.fold_csv(out, "all", "train"), train)
    common.write_csv(common.fold_csv(out, "all", "test"), test[["object_id"]])
    summary["all"] = {"train": len(train), "test": len(test),
                      "train_classes": np.bincount(train["target"], minlength=tasks.N_CLASSES).tolist()}

    w2v = word2vec_table(train, materials, techniques, args.seed, args.w2v_epochs)
    common.write_csv(Path(out) / "word2vec.csv", w2v, float_format="%.7g")
    summary["word2vec"] = {"objects": len(w2v), "without_names": int(w2v["w2v_0"].isna().sum())}
    common.write_json(out / "folds.json", summary)
    stage.finish(vars(args))
    sizes = " ".join(f"{k}:{summary[str(k)]['train']}/{summary[str(k)]['test']}" for k in range(N_SPLITS))
    print(f"folds (train/test) {sizes} all:{len(train)}/{len(test)}; word2vec for {len(w2v)} objects "
          f"({summary['word2vec']['without_names']} without names) [{time.time() - stage.started:.1f}s]")


if __name__ == "__main__":
    main()
