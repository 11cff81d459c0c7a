"""The k-means features (kmeans_features.py) that 06's statistics booster sees, their study
(bench/kmeans_study.py), 06's per-photo models (stacking.bagged, ridge_level_one) with their study
(bench/level_one.py), and the level-two study over a finished 06 (bench/level_two.py)."""
import subprocess

import numpy as np
import pandas as pd

import kmeans_features as kf
import stacking as stack
from conftest import REPO

PY = str(REPO / ".venv" / "bin" / "python")


def photos(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_patches_are_the_photos_own_pixels_in_order():
    images = photos(2, size=9)
    x = kf.patches(images, stride=2)
    assert x.shape == (2, 2, 2, kf.PATCH * kf.PATCH * 3)
    assert np.array_equal(x[1, 1, 0], images[1, 2:2 + kf.PATCH, 0:kf.PATCH].reshape(-1).astype(np.float32))


def test_features_are_deterministic_and_one_photos_do_not_depend_on_the_others():
    images = photos(40)
    model = kf.learn(images, seed=3)
    again = kf.learn(images, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(model, again))
    out = kf.encode(images, model)
    k = model[2].shape[0]
    assert out.shape == (40, 4 * k) and out.dtype == np.float32 and (out >= 0).all()
    assert np.allclose(kf.encode(images[7:9], model), out[7:9], atol=1e-5)      # chunking changes nothing
    # a triangle activation is positive for the centroids nearer than the mean distance: some, not all
    assert 0 < (out > 0).mean() < 1


def test_brightness_and_contrast_are_normalised_away_and_quadrants_are_where_they_say():
    images = photos(30)
    model = kf.learn(images)
    grey = kf.encode(np.stack([np.full((16, 16, 3), v, np.uint8) for v in (40, 200)]), model)
    assert np.allclose(grey[0], grey[1], atol=1e-4)          # two flat photos: one encoding
    k = model[2].shape[0]
    assert np.allclose(grey[0].reshape(4, k), grey[0][:k], atol=1e-4)   # the same in every quadrant
    half = images[:1].copy()
    half[0, :, 5:] = 128        # flat where the right quadrants' patches (from column 11 // 2) lie
    quads = kf.encode(half, model).reshape(4, k)
    assert np.allclose(quads[1], grey[0][:k], atol=1e-4) and np.allclose(quads[3], grey[0][:k], atol=1e-4)
    assert not np.allclose(quads[0], grey[0][:k], atol=1e-2)


def test_photo_features_are_the_quadrants_mean_and_few_photos_get_fewer_centroids():
    images = photos(3)
    whole = kf.photo_features(images)
    assert whole.shape == (3, 3 * 20 // 10)          # 60 patches: 6 centroids
    model = kf.learn(images)
    assert np.allclose(whole, kf.encode(images, model).reshape(3, 4, -1).mean(1))


def study(script, work, page, *args):
    """bench/<script> on a WORK, writing its page; its run (exit 0 asserted)."""
    p = subprocess.run([PY, f"bench/{script}", "--work", str(work), *args, "--write", str(page)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def table_rows(stdout):
    """The markdown table rows of a study's output, without its header: [cells]."""
    return [l.split(" | ") for l in stdout.splitlines() if l.startswith("| ") and "pooled" not in l]


def test_kmeans_study_runs_on_a_toy_work(smoke_run, tmp_path):
    """bench/kmeans_study.py end to end on the smoke run (its 24 px store, folds and 06)."""
    work, _ = smoke_run
    page = tmp_path / "kmeans.md"
    p = study("kmeans_study.py", work, page, "--k", "16")
    for row in ("meta_only", "meta+km_whole", "meta+km_quadrants", "km_ridge", "blend of meta_only",
                "blend of both"):
        assert f"| {row} |" in p.stdout
    assert float(p.stdout.split("meta_only_rmse: ")[1].split()[0]) < 1.5
    assert page.read_text().startswith("# k-means")


def test_level_two_study_runs_on_a_toy_work(smoke_run, tmp_path):
    work, _ = smoke_run
    p = study("level_two.py", work, tmp_path / "level_two.md")
    table = table_rows(p.stdout)
    assert [cells[0][2:] for cells in table] == ["blend (06)", "blend_steps (06)", "ridge", "lightgbm depth 2"]
    # 06's own blend, refitted here, scores what 06 wrote for it
    oof = pd.read_csv(work / "06_stack" / "oof.csv")
    ours = float(table[0][1])
    assert abs(ours - np.sqrt(((oof["blend"] - oof["target"]) ** 2).mean())) < 1e-4


def test_06_learns_the_features_once_per_store_and_again_for_another(smoke_run, tmp_path, monkeypatch):
    work, _ = smoke_run
    cache = tmp_path / "kmeans.npz"
    first = kf.stored_photo_features(work / "02_hvr", cache)
    assert cache.exists() and len(first) == len((work / "02_hvr" / "ids.txt").read_text().split())

    def relearn(images, seed=0):
        raise AssertionError("learned again")
    monkeypatch.setattr(kf, "photo_features", relearn)
    assert kf.stored_photo_features(work / "02_hvr", cache).equals(first)       # a restack reads them
    with np.load(cache) as kept:
        np.savez(cache, features=kept["features"], key=np.array("another store"))
    monkeypatch.undo()
    assert kf.stored_photo_features(work / "02_hvr", cache).equals(first)       # another store: learned again
    with np.load(cache) as kept:
        assert str(kept["key"]) != "another store"


def test_a_bagged_booster_is_the_mean_of_one_per_seed(smoke_run):
    work, _ = smoke_run
    folds, oof_fold = stack.read_folds(work / "01_sgkfold")
    meta = stack.meta_table(work / "02_hvr", "on")
    X, X_test = meta.loc[oof_fold.index], meta.loc[folds["all"]["test"]["object_id"]]
    pred, test, iters, _final = stack.bagged(X, X_test, folds, oof_fold, seeds=(0, 1))
    single = [stack.cross_validate(X, X_test, folds, oof_fold, params={**stack.META_PARAMS, "seed": s},
                                   patience=stack.META_EARLY_STOP) for s in (0, 1)]
    for k in stack.K:
        assert np.allclose(pred[k], (single[0][0][k] + single[1][0][k]) / 2)
    assert np.allclose(test, (single[0][1] + single[1][1]) / 2)
    assert iters == single[0][2] + single[1][2]
    assert not np.allclose(single[0][0]["0"], single[1][0]["0"])        # the seeds sample differently


def test_06_blends_its_bagged_boosters_and_the_ridge(smoke_run):
    """06's cv.csv scores photo_ridge beside the boosters, its blends weigh it, and its test
    predictions stay on the eras' scale."""
    work, _ = smoke_run
    cv = pd.read_csv(work / "06_stack" / "cv.csv")
    assert {"meta_only", "stats_only", "photo_ridge"} <= set(cv.columns)
    params = pd.read_json(work / "06_stack" / "params.json", typ="series")
    for weights in params["blend_weights"].values():
        assert {"meta_only", "stats_only", "photo_ridge"} <= set(weights)
    test = pd.read_csv(work / "06_stack" / "test.csv")
    assert test["blend"].notna().all()
    oof = pd.read_csv(work / "06_stack" / "oof.csv")
    assert oof["photo_ridge"].between(0, 3).all()


def test_level_one_study_reproduces_06s_blend_on_a_toy_work(smoke_run, tmp_path):
    work, _ = smoke_run
    page = tmp_path / "level_one.md"
    p = study("level_one.py", work, page)
    rows = {cells[0][2:]: float(cells[2]) for cells in table_rows(p.stdout)}
    assert {"meta_only seed 0", "meta_only bagged", "stats_only bagged", "photo_ridge quantiles",
            "blend: bagged boosters, photo_ridge (06)"} <= set(rows)
    oof = pd.read_csv(work / "06_stack" / "oof.csv")
    for column in ("meta_only", "stats_only", "photo_ridge", "blend"):     # what 06 wrote, refitted here
        name = {"meta_only": "meta_only bagged", "stats_only": "stats_only bagged",
                "photo_ridge": "photo_ridge quantiles", "blend": "blend: bagged boosters, photo_ridge (06)"}[column]
        assert abs(rows[name] - np.sqrt(((oof[column] - oof["target"]) ** 2).mean())) < 1e-4, column
    assert page.read_text().startswith("# Level one")
