"""Stage 00 (00_demo_data.py): the generated data set has the competition's schema (compared with
the real data when present), follows from its seed alone, and is shaped like the real task."""
import os
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import rawdata
import tasks
from conftest import DEMO_SIZE, MAKE_ENV_DROP, REPO, generate_demo

REAL_CLASS_COUNTS = np.array([475, 896, 1511, 1055])   # the competition's train.csv: rows per era
COMPETITION_FILES = {"train.csv", "test.csv", "materials.csv", "techniques.csv", "sample_submission.csv"}
STAGE_FILES = {"DONE", "provenance.json"}               # 00's bookkeeping beside the raw files
HEX20 = r"[0-9a-f]{20}"


def top_level(path):
    return {p.name for p in path.iterdir() if p.is_file()}, {p.name for p in path.iterdir() if p.is_dir()}


def photo_facts(path):
    """What a stage may rely on about a photo: container, colour mode, baseline, sizes."""
    with Image.open(path) as im:
        return dict(format=im.format, mode=im.mode, jfif="jfif" in im.info,
                    progressive=bool(im.info.get("progressive") or im.info.get("progression")),
                    long=max(im.size), short=min(im.size))


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory):
    """What `make demo` makes: the script's default sizes."""
    return generate_demo(tmp_path_factory.mktemp("demo_default") / "raw")


def test_files_and_columns(demo_data):
    files, dirs = top_level(demo_data)
    assert files == COMPETITION_FILES | STAGE_FILES and dirs == {"photos"}
    for f, cols in rawdata.RAW_FILES.items():
        assert list(pd.read_csv(demo_data / f, nrows=0).columns) == cols, f
    assert list(pd.read_csv(demo_data / "sample_submission.csv", nrows=0).columns) == ["target"]


def test_schema_equals_real_data(demo_data, real_data):
    demo_files, demo_dirs = top_level(demo_data)
    real_files, real_dirs = top_level(real_data)
    assert demo_files - STAGE_FILES == real_files and demo_dirs == real_dirs
    for f in sorted(real_files):
        real, demo = pd.read_csv(real_data / f), pd.read_csv(demo_data / f)
        assert list(demo.columns) == list(real.columns), f
        assert demo.dtypes.astype(str).to_dict() == real.dtypes.astype(str).to_dict(), f
        for col in real.columns:      # id-like columns: same format (20 lowercase hex characters)
            if real[col].dtype != np.int64 and real[col].astype(str).str.fullmatch(HEX20).all():
                assert demo[col].astype(str).str.fullmatch(HEX20).all(), f"{f}: {col} format"
        real_bytes, demo_bytes = (real_data / f).read_bytes(), (demo_data / f).read_bytes()
        assert (b"\r\n" in demo_bytes) == (b"\r\n" in real_bytes), f"{f}: line ends"
        assert demo_bytes[:3] != b"\xef\xbb\xbf" or real_bytes[:3] == b"\xef\xbb\xbf", f"{f}: BOM"
    real_photos = sorted((real_data / "photos").glob("*.jpg"))[::200]           # ~50 of 9856
    keys = ("format", "mode", "jfif", "progressive", "long")
    real_kinds = {tuple(photo_facts(p)[k] for k in keys) for p in real_photos}
    demo_kinds = {tuple(photo_facts(p)[k] for k in keys) for p in (demo_data / "photos").glob("*.jpg")}
    assert demo_kinds == real_kinds


def test_rows_are_consistent(demo_data):
    train, test = rawdata.load_train(demo_data), rawdata.load_test(demo_data)
    assert (len(train), len(test)) == (DEMO_SIZE["train"], DEMO_SIZE["test"])
    assert (tasks.era_of_date(train["sorting_date"]) == train["target"]).all()
    assert train["sorting_date"].between(1440, 1991).all()
    ids = set(train["object_id"]) | set(test["object_id"])
    assert len(ids) == len(train) + len(test), "ids unique across train and test"
    assert all(re.fullmatch(HEX20, i) for i in ids)
    assert {p.stem for p in (demo_data / "photos").iterdir()} == ids, "one photo per id, no others"
    assert set(train["art_series_id"]).isdisjoint(set(test["object_id"]))
    sub = pd.read_csv(demo_data / "sample_submission.csv")
    assert len(sub) == len(test) and sub["target"].between(0, 3).all()


def test_names_only_for_train_objects(demo_data):
    train, test = rawdata.load_train(demo_data), rawdata.load_test(demo_data)
    for f in ("materials.csv", "techniques.csv"):
        names = pd.read_csv(demo_data / f, dtype=str)
        assert set(names["object_id"]) <= set(train["object_id"]), f
        assert set(names["object_id"]).isdisjoint(test["object_id"]), f
        assert len(names) and (names["name"].str.len() > 0).all(), f


def test_photos_like_the_real_ones(demo_data):
    """As the real photos are: JFIF, RGB, baseline; long side exactly 224 px, short side 35-224."""
    facts = [photo_facts(p) for p in sorted((demo_data / "photos").glob("*.jpg"))]
    assert facts and all(f["format"] == "JPEG" and f["mode"] == "RGB" and f["jfif"]
                         and not f["progressive"] for f in facts)
    assert all(f["long"] == 224 and 35 <= f["short"] <= 224 for f in facts)
    assert len({f["short"] for f in facts}) > 5, "aspect ratios should vary like the real ones"
    for p in sorted((demo_data / "photos").glob("*.jpg"))[:20]:      # and the pixels decode
        with Image.open(p) as im:
            im.load()


