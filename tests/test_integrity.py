"""Nothing wrong gets into the store, nothing hangs, every failure names its true cause.

Each case breaks a copy of the demo data (or the machine around it) one way and runs the real
`make` with PROFILE=smoke and a fresh WORK. A failure must exit non-zero with an `error:` that
names the file, row or id and the cause, print no traceback, write no DONE; once the cause is
removed, the same command succeeds, and where it matters its outputs are byte-identical to a
clean run's.
"""
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import common
from conftest import REPO, kill_make, load_script, run_make, smoke_copy

SMOKE = dict(PROFILE="smoke")
STORE = ("images.npy", "stats.csv", "ids.txt", "meta.json")


def ids(data, split="train"):
    return list(pd.read_csv(data / f"{split}.csv", dtype=str)["object_id"])


def refused(p, *needles):
    out = f"--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"
    assert p.returncode != 0, f"accepted:\n{out}"
    assert "Traceback" not in p.stdout + p.stderr, f"a crash, not a clear error:\n{out}"
    assert "error" in p.stderr or "*** " in p.stderr, out      # ours, or Make's $(error)
    for needle in needles:
        assert str(needle) in p.stderr, f"{needle!r} not in the message:\n{out}"
    return out


def no_stamps(work, *stages):
    for stage in stages:
        assert not (work / stage / "DONE").exists(), f"{stage}/DONE written after a failure"


def same_store(work, reference):
    differ = [f for f in STORE if (work / "02_hvr" / f).read_bytes() != (reference / "02_hvr" / f).read_bytes()]
    assert not differ, f"02's outputs differ from a clean run's: {differ}"


