"""Stage 01 (`make folds`): the fold invariants every later stage relies on, on generated data and on
the real data when present; byte-identical reruns; the recipe's row moves on constructed cases."""
import json

import numpy as np
import pandas as pd
import pytest

import common
import rawdata
from conftest import load_script

ALIGN = 64                      # 01_sgkfold.py's default --align (the Makefile does not change it)
W2V_COLS = [f"w2v_{i}" for i in range(20)]
SPLIT_FOLDS = ("0", "1", "2")


def read(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def check_fold_outputs(folds_dir, data_dir, align=ALIGN):
    """Every invariant of WORK/01_sgkfold against the raw data it was built from."""
    assert (folds_dir / "DONE").exists()
    train = rawdata.load_train(data_dir)
    test = rawdata.load_test(data_dir)
    raw_train = rawdata.read_raw_csv(data_dir / "train.csv")[rawdata.RAW_FILES["train.csv"]]
    ids = train["object_id"].to_numpy()
    row_of = {oid: i for i, oid in enumerate(ids)}
    y, groups = train["target"].to_numpy(), train["art_series_id"].to_numpy()
    overall = np.bincount(y, minlength=4) / len(y)
    summary = json.loads((folds_dir / "folds.json").read_text())

    oof = read(folds_dir / "oof_fold.csv")
    assert list(oof.columns) == ["object_id", "fold"]
    assert list(oof["object_id"]) == list(ids), "oof_fold.csv must list train.csv's rows in order"
    assert set(oof["fold"]) <= set(SPLIT_FOLDS)     # so each row is out-of-fold in exactly one fold

    for k in SPLIT_FOLDS:
        tr, te = read(common.fold_csv(folds_dir, k, "train")), read(common.fold_csv(folds_dir, k, "test"))
        for side in (tr, te):
            assert list(side.columns) == list(raw_train.columns), f"fold {k}: columns"
            rows = [row_of[o] for o in side["object_id"]]
            assert rows == sorted(rows), f"fold {k}: rows not in train.csv's order"
            pd.testing.assert_frame_equal(side.reset_index(drop=True),
                                          raw_train.iloc[rows].reset_index(drop=True),
                                          obj=f"fold {k} rows vs train.csv")
        tr_rows, te_rows = {row_of[o] for o in tr["object_id"]}, {row_of[o] for o in te["object_id"]}
        assert not tr_rows & te_rows, f"fold {k}: a row on both sides"
        assert tr_rows | te_rows == set(range(len(train))), f"fold {k}: rows missing"
        shared = set(groups[list(tr_rows)]) & set(groups[list(te_rows)])
        assert not shared, f"fold {k}: series on both sides: {sorted(shared)[:5]}"
        assert len(tr) % align == 0, f"fold {k}: train side {len(tr)} not a multiple of {align}"
        gap = np.abs(np.bincount(y[list(tr_rows)], minlength=4) / len(tr) - overall).max()
        tolerance = max(0.01, 1 / len(tr))      # 1 pp; one row's share where that is more (< 100 rows)
        assert gap <= tolerance + 1e-12, f"fold {k}: train class shares {gap:.4f} off the whole set's"
        held_out = set(np.flatnonzero(oof["fold"].to_numpy() == k))
        assert held_out <= te_rows, f"fold {k}: an out-of-fold row of fold {k} is on its train side"
        moved = sorted(ids[sorted(te_rows - held_out)])
        assert summary[k]["moved_to_test"] == moved
        assert (summary[k]["train"], summary[k]["test"]) == (len(tr), len(te))
        assert summary[k]["train_classes"] == np.bincount(y[list(tr_rows)], minlength=4).tolist()
        assert summary[k]["test_classes"] == np.bincount(y[list(te_rows)], minlength=4).tolist()

    all_tr = read(common.fold_csv(folds_dir, "all", "train"))
    all_te = read(common.fold_csv(folds_dir, "all", "test"))
    pd.testing.assert_frame_equal(all_tr, raw_train.reset_index(drop=True), obj="fold all train")
    assert list(all_te.columns) == ["object_id"]
    assert list(all_te["object_id"]) == list(test["object_id"]), "fold all test = test.csv's ids in order"
    assert (summary["all"]["train"], summary["all"]["test"]) == (len(train), len(test))

    w2v = pd.read_csv(folds_dir / "word2vec.csv", dtype={"object_id": str})
    assert list(w2v.columns) == ["object_id"] + W2V_COLS
    assert list(w2v["object_id"]) == list(ids)
    named = set(rawdata.load_names(data_dir, "materials.csv", ids)["object_id"]) | \
        set(rawdata.load_names(data_dir, "techniques.csv", ids)["object_id"])
    has_names = w2v["object_id"].isin(named).to_numpy()
    values = w2v[W2V_COLS].to_numpy()
    assert np.isfinite(values[has_names]).all(), "an object with names has NaN word2vec cells"
    assert np.isnan(values[~has_names]).all(), "an object without names must have all-NaN cells"
    assert summary["word2vec"] == {"objects": len(ids), "without_names": int((~has_names).sum())}
    return summary


def test_fold_invariants_on_generated_data(demo_folds, demo_data):
    check_fold_outputs(demo_folds / "01_sgkfold", demo_data)


def test_fold_invariants_on_real_data(make, real_data, tmp_path):
    make("folds", work=tmp_path / "work", data=real_data)
    check_fold_outputs(tmp_path / "work" / "01_sgkfold", real_data)


def test_make_folds_twice_is_byte_identical_across_hash_seeds(make, demo_data, demo_folds, tmp_path):
    """A second run, in another process with another str-hash seed, writes the same bytes."""
    again = tmp_path / "work"
    make("folds", work=again, data=demo_data, env={"PYTHONHASHSEED": "12345"})
    def stage_files(work):    # 00_validate and 01_sgkfold; later stages may share this WORK
        return sorted(p.relative_to(work) for d in ("00_validate", "01_sgkfold")
                      for p in (work / d).rglob("*") if p.is_file())
    files = stage_files(demo_folds)
    assert files == stage_files(again)
    assert any(f.name == "word2vec.csv" for f in files)
    differ = [str(f) for f in files if f.name != "provenance.json"
              and (demo_folds / f).read_bytes() != (again / f).read_bytes()]
    assert not differ, f"outputs differ between two runs: {differ}"


def test_second_make_folds_does_nothing(make, demo_data, demo_folds):
    before = {p: p.stat().st_mtime_ns for p in demo_folds.rglob("*") if p.is_file()}
    p = make("folds", work=demo_folds, data=demo_data)
    assert "01_sgkfold.py" not in p.stdout and "rawdata.py validate" not in p.stdout, p.stdout
    after = {p: p.stat().st_mtime_ns for p in demo_folds.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p in before} == before


def test_word2vec_rows(make, demo_copy, tmp_path):
    """The mean of the object's word vectors: same words, same vector; the material "pencil" is
    another word than the technique "pencil"; no names: all-NaN, written as 20 empty cells."""
    ids = list(rawdata.load_train(demo_copy)["object_id"])
    a, b, c, d, e, bare = ids[:6]
    new_materials = [("pencil", a), ("ink", d), ("paper", d), ("paper", e), ("ink", e)]
    new_techniques = [("pencil", b), ("pencil", c)]
    for f, rows in (("materials.csv", new_materials), ("techniques.csv", new_techniques)):
        df = read(demo_copy / f)
        df = pd.concat([df[~df["object_id"].isin(ids[:6])], pd.DataFrame(rows, columns=df.columns)])
        df.to_csv(demo_copy / f, index=False)
    make("folds", work=tmp_path / "work", data=demo_copy)
    folds_dir = tmp_path / "work" / "01_sgkfold"
    check_fold_outputs(folds_dir, demo_copy)
    w2v = pd.read_csv(folds_dir / "word2vec.csv", dtype={"object_id": str}).set_index("object_id")
    np.testing.assert_allclose(w2v.loc[b], w2v.loc[c], rtol=0, atol=1e-6)    # same word
    np.testing.assert_allclose(w2v.loc[d], w2v.loc[e], rtol=0, atol=1e-6)    # same words, other order
    assert np.abs(w2v.loc[a] - w2v.loc[b]).max() > 1e-3, "material pencil == technique pencil"
    assert w2v.loc[bare].isna().all()
    assert f"{bare}{',' * 20}" in (folds_dir / "word2vec.csv").read_text().splitlines()


# ---- the recipe's row moves, on constructed cases with known answers ------------------------------
@pytest.fixture(scope="module")
def sgkfold():
    return load_script("01_sgkfold.py")


def table(targets, series):
    return pd.DataFrame({"object_id": [f"{i:020x}" for i in range(len(targets))],
                         "sorting_date": 0, "art_series_id": [str(s) for s in series],
                         "target": np.asarray(targets)})


class OneSplit:
    """Stands in for StratifiedGroupKFold: yields the given (train, test) positions."""
    splits = []

    def __init__(self, n_splits):
        pass

    def split(self, X, y, groups):
        yield from ((np.array(tr), np.array(te)) for tr, te in self.splits)


# 12 rows: classes 0 0 1 1 1 2 2 2 2 3 3 3, whole-set shares 2/12 3/12 4/12 3/12; rows 0,1 form
# one series, rows 7,8 another, every other row is a series of its own.
HAND_Y = [0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
HAND_SERIES = ["s01", "s01", 2, 3, 4, 5, 6, "s78", "s78", 9, 10, 11]


@pytest.mark.parametrize("train_side, expect_moved, why", [
    # train classes 1:3 2:4 3:2 of 9; class 2 is the most over-represented (4/9 vs 4/12); its
    # rows 7,8 share a series, so the last lone one, row 6, moves.
    ([2, 3, 4, 5, 6, 7, 8, 9, 10], [6], "most over-represented class, last lone row"),
    # train 0,1,7,8,9: class 0 (2/5) is most over-represented but its rows share series s01, class 2
    # next but s78, so class 3's lone row 9 moves.
    ([0, 1, 7, 8, 9], [9], "falls through to the next class when no lone row"),
    # train 0..7 (8 rows, align 4): already a multiple, nothing moves.
    ([0, 1, 2, 3, 4, 5, 6, 7], [], "aligned already"),
])
def test_row_moves_on_hand_made_split(sgkfold, monkeypatch, train_side, expect_moved, why):
    test_side = sorted(set(range(12)) - set(train_side))
    monkeypatch.setattr(sgkfold, "StratifiedGroupKFold", OneSplit)
    monkeypatch.setattr(OneSplit, "splits", [(train_side, test_side)])
    [(tr, te, oof)] = sgkfold.split_folds(table(HAND_Y, HAND_SERIES), align=4)
    assert list(oof) == test_side
    assert list(tr) == [i for i in train_side if i not in expect_moved], why
    assert list(te) == sorted(test_side + expect_moved), why


def test_row_moves_fail_clearly_without_a_movable_row(sgkfold, monkeypatch, capsys):
    monkeypatch.setattr(sgkfold, "StratifiedGroupKFold", OneSplit)
    monkeypatch.setattr(OneSplit, "splits", [([0, 1, 2, 3, 7, 8], [4, 5, 6, 9, 10, 11])])
    series = ["s01", "s01", "s23", "s23", 4, 5, 6, "s78", "s78", 9, 10, 11]   # 6 train rows, all in
    with pytest.raises(SystemExit) as e:                                         # 2-row series
        sgkfold.split_folds(table(HAND_Y, series), align=4)
    assert e.value.code != 0
    assert "no single-row series left to move" in capsys.readouterr().err


def test_recipe_numbers_on_a_full_size_construction(sgkfold):
    """On the real, full 3937-row train.csv StratifiedGroupKFold gives train 2624/2625/2625 and
    the one-row move makes every fold 2624/1313. A train set with the real class counts and a
    similar series structure reproduces the first numbers; the move must then give the second."""
    rng = np.random.default_rng(0)
    remaining = np.array([475, 896, 1511, 1055])
    y, series = [], []
    for size in [9, 7, 5, 4, 4, 3, 3, 3] + [2] * 40:      # a few multi-row series, one era each
        k = int(rng.choice(4, p=remaining / remaining.sum()))
        y += [k] * size
        series += [len(set(series))] * size
        remaining[k] -= size
    for k in range(4):                                      # the rest: singletons
        for _ in range(remaining[k]):
            y.append(k)
            series.append(len(set(series)))
    order = rng.permutation(len(y))
    train = table(np.array(y)[order], np.array(series)[order])
    assert len(train) == 3937 and np.bincount(train["target"]).tolist() == [475, 896, 1511, 1055]

    sgkf = sgkfold.StratifiedGroupKFold(n_splits=3)
    before = [len(tr) for tr, _ in sgkf.split(train, train["target"], train["art_series_id"])]
    assert before == [2624, 2625, 2625], "the construction no longer mirrors the recipe's split"
    folds = sgkfold.split_folds(train, align=ALIGN)
    assert [(len(tr), len(te)) for tr, te, _ in folds] == [(2624, 1313)] * 3
    assert [len(te) - len(oof) for _, te, oof in folds] == [0, 1, 1]      # one row moved where 2625
    sgkfold.check_folds(train, folds, ALIGN)
