"""Kill -9 at a random point of every long stage (02, 03, 04, 05), run the same make target
again, and compare with an uninterrupted run (the session's smoke pipeline, conftest.smoke_run,
built with one torch thread per stage, as these runs are): bit-identical on this CPU. And a write that fails
half-way (a file-size limit standing in for a full disk) leaves a clear error, no stamp, and the
earlier stages' outputs intact."""
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, kill_make, run_make as make_with

import checkpointing

SMOKE = dict(PROFILE="smoke")
ONE_THREAD = {"TORCH_THREADS": "1"}    # as the reference was built


def run_make(*args, **kw):
    return make_with(*args, env=ONE_THREAD, **kw)


def copy_work(src, dst, stages):
    """A new WORK holding copies (mtimes kept) of the given finished stages (or runs: 04_finetune/
    multi_0) of `src`."""
    dst.mkdir(parents=True)
    for stage in stages:
        shutil.copytree(src / stage, dst / stage, copy_function=shutil.copy2)
    shutil.copy2(src / "profile.txt", dst / "profile.txt")
    return dst


def kill_when(target, work, data, ready, seed, timeout=300, **variables):
    """kill -9 `make target` a random 0-0.2 s after ready() holds (conftest.kill_make)."""
    return kill_make(target, work, data, ready, max_delay=0.2, seed=seed, timeout=timeout, env=ONE_THREAD,
                     **{**SMOKE, **variables})


def same_state(a, b):
    sa, sb = checkpointing.load_checkpoint(a), checkpointing.load_checkpoint(b)
    for key in ("model",):
        assert sa[key].keys() == sb[key].keys()
        for k in sa[key]:
            assert torch.equal(sa[key][k], sb[key][k]), (a, k)
    return True


@pytest.fixture(scope="module")
def reference(smoke_run):
    """Uninterrupted runs of everything the kill tests redo (read-only)."""
    return smoke_run[0]


def test_kill_hvr_then_resume(reference, demo_data, tmp_path):
    work = copy_work(reference, tmp_path / "work", ["00_validate"])
    (work / "00_validate" / "DONE").touch()
    rgb = work / "02_hvr" / ".rgb"
    alive = kill_when("hvr", work, demo_data, lambda: rgb.exists() and any(rgb.glob("*.rgb")), seed=2)
    if alive:
        assert not (work / "02_hvr" / "DONE").exists()      # never looks complete
    run_make("hvr", work=work, data=demo_data, **SMOKE)
    for f in ("images.npy", "ids.txt", "meta.json", "stats.csv"):
        assert (work / "02_hvr" / f).read_bytes() == (reference / "02_hvr" / f).read_bytes(), f


def test_hvr_redoes_a_photo_a_kill_left_unfinished(reference, demo_data, tmp_path):
    """A batch is trusted only once committed (its directory renamed from tmp.* to b.*) and only
    for photos whose sha256 is the one validation saw: a photo missing from the committed index,
    one recorded with other bytes' hash, and one only in a batch a kill interrupted are decoded
    again; the others are kept."""
    work = copy_work(reference, tmp_path / "work", ["00_validate"])
    (work / "00_validate" / "DONE").touch()
    rgb = work / "02_hvr" / ".rgb"
    batch, killed = rgb / "b.aaaaaa", rgb / "tmp.bbbbbb"
    for d in (batch, killed):
        (d / "native").mkdir(parents=True)
    meta = json.loads((reference / "02_hvr" / "meta.json").read_text())
    (rgb / "meta").write_text(f'{{"size": {meta["size"]}, "mode": "{meta["mode"]}"}}\n')   # as 02 writes it
    ids = (reference / "02_hvr" / "ids.txt").read_text().split()
    for oid, img in zip(ids, np.load(reference / "02_hvr" / "images.npy")):
        (batch / f"{oid}.rgb").write_bytes(img.tobytes())
    subprocess.run(["convert", *(str(demo_data / "photos" / f"{i}.jpg") for i in ids), "-colorspace", "sRGB",
                    "-set", "filename:id", "%t", str(batch / "native" / "%[filename:id].rgb")], check=True)
    stats = pd.read_csv(reference / "02_hvr" / "stats.csv", dtype={"object_id": str}).set_index("object_id")
    sha = pd.read_csv(work / "00_validate" / "photos.csv", dtype=str).set_index("object_id")["sha256"]
    lost, stale, unfinished = ids[0], ids[1], ids[2]
    line = {o: f"{o} {int(stats.at[o, 'width'])} {int(stats.at[o, 'height'])} {sha[o]}\n" for o in ids}
    line[stale] = line[stale].replace(sha[stale], "0" * 64)
    (batch / "index").write_text("".join(line[o] for o in ids if o not in (lost, unfinished)))
    for f in (f"{unfinished}.rgb", f"native/{unfinished}.rgb"):
        (killed / f).write_bytes((batch / f).read_bytes())
    (killed / "index").write_text(line[unfinished])
    p = run_make("hvr", work=work, data=demo_data, **SMOKE)
    assert f"{len(ids) - 3} already done, 3 to decode" in p.stdout
    for f in ("images.npy", "ids.txt", "stats.csv"):
        assert (work / "02_hvr" / f).read_bytes() == (reference / "02_hvr" / f).read_bytes(), f


