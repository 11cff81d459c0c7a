"""Stage 02's texture descriptors (photo_stats.TEXTURE_GROUPS) against known answers and
independent computations, on hostile photos through the real 02, 06's ablations of them, the
study that decides which of them 06 gets (bench/texture_study.py) at toy size."""
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, build_store, link_work
import photo_stats

PY = str(REPO / ".venv" / "bin" / "python")


def luma_of(rgb):
    return rgb.astype(np.float32) / 255 @ photo_stats.LUMA


def noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def lbp_by_hand(luma):
    """The rotation-invariant uniform code of every interior pixel, one pixel at a time."""
    ring = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    counts = np.zeros(photo_stats.LBP_CODES)
    for y in range(1, luma.shape[0] - 1):
        for x in range(1, luma.shape[1] - 1):
            bits = [int(luma[y + dy, x + dx] >= luma[y, x]) for dy, dx in ring]
            changes = sum(bits[i] != bits[(i + 1) % 8] for i in range(8))
            counts[sum(bits) if changes <= 2 else 9] += 1
    return counts / counts.sum()


def test_lbp_of_a_constant_a_checkerboard_and_noise():
    assert list(photo_stats.lbp_histogram(np.full((7, 9), 0.4, np.float32))) == [0] * 8 + [1, 0]
    board = (np.indices((8, 10)).sum(0) % 2).astype(np.float32)
    # a white square's 4 edge neighbours are black, its diagonal ones white: 8 changes, code 9;
    # a black square's neighbours are all >= it: code 8
    assert list(photo_stats.lbp_histogram(board)) == [0] * 8 + [0.5, 0.5]
    x = luma_of(noise((12, 15), seed=1))
    assert photo_stats.lbp_histogram(x) == pytest.approx(lbp_by_hand(x))


def test_lbp_half_is_the_lbp_of_the_photos_2x2_block_means():
    rgb = noise((13, 17), seed=2)                # odd sides: the last row and column are dropped
    luma = luma_of(rgb)
    blocks = np.array([[luma[2 * i: 2 * i + 2, 2 * j: 2 * j + 2].mean() for j in range(8)] for i in range(6)])
    values = dict(zip(photo_stats.COLUMNS, photo_stats.row(rgb, rgb)))
    assert [values[c] for c in photo_stats.TEXTURE_GROUPS["lbp_half"]] == pytest.approx(lbp_by_hand(blocks))
    assert [values[c] for c in photo_stats.TEXTURE_GROUPS["lbp"]] == pytest.approx(lbp_by_hand(luma))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (2, 2), (2, 9), (9, 2)])
def test_a_photo_of_one_or_two_pixels_a_side_has_defined_texture(shape):
    values = dict(zip(photo_stats.COLUMNS, photo_stats.row(noise(shape), noise(shape))))
    assert not np.isnan([values[c] for c in photo_stats.COLUMNS if c not in ("file_bytes", "bytes_per_pixel")]).any()


def test_02_writes_the_texture_columns_for_hostile_photos(tmp_path):
    """Through the real 02: a greyscale JPEG, a PNG named .jpg, a 1-pixel and a 2-pixel side."""
    photos = tmp_path / "photos"
    photos.mkdir()
    made = {"grey": ((60, 80), "L", dict(quality=70)), "png": ((50, 40), "RGB", dict(format="PNG")),
            "thin": ((1, 30), "RGB", dict(quality=90)), "two": ((40, 2), "RGB", dict(quality=80))}
    for name, (shape, mode, options) in made.items():
        pixels = noise(shape)[..., 0] if mode == "L" else noise(shape)
        Image.fromarray(pixels).save(photos / f"{name.ljust(20, '0')}.jpg", **options)
    out = build_store(photos, [n.ljust(20, "0") for n in made], tmp_path / "hvr", 24)
    stats = pd.read_csv(out / "stats.csv").set_index("object_id")
    stats.index = [i.rstrip("0") for i in stats.index]
    assert set(stats.index) == set(made) and not stats[photo_stats.NATIVE_ONLY].isna().any().any()
    for name in ("grey", "png"):            # noise: every group has weight, each sums to 1
        for columns in photo_stats.TEXTURE_GROUPS.values():
            assert stats.loc[name, columns].sum() == pytest.approx(1, abs=1e-5)
    assert (stats.loc[["thin", "two"], photo_stats.NATIVE_ONLY] == 0).all().all()   # no interior at either scale