def test_series_share_one_era(demo_data):
    train = rawdata.load_train(demo_data)
    assert (train.groupby("art_series_id")["target"].nunique() == 1).all()
    sizes = train["art_series_id"].value_counts()
    assert (sizes > 1).any() and (sizes == 1).mean() > 0.5, "mostly singletons, some series"


def test_deterministic_from_its_seed(demo_data, tmp_path):
    again = generate_demo(tmp_path / "again", **DEMO_SIZE)
    files = sorted(p.relative_to(demo_data) for p in demo_data.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    differ = [str(f) for f in files if f.name != "provenance.json"
              and (demo_data / f).read_bytes() != (again / f).read_bytes()]
    assert not differ, f"two generations with the same seed differ: {differ[:5]}"
    other = generate_demo(tmp_path / "other", **DEMO_SIZE, seed=12)
    assert (other / "train.csv").read_bytes() != (demo_data / "train.csv").read_bytes()


def test_default_size_is_shaped_like_the_real_task(default_demo):
    train = rawdata.load_train(default_demo)
    shares = np.bincount(train["target"], minlength=4) / len(train)
    real = REAL_CLASS_COUNTS / REAL_CLASS_COUNTS.sum()
    assert np.abs(shares - real).max() < 0.05, f"class shares {shares.round(3)} vs real {real.round(3)}"
    assert list(np.argsort(shares)) == list(np.argsort(real)), "class order by size as in the real data"
    for year, era in ((1600, 0), (1700, 1)):     # catalogued "c. 1600" / "c. 1700", as in the real data
        years = train.loc[train["target"] == era, "sorting_date"].value_counts()
        assert years.get(year, 0) >= 3 * years.drop(year, errors="ignore").max(), f"no spike at {year}"
    named = pd.concat([pd.read_csv(default_demo / f, dtype=str)["object_id"]
                       for f in ("materials.csv", "techniques.csv")])
    without = set(train["object_id"]) - set(named)
    assert len(without) < 0.05 * len(train), "nearly every train object has names, as in the real data"


def test_make_says_when_it_uses_demo_data(make, tmp_path):
    """The default DATA without train.csv: Make says so and plans 00_demo_data.py into WORK (dry
    run: -n). A DATA given by hand without train.csv is an error, never demo data."""
    if (REPO / "data" / "raw" / "train.csv").exists():
        pytest.skip("the default DATA (data/raw) holds a train.csv in this checkout")
    env = {k: v for k, v in os.environ.items() if k not in MAKE_ENV_DROP}
    p = subprocess.run(["make", "-C", str(REPO), "--no-print-directory", "-n", "validate",
                        f"WORK={tmp_path / 'work'}"], capture_output=True, text=True, env=env, timeout=60)
    assert "No train.csv in DATA=data/raw: using generated demo data in " \
           f"{tmp_path / 'work'}/00_demo_data" in p.stdout, p.stdout + p.stderr
    assert f"00_demo_data.py --out {tmp_path / 'work'}/00_demo_data" in p.stdout
    assert not (tmp_path / "work").exists()
    # the demo's whole pipeline: the smoke profile in the cpu profile's shape (one four-head network per fold)
    p = subprocess.run(["make", "-C", str(REPO), "--no-print-directory", "-n", "all", f"WORK={tmp_path / 'work'}"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.stdout.count("04_finetune.py --task multi") == 4 and "--task target" not in p.stdout, p.stdout
    assert "--profile smoke" in p.stdout and "--seed 1" not in p.stdout
    # ... as two jobs of one torch thread each (make's database: -p), and only the demo's all
    database = lambda *args: subprocess.run(["make", "-C", str(REPO), "--no-print-directory", "-n", "-p", *args],
                                            capture_output=True, text=True, env=env, timeout=60).stdout
    demo_all = database("all", f"WORK={tmp_path / 'work'}")
    assert re.search(r"^MAKEFLAGS = .* -j2 -Otarget ", demo_all, re.M) and re.search(r"^TORCH_THREADS = 1$", demo_all, re.M)
    assert not re.search(r"^TORCH_THREADS = 1$", database("all", f"WORK={tmp_path / 'work'}", "TORCH_THREADS=2"), re.M)
    assert " -j2 " not in database("validate", f"WORK={tmp_path / 'work'}")
    (tmp_path / "empty").mkdir()
    p = make("-n", "validate", work=tmp_path / "work", data=tmp_path / "empty", check=False)
    assert p.returncode != 0 and "demo" not in p.stdout, p.stdout
    assert f"DATA={tmp_path / 'empty'} holds no train.csv" in p.stderr, p.stderr


def test_the_real_class_shares_are_the_ones_the_demo_follows(real_data):
    """The competition's train.csv, or a copy with some of its rows held back at random."""
    counts = np.bincount(pd.read_csv(real_data / "train.csv")["target"], minlength=4)
    assert np.abs(counts / counts.sum() - REAL_CLASS_COUNTS / REAL_CLASS_COUNTS.sum()).max() < 0.01, counts