def test_kill_jigsaw_then_resume_bit_identical(reference, demo_data, tmp_path):
    work = copy_work(reference, tmp_path / "work", ["00_validate", "02_hvr"])
    out = work / "03_jigsaw"
    alive = kill_when("jigsaw", work, demo_data, lambda: out.exists() and any(out.glob("ckpt_*.pt")), seed=3)
    assert alive and not (out / "DONE").exists(), "the kill must land mid-run for this test to mean anything"
    run_make("jigsaw", work=work, data=demo_data, **SMOKE)
    assert same_state(out / "ckpt_e002.pt", reference / "03_jigsaw" / "ckpt_e002.pt")
    assert list(pd.read_csv(out / "holdout.csv")["epoch"]) == [1, 2]
    log, ref = pd.read_csv(out / "loss.csv"), pd.read_csv(reference / "03_jigsaw" / "loss.csv")
    # the same log rows; a row right after the resume averages fewer steps, so values may differ
    assert log["step"].is_unique and list(log["step"]) == list(ref["step"])


def test_kill_fold_then_resume_bit_identical(reference, demo_data, tmp_path):
    work = copy_work(reference, tmp_path / "work", ["00_validate", "01_sgkfold", "02_hvr", "03_jigsaw"])
    run = work / "04_finetune" / "multi_1"
    alive = kill_when("fold", work, demo_data, lambda: run.exists() and any(run.glob("ckpt_*.pt")), seed=4,
                      FOLD="1", TASK="multi")
    assert alive and not (run / "DONE").exists()
    run_make("fold", work=work, data=demo_data, FOLD="1", TASK="multi", **SMOKE)
    assert same_state(run / "ckpt_e002.pt", reference / "04_finetune" / "multi_1" / "ckpt_e002.pt")
    ev = pd.read_csv(run / "eval.csv")
    assert list(ev["epoch"]) == [1, 2]                          # each epoch exactly once
    ref = pd.read_csv(reference / "04_finetune" / "multi_1" / "eval.csv")
    assert np.array_equal(ev["rmse"].to_numpy(), ref["rmse"].to_numpy())


def test_kill_features_then_resume_identical(reference, demo_data, tmp_path):
    work = copy_work(reference, tmp_path / "work",
                     ["00_validate", "01_sgkfold", "02_hvr", "03_jigsaw", "04_finetune/multi_0"])
    target = f"{work}/05_features/multi_0/DONE"
    out = work / "05_features" / "multi_0"
    kill_when(target, work, demo_data, lambda: out.exists(), seed=5)
    run_make(target, work=work, data=demo_data, **SMOKE)
    for split in ("train", "heldout", "test"):
        a = np.load(out / f"{split}.npz")
        b = np.load(reference / "05_features" / "multi_0" / f"{split}.npz")
        assert np.array_equal(a["object_id"], b["object_id"]) and np.array_equal(a["outputs"], b["outputs"])
        assert pd.read_parquet(out / f"{split}.parquet").equals(
            pd.read_parquet(reference / "05_features" / "multi_0" / f"{split}.parquet"))


def test_a_failed_write_leaves_no_stamp_and_upstream_intact(reference, demo_data, tmp_path):
    """A file-size limit (ulimit -f) makes the checkpoint write fail as a full disk would."""
    work = copy_work(reference, tmp_path / "work", ["00_validate", "02_hvr"])
    before = {p: p.read_bytes() for p in (work / "02_hvr").iterdir()}
    cmd = f"ulimit -f 2000; make -C {REPO} --no-print-directory jigsaw WORK={work} DATA={demo_data} PROFILE=smoke"
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "could not write the checkpoint" in p.stderr and "03_jigsaw" in p.stderr, p.stderr[-2000:]
    assert not (work / "03_jigsaw" / "DONE").exists()
    assert not list((work / "03_jigsaw").glob("ckpt_*.pt"))     # no half checkpoint under a final name
    assert before == {p: p.read_bytes() for p in (work / "02_hvr").iterdir()}


def test_provenance_names_the_revision_a_stage_started_with(monkeypatch, tmp_path):
    """A checkout during a long stage (a user pulling while 04 trains) changes the files, not the
    code the stage runs: its provenance.json keeps the revision it started with. The stage's DONE
    goes as it starts and comes back last."""
    import argparse
    import common
    common.started_revision.cache_clear()
    try:
        monkeypatch.setattr(common, "git_revision", lambda length=12: "aaaaaaaaaaaa")
        common.parse(argparse.ArgumentParser(), "05", [])                 # the stage starts
        (tmp_path / "DONE").write_text("")                                  # an earlier run's
        stage = common.Stage(tmp_path)
        assert not (tmp_path / "DONE").exists(), "a stage that starts is not done"
        monkeypatch.setattr(common, "git_revision", lambda length=12: "bbbbbbbbbbbb")   # git checkout
        stage.finish({"seeds": 2})
    finally:
        common.started_revision.cache_clear()       # other tests read this process's own revision
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance["git_revision"] == "aaaaaaaaaaaa" and provenance["config"] == {"seeds": 2}
    assert (tmp_path / "DONE").stat().st_mtime_ns >= (tmp_path / "provenance.json").stat().st_mtime_ns