def test_texture_study_runs_on_a_toy_work(demo_data, demo_folds, tmp_path):
    """bench/texture_study.py end to end on the demo folds and a 24 px store of the real 02, with
    an oof.csv of two fake networks for its blend: every variant scored, the page written."""
    work = link_work(demo_folds, tmp_path / "work", keep=["00_validate", "01_sgkfold"])
    ids = pd.read_csv(work / "00_validate" / "photos.csv", dtype={"object_id": str})["object_id"]
    build_store(demo_data / "photos", list(ids), work / "02_hvr", 24)
    folds = pd.read_csv(work / "01_sgkfold" / "oof_fold.csv", dtype={"object_id": str})
    train = pd.read_csv(demo_data / "train.csv", dtype={"object_id": str}).set_index("object_id")
    rng = np.random.default_rng(0)
    y = train.loc[folds["object_id"], "target"].to_numpy()
    (work / "06_stack").mkdir()
    pd.DataFrame({"object_id": folds["object_id"], "fold": folds["fold"], "target": y,
                  "target_model": y + rng.normal(0, 0.5, len(y)), "onehot_model": y + rng.normal(0, 0.8, len(y)),
                  "blend": y + rng.normal(0, 0.4, len(y))}).to_csv(work / "06_stack" / "oof.csv", index=False)
    page = tmp_path / "texture.md"
    p = subprocess.run([PY, "bench/texture_study.py", "--work", str(work), "--write", str(page)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    figures = {k: float(v) for k, v in (line.split(": ") for line in p.stdout.splitlines()
                                        if ": " in line and not line.startswith("|"))}
    assert all(0 < v < 4 for v in figures.values())
    variants = {re.fullmatch(r"meta_only_(\w+?)_rmse", n)[1] for n in figures if not re.search(r"fold\d_rmse$", n)
                if n.startswith("meta_only_")}
    names = ["base", *(f"base_{g}" for g in photo_stats.TEXTURE_GROUPS)]
    names += ["base_all"] if len(photo_stats.TEXTURE_GROUPS) > 1 else []
    assert set(names) <= variants      # and the forward selection's steps
    assert set(figures) == ({f"meta_only_{n}_rmse" for n in variants} | {f"blend_{n}_rmse" for n in variants}
                            | {f"meta_only_{n}_fold{k}_rmse" for n in variants for k in "012"} | {"blend_as_run_rmse"})
    counts = folds["fold"].astype(str).value_counts()
    for n in variants:     # pooled: the root of the folds' mean squares weighed by their rows
        pooled = sum(counts[k] * figures[f"meta_only_{n}_fold{k}_rmse"] ** 2 for k in "012") / len(folds)
        assert figures[f"meta_only_{n}_rmse"] == pytest.approx(np.sqrt(pooled), abs=2e-4)
    text = page.read_text()
    assert text.startswith("# ") and f"python bench/texture_study.py --work {work} --write {page}" in text
    rows = {line.split(" | ")[0][2:] for line in text.splitlines() if line.startswith("| base")}
    assert {r.replace("+", "_") for r in rows} == variants and "\nAdopted (forward selection" in text


def test_06s_meta_ablations_keep_the_texture_with_the_photo_as_decoded(tmp_path):
    """--meta native keeps the texture columns (measured on the photo as decoded); --meta stored
    has neither them nor the native pixel columns; a stats.csv of before the texture reads too."""
    from stacking import meta_table
    stats = pd.DataFrame([np.arange(len(photo_stats.COLUMNS), dtype=float)], columns=photo_stats.COLUMNS)
    stats.insert(0, "object_id", ["a" * 20])
    stats.to_csv(tmp_path / "stats.csv", index=False)
    native, stored = (set(meta_table(tmp_path, w).columns) for w in ("native", "stored"))
    prefixed = lambda names: {f"meta_{c}" for c in names}
    assert native == prefixed([*photo_stats.SIZE_COLUMNS, *photo_stats.PIXEL_COLUMNS, *photo_stats.NATIVE_ONLY])
    assert stored == prefixed([*photo_stats.SIZE_COLUMNS, *(f"{c}_stored" for c in photo_stats.PIXEL_COLUMNS)])
    stats.drop(columns=photo_stats.NATIVE_ONLY).to_csv(tmp_path / "stats.csv", index=False)
    assert set(meta_table(tmp_path, "stored").columns) == stored