def garble(photo):
    """Headers and EOI intact, the entropy-coded data overwritten (every 7th byte 0xFF)."""
    data = bytearray(photo.read_bytes())
    sos = data.index(b"\xff\xda")
    for i in range(sos + 200, len(data) - 400, 7):
        data[i] = 0xFF
    photo.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def clean_hvr(demo_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("clean_hvr") / "work"
    run_make("hvr", work=work, data=demo_data, **SMOKE)
    return work


# ---- the store holds only decodes of the bytes validation checked --------------------------
def test_corrupt_photo_never_enters_the_store(demo_copy, clean_hvr, tmp_path):
    work, oid = tmp_path / "work", ids(demo_copy)[3]
    photo = demo_copy / "photos" / f"{oid}.jpg"
    good = photo.read_bytes()
    garble(photo)
    for attempt in (1, 2):      # the second run used to trust the first one's garbage and pass
        p = run_make("hvr", work=work, data=demo_copy, check=False, **SMOKE)
        refused(p, f"{oid}.jpg", "corrupt pixel data")
        no_stamps(work, "02_hvr")
        assert not (work / "02_hvr" / "images.npy").exists()
    photo.write_bytes(good)
    run_make("hvr", work=work, data=demo_copy, **SMOKE)
    same_store(work, clean_hvr)


def test_resume_never_trusts_a_decode_of_other_bytes(demo_copy, tmp_path):
    """Killed after photos were decoded; one of them is replaced by its mirror image (same size,
    other bytes) and another by a photo of another size: the rerun decodes both again."""
    work = tmp_path / "work"
    run_make("validate", work=work, data=demo_copy, **SMOKE)
    rgb = work / "02_hvr" / ".rgb"
    alive = kill_make("hvr", work, demo_copy, lambda: rgb.is_dir() and any(rgb.glob("b.*/index")), **SMOKE)
    assert alive and not (work / "02_hvr" / "DONE").exists(), "the kill must land before the pack ends"
    assert any(rgb.glob("b.*/index")), "nothing was decoded before the kill"
    a, b, c = ids(demo_copy)[:3]
    photos = demo_copy / "photos"
    Image.open(photos / f"{a}.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / f"{a}.jpg", quality=90)
    shutil.copy(photos / f"{c}.jpg", photos / f"{b}.jpg")
    p = run_make("hvr", work=work, data=demo_copy, **SMOKE)
    assert "2 to decode" in p.stdout, p.stdout
    reference = tmp_path / "reference"
    run_make("hvr", work=reference, data=demo_copy, **SMOKE)
    same_store(work, reference)


# ---- demo data only for the default DATA -------------------------------------------------------
def test_explicit_data_without_train_csv_is_an_error(demo_copy, tmp_path):
    (demo_copy / "train.csv").rename(demo_copy / "Train.csv")
    work = tmp_path / "work"
    for goal in ("hvr", "validate", "all"):
        p = run_make(goal, work=work, data=demo_copy, check=False, **SMOKE)
        refused(p, f"DATA={demo_copy} holds no train.csv", "Train.csv")
        assert "demo" not in p.stdout
    assert not (work / "00_demo_data").exists()


# ---- what validation reads, and what it lets through -------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_photo_that_is_no_regular_file_is_refused_without_hanging(kind, demo_copy, tmp_path):
    oid = ids(demo_copy, "test")[2]
    photo = demo_copy / "photos" / f"{oid}.jpg"
    photo.unlink()
    if kind == "fifo":
        os.mkfifo(photo)
    else:
        photo.symlink_to("/dev/zero")
    p = run_make("validate", work=tmp_path / "work", data=demo_copy, check=False, timeout=60, **SMOKE)
    refused(p, f"{oid}.jpg", "not a regular file", "a FIFO" if kind == "fifo" else "a device")
    no_stamps(tmp_path / "work", "00_validate")


def test_bytes_after_the_end_marker_are_tolerated(demo_copy, tmp_path):
    oid = ids(demo_copy)[4]
    photo = demo_copy / "photos" / f"{oid}.jpg"
    photo.write_bytes(photo.read_bytes() + b"\x00trailing bytes of a careless export\xff\xd8" * 50)
    run_make("hvr", work=tmp_path / "work", data=demo_copy, **SMOKE)
    assert (tmp_path / "work" / "02_hvr" / "DONE").exists()


def declare_size(photo, width, height):
    """Rewrite the frame header's width and height: the header declares a huge photo."""
    data = bytearray(photo.read_bytes())
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    photo.write_bytes(bytes(data))


@pytest.mark.parametrize("side", [30000, 12000])
def test_huge_photo_is_refused_with_the_limit_and_the_way_out(side, demo_copy, tmp_path):
    oid = ids(demo_copy)[5]
    declare_size(demo_copy / "photos" / f"{oid}.jpg", side, side)
    p = run_make("hvr", work=tmp_path / "work", data=demo_copy, check=False, **SMOKE)
    refused(p, f"{oid}.jpg", f"{side} x {side}", "limit of 25000000 pixels", "MAX_PIXELS")
    no_stamps(tmp_path / "work", "00_validate", "02_hvr")


def test_a_photo_at_the_limit_decodes(demo_copy, tmp_path):
    """What validation accepts by default, ImageMagick's default policy decodes."""
    oid = ids(demo_copy)[6]
    Image.new("RGB", (5000, 5000), (120, 80, 40)).save(demo_copy / "photos" / f"{oid}.jpg", quality=50)
    run_make("hvr", work=tmp_path / "work", data=demo_copy, timeout=300, **SMOKE)
    stats = pd.read_csv(tmp_path / "work" / "02_hvr" / "stats.csv", dtype={"object_id": str}).set_index("object_id")
    assert (stats.at[oid, "width"], stats.at[oid, "height"]) == (5000, 5000)
    assert stats.at[oid, "file_bytes"] == (demo_copy / "photos" / f"{oid}.jpg").stat().st_size   # via photos.csv


def test_imagemagick_limits_too_small_are_named_not_blamed_on_the_photo(demo_copy, tmp_path):
    """A photo validation accepts but ImageMagick's resource limits do not (here limits lowered
    by its environment variables, as a stricter policy.xml would): 02 says so, not "corrupt"."""
    oid = ids(demo_copy)[7]
    Image.new("RGB", (4500, 4500), (10, 20, 30)).save(demo_copy / "photos" / f"{oid}.jpg", quality=50)
    tight = {f"MAGICK_{r}_LIMIT": "64MiB" for r in ("MEMORY", "MAP", "DISK")}
    p = run_make("hvr", work=tmp_path / "work", data=demo_copy, check=False, env=tight, **SMOKE)
    refused(p, f"{oid}.jpg", "resource limits", "identify -list resource")
    assert "corrupt" not in p.stderr
    no_stamps(tmp_path / "work", "02_hvr")


# ---- a full disk is said to be one -----------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk, leave=0):
    """Fill the disk, then give `leave` bytes back."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 16, 1 << 9):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)


def test_full_disk_is_named_not_blamed_on_the_photos(demo_copy, small_disk):
    work = small_disk / "work"
    run_make("validate", work=work, data=demo_copy, **SMOKE)
    (work / "profile.txt").write_text("smoke\n")         # as 02's rule writes them: the decode fills the disk
    (work / "02_hvr").mkdir()
    (work / "02_hvr" / "options.txt").write_text("--mode stretch\n")
    fill(small_disk)
    for goal, stage in (("folds", "01_sgkfold"), ("hvr", "02_hvr")):
        p = run_make(goal, work=work, data=demo_copy, check=False, **SMOKE)
        out = refused(p, "is full", str(work))
        assert "corrupt" not in p.stderr and "BrokenProcessPool" not in out, out
        no_stamps(work, stage)
    (small_disk / "filler").unlink()
    run_make("folds", work=work, data=demo_copy, **SMOKE)


def test_full_disk_while_packing_the_store(demo_copy, clean_hvr, small_disk):
    """The decode fits on the disk, the store does not: the pack says the disk is full (it used
    to end in BrokenProcessPool, a worker killed by SIGBUS writing to a sparse file)."""
    work = small_disk / "work"
    run_make("validate", work=work, data=demo_copy, **SMOKE)
    (work / "profile.txt").write_text("smoke\n")
    stats = pd.read_csv(clean_hvr / "02_hvr" / "stats.csv")
    page = lambda n: -(-int(n) // 4096) * 4096          # tmpfs allocates whole pages
    size = common.PROFILES["smoke"]["02"]["size"]
    decoded = sum(page(w * h * 3) + page(size * size * 3) for w, h in zip(stats["width"], stats["height"]))
    fill(small_disk, leave=decoded + 96 * 1024)          # index, ids, logs; not the 300 kB store
    p = run_make("hvr", work=work, data=demo_copy, check=False, **SMOKE)
    out = refused(p, "is full", str(work / "02_hvr"))
    assert f"decoded {len(stats)}/{len(stats)}" in p.stdout, f"the decode did not fit; resize the test:\n{out}"
    assert "BrokenProcessPool" not in out and "corrupt" not in p.stderr
    no_stamps(work, "02_hvr")
    assert not list((work / "02_hvr").glob(".*.tmp"))
    (small_disk / "filler").unlink()
    run_make("hvr", work=work, data=demo_copy, **SMOKE)
    same_store(work, clean_hvr)


# ---- no ImageMagick -------------------------------------------------------------------------
def test_no_imagemagick_is_said_not_blamed_on_the_photos(demo_copy, tmp_path):
    """PATH without convert: every other tool the pipeline runs is linked into one directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name in ("convert", "identify", "mogrify", "magick") or (bin_dir / name).exists():
                continue
            target = Path(d) / name
            if target.is_file() and os.access(target, os.X_OK):
                (bin_dir / name).symlink_to(target)
    work = tmp_path / "work"
    p = run_make("hvr", work=work, data=demo_copy, check=False, env={"PATH": str(bin_dir)}, **SMOKE)
    refused(p, "ImageMagick", "not on PATH")
    assert "corrupt" not in p.stderr
    no_stamps(work, "02_hvr")


# ---- one make per WORK; no leftovers ------------------------------------------------------
def test_a_second_make_on_the_same_work_is_refused_at_once(demo_copy, tmp_path):
    work = tmp_path / "work"
    run_make("validate", work=work, data=demo_copy, **SMOKE)
    cmd = ["make", "-C", str(REPO), "--no-print-directory", "hvr", f"WORK={work}", f"DATA={demo_copy}",
           "PROFILE=smoke"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (work / "02_hvr" / ".rgb").exists() and time.time() < deadline:
            time.sleep(0.01)
        started = time.time()
        second = run_make("hvr", work=work, data=demo_copy, check=False, **SMOKE)
        refused(second, "another make is running", str(work))
        assert time.time() - started < 10
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    run_make("hvr", work=work, data=demo_copy, **SMOKE)          # the lock went with the first make


def test_a_store_a_kill_left_half_written_is_removed(demo_copy, tmp_path):
    work = tmp_path / "work"
    run_make("validate", work=work, data=demo_copy, **SMOKE)
    (work / "02_hvr").mkdir()
    left = work / "02_hvr" / ".images.npy.x1y2z3.tmp"
    left.write_bytes(b"\0" * 4096)
    run_make("hvr", work=work, data=demo_copy, **SMOKE)
    assert not left.exists() and not list((work / "02_hvr").glob(".*.tmp"))


# ---- where WORK and DATA may be ------------------------------------------------------------
def test_work_inside_data_is_refused(demo_copy):
    before = sorted(p.name for p in demo_copy.iterdir())
    p = run_make("validate", work=demo_copy / "work", data=demo_copy, check=False, **SMOKE)
    refused(p, "inside DATA", "read-only")
    assert sorted(p.name for p in demo_copy.iterdir()) == before


@pytest.mark.parametrize("name", ["raw (copy)", "raw(2)", "raw;x"])
def test_data_path_with_shell_characters_is_refused_clearly(name, demo_data, tmp_path):
    data = tmp_path / name
    shutil.copytree(demo_data, data)
    p = run_make("validate", work=tmp_path / "work", data=data, check=False, **SMOKE)
    refused(p, "DATA")
    assert "syntax error" not in p.stderr and not (tmp_path / "work" / "00_validate" / "DONE").exists()


# ---- tables and folders ---------------------------------------------------------------
def test_duplicate_column_names_are_refused(demo_copy, tmp_path):
    lines = (demo_copy / "train.csv").read_text().splitlines()
    flip = {"0": "1", "1": "2", "2": "3", "3": "0"}
    col = lines[0].split(",").index("target")
    lines = [lines[0] + ",target"] + [line + "," + flip[line.split(",")[col]] for line in lines[1:]]
    (demo_copy / "train.csv").write_text("\n".join(lines) + "\n")
    p = run_make("validate", work=tmp_path / "work", data=demo_copy, check=False, **SMOKE)
    refused(p, str(demo_copy / "train.csv"), "duplicate column", "target")
    no_stamps(tmp_path / "work", "00_validate")


@pytest.mark.parametrize("keep", [1, 0])
def test_a_class_too_small_for_the_folds_is_refused(keep, demo_copy, tmp_path):
    train = pd.read_csv(demo_copy / "train.csv", dtype=str)
    drop = train[train["target"] == "3"].iloc[keep:]
    train = train.drop(drop.index)
    train.to_csv(demo_copy / "train.csv", index=False, lineterminator="\n")
    for f in ("materials.csv", "techniques.csv"):
        names = pd.read_csv(demo_copy / f, dtype=str)
        names[~names["object_id"].isin(drop["object_id"])].to_csv(demo_copy / f, index=False, lineterminator="\n")
    p = run_make("folds", work=tmp_path / "work", data=demo_copy, check=False, **SMOKE)
    refused(p, str(demo_copy / "train.csv"), f"target 3 has {keep} row(s)", "at least 3 rows of every target")
    assert "Warning" not in p.stderr
    no_stamps(tmp_path / "work", "01_sgkfold")


def test_uneven_fold_message_names_the_class_and_the_cause(demo_data):
    sgkfold = load_script("01_sgkfold.py")
    train = pd.DataFrame({"object_id": [f"{i:020x}" for i in range(12)],
                          "art_series_id": ["big"] * 6 + [f"s{i}" for i in range(6)],
                          "target": [3] * 6 + [0, 1, 2, 0, 1, 2]})
    tr, te = list(range(6, 12)), list(range(6))
    with pytest.raises(RuntimeError) as e:
        sgkfold.check_folds(train, [(tr, te, te)], 1)
    msg = str(e.value)
    assert "target 3" in msg and "'big'" in msg and "series" in msg, msg


def test_an_unreferenced_dangling_link_among_the_photos_is_ignored(demo_copy, tmp_path):
    (demo_copy / "photos" / ("f" * 20 + ".jpg")).symlink_to(tmp_path / "gone.jpg")
    run_make("validate", work=tmp_path / "work", data=demo_copy, **SMOKE)
    (demo_copy / "photos" / f"{ids(demo_copy)[0]}.jpg").unlink()
    (demo_copy / "photos" / f"{ids(demo_copy)[0]}.jpg").symlink_to(tmp_path / "gone.jpg")
    p = run_make("validate", work=tmp_path / "work", data=demo_copy, check=False, **SMOKE)
    refused(p, f"{ids(demo_copy)[0]}.jpg: missing photo")


def test_photos_that_is_a_file_is_said_to_be_no_directory(demo_copy, tmp_path):
    shutil.rmtree(demo_copy / "photos")
    (demo_copy / "photos").write_text("not a folder\n")
    p = run_make("validate", work=tmp_path / "work", data=demo_copy, check=False, **SMOKE)
    refused(p, str(demo_copy / "photos"), "not a directory")
    assert "missing photo" not in p.stderr and len(p.stderr.strip().splitlines()) <= 3, p.stderr


# ---- what a stage reads from upstream belongs to it ------------------------------------------------
# Each case damages one upstream file of a copy of the session's smoke WORK (a file replaced, never
# written into: the copy shares the original's bytes) and runs the make command a user would; the
# stage that reads it stops with one line naming the file, whom it belongs to or what is wrong with
# it, and the way out, and writes no stamp.
def swap(a, b):
    tmp = a.with_name(".swapping")
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


def rewritten(path, data):
    """Replace a file of the linked copy by a new one holding `data` (bytes)."""
    path.unlink()
    path.write_bytes(data)


def test_a_network_swapped_between_runs_is_named_then_put_back(smoke_run, demo_data, tmp_path):
    work = smoke_copy(smoke_run, tmp_path / "work")
    ft = work / "04_finetune"
    mine, theirs = ft / "multi_0" / "ckpt_e002.pt", ft / "multi_1" / "ckpt_e002.pt"
    swap(mine, theirs)
    for run in ("multi_0", "multi_1"):
        (work / "05_features" / run / "DONE").unlink()
    p = run_make("features", work=work, data=demo_data, check=False, **SMOKE)
    refused(p, f"{mine} is the network of run multi_1 with fold '1', and 05 reads it for run multi_0 "
               f"with fold '0'", "put it back in multi_1's folder")
    no_stamps(work, "05_features/multi_0", "05_features/multi_1")
    swap(mine, theirs)                       # the way out the message gives
    run_make("features", work=work, data=demo_data, **SMOKE)
    assert common.is_done(work / "05_features" / "multi_0") and common.is_done(work / "05_features" / "multi_1")


@pytest.mark.parametrize("reader", ["resume", "evaluator", "init"])
def test_a_network_of_another_run_or_setup_stops_the_fine_tune(reader, smoke_run, demo_data, tmp_path):
    """resume: the newest checkpoint is another run's (it is not removed as a stale setup would
    be); evaluator: an epoch left to score is another run's; init: 03's network is no pretext
    network (a fine-tuned one in its place)."""
    work = smoke_copy(smoke_run, tmp_path / "work")
    ft, jig = work / "04_finetune", work / "03_jigsaw"
    run = ft / "multi_0"
    (run / "DONE").unlink()
    if reader == "resume":
        path, needles = run / "ckpt_e002.pt", ["is the network of run multi_1 with fold '1'",
                                               "04 (continuing the run) reads it for run multi_0"]
        swap(path, ft / "multi_1" / "ckpt_e002.pt")
    elif reader == "evaluator":
        path, needles = run / "ckpt_e001.pt", ["is the network of run multi_1 with fold '1'",
                                               "04's evaluator reads it for run multi_0"]
        swap(path, ft / "multi_1" / "ckpt_e001.pt")
        rows = (run / "eval.csv").read_text().splitlines()
        rewritten(run / "eval.csv", ("\n".join(r for r in rows if not r.startswith("1,")) + "\n").encode())
    else:
        path, needles = jig / "ckpt_e002.pt", ["is the network of run multi_0", "04 --init jigsaw reads it for 03_jigsaw",
                                               f"rm {jig / 'DONE'}"]
        rewritten(path, (run / "ckpt_e002.pt").read_bytes())
    kept = path.read_bytes()
    p = run_make("fold", work=work, data=demo_data, check=False, FOLD="0", TASK="multi", **SMOKE)
    out = refused(p)
    error = [line for line in p.stdout.splitlines() if line.startswith("error: ")]     # 04's log, shown
    assert len(error) == 1 and all(n in error[0] for n in [f"error: {path} ", *needles]), out
    assert path.read_bytes() == kept, "the other run's network was removed or changed"
    no_stamps(work, "04_finetune/multi_0")


def damage_store(store, how):
    path = store / "images.npy"
    data = bytearray(path.read_bytes())
    if how == "cut":
        data = data[: len(data) * 2 // 3]
    else:                                     # the same size, the first photo's pixels changed
        header = len(data) - int(np.prod(np.load(path, mmap_mode="r").shape))
        data[header:header + 300] = bytes(b ^ 0xFF for b in data[header:header + 300])
    rewritten(path, bytes(data))


@pytest.mark.parametrize("how", ["cut", "overwritten"])
def test_a_damaged_store_is_named_with_the_way_out(how, smoke_run, demo_data, tmp_path):
    work = smoke_copy(smoke_run, tmp_path / "work")
    store = work / "02_hvr"
    oid = (store / "ids.txt").read_text().split()[0]
    damage_store(store, how)
    (work / "05_features" / "multi_0" / "DONE").unlink()
    cause = "bytes, and 02 wrote" if how == "cut" else "its pixels are not those 02 wrote"
    for goal in (("views", f"ID={oid}"), ("features",)):
        p = run_make(*goal, work=work, data=demo_data, check=False, **SMOKE)
        refused(p, f"{store / 'images.npy'}: the image store is damaged", cause, f"rm {store / 'DONE'}, then the same command")
        assert not (store / f"views_{oid}.png").exists()
        no_stamps(work, "05_features/multi_0")
    (store / "DONE").unlink()                 # the way out the message gives
    run_make("views", f"ID={oid}", work=work, data=demo_data, **SMOKE)
    assert (store / f"views_{oid}.png").exists()


@pytest.mark.parametrize("table, goal, reader", [("06_stack/test.csv", "submit", "07_submit"),
                                                 ("05_features/multi_0/heldout.parquet", "stack", "06_stack"),
                                                 ("01_sgkfold/fold_1_test.csv", "stack", "06_stack")])
def test_a_repeated_id_in_an_upstream_table_is_named(table, goal, reader, smoke_run, demo_data, tmp_path):
    work = smoke_copy(smoke_run, tmp_path / "work")
    path = work / table
    read = pd.read_parquet if path.suffix == ".parquet" else lambda f: pd.read_csv(f, dtype={"object_id": str})
    frame = read(path)
    twice = pd.concat([frame, frame.iloc[[3]]], ignore_index=True)
    path.unlink()
    if path.suffix == ".parquet":
        twice.to_parquet(path, index=False)
    else:
        twice.to_csv(path, index=False)
    (work / reader / "DONE").unlink()
    p = run_make(goal, work=work, data=demo_data, check=False, **SMOKE)
    refused(p, f"{path}: object_id repeated: {frame['object_id'].iloc[3]!r}", f"rm {path.parent / 'DONE'}")
    no_stamps(work, reader)
