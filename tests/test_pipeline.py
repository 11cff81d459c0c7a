"""Stages 02-07 through the real Makefile, small: exact views (ImageMagick is the oracle), the
whole pipeline in PROFILE=smoke to a valid submission, nothing redone on a second run, the GPU
slots, the evaluator's patience with half-written checkpoints, and torchrun (gloo, 2 ranks)."""
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REPO, Lines, build_store

import checkpointing
import common
import models
import pixels
import tasks

PY = str(REPO / ".venv" / "bin" / "python")
TASK_NETS = " ".join(tasks.TASKS)      # NETS: the four tasks' networks per fold (smoke's default: multi)
OPS = {"id": [], "h": ["-flop"], "v": ["-flip"], "hv": ["-flop", "-flip"], "r": ["-rotate", "90"],
       "hr": ["-flop", "-rotate", "90"], "vr": ["-flip", "-rotate", "90"],
       "hvr": ["-flop", "-flip", "-rotate", "90"]}


def padded(photo):
    """The photo as decoded, centred (rounded down) on a square of its long side, the rest its
    edge pixels repeated (numpy's edge pad): the pad mode's square, made without ImageMagick's
    distortion. As raw RGB, with its side."""
    h, w = map(int, subprocess.run(["identify", "-format", "%h %w", str(photo)], check=True,
                                   capture_output=True, text=True).stdout.split())
    rgb = np.frombuffer(subprocess.run(["convert", str(photo), "-colorspace", "sRGB", "-depth", "8", "rgb:-"],
                                       check=True, capture_output=True).stdout, np.uint8).reshape(h, w, 3)
    m = max(h, w)
    square = np.pad(rgb, (((m - h) // 2, m - h - (m - h) // 2), ((m - w) // 2, m - w - (m - w) // 2), (0, 0)), mode="edge")
    return square.tobytes(), m


def oracle(photo, size, mode, op):
    """What ImageMagick itself makes of the photo (pad: of padded()): resize, then the view's ops."""
    source, stdin = [str(photo)], None
    if mode == "pad":
        stdin, m = padded(photo)
        source = ["-size", f"{m}x{m}", "-depth", "8", "rgb:-"]
    cmd = ["convert", *source, "-resize", f"{size}x{size}!", *OPS[op], "-depth", "8", "rgb:-"]
    return np.frombuffer(subprocess.run(cmd, check=True, capture_output=True, input=stdin).stdout,
                         np.uint8).reshape(size, size, 3)


def check_views(photos, ids, tmp_path, size, mode):
    store = build_store(photos, ids, tmp_path / f"store_{mode}_{size}", size, mode)
    for oid in ids:         # in this process (a torch import less per photo); make views runs the CLI
        pixels.views_png(store, oid)
        strip = np.asarray(Image.open(store / f"views_{oid}.png"))
        assert strip.shape == (size, 8 * size, 3)
        for k, op in enumerate(pixels.VIEWS):
            expect = oracle(photos / f"{oid}.jpg", size, mode, op)
            assert np.array_equal(strip[:, k * size:(k + 1) * size], expect), (oid, op, mode)


@pytest.mark.parametrize("mode", ["stretch", "pad"])
def test_views_equal_imagemagick_on_demo_photos(demo_data, tmp_path, mode):
    ids = pd.read_csv(demo_data / "test.csv")["object_id"][:4].tolist()
    check_views(demo_data / "photos", ids, tmp_path, 37, mode)     # 37: odd, not a multiple of 3


@pytest.mark.parametrize("mode", ["stretch", "pad"])
def test_views_equal_imagemagick_on_real_photos(real_data, tmp_path, mode):
    train = pd.read_csv(real_data / "train.csv")
    photos = [i for i in train["object_id"][:40]]
    sizes = {i: Image.open(real_data / "photos" / f"{i}.jpg").size for i in photos}
    ids = [min(photos, key=lambda i: sizes[i][0] / sizes[i][1]),      # the tallest and the widest
           max(photos, key=lambda i: sizes[i][0] / sizes[i][1])]
    check_views(real_data / "photos", ids, tmp_path, 64, mode)


def test_make_views_writes_the_strip(make, demo_data, tmp_path):
    work = tmp_path / "work"
    oid = pd.read_csv(demo_data / "train.csv")["object_id"][0]
    make("views", work=work, data=demo_data, PROFILE="smoke", ID=oid)
    size = common.PROFILES["smoke"]["02"]["size"]
    assert Image.open(work / "02_hvr" / f"views_{oid}.png").size == (8 * size, size)
    bad = make("views", work=work, data=demo_data, PROFILE="smoke", ID="../etc/passwd", check=False)
    assert bad.returncode != 0 and "not an object_id" in bad.stderr


def test_corrupt_pixel_data_fails_02_naming_the_photo(make, demo_copy, tmp_path):
    """Headers and end markers intact (validation passes), the entropy-coded data garbled."""
    oid = pd.read_csv(demo_copy / "train.csv")["object_id"][3]
    photo = demo_copy / "photos" / f"{oid}.jpg"
    data = bytearray(photo.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200] = bytes((b ^ 0x5A) if i % 7 else 0xFF for i, b in enumerate(data[middle:middle + 200]))
    photo.write_bytes(bytes(data))
    work = tmp_path / "work"
    make("validate", work=work, data=demo_copy, PROFILE="smoke")
    p = make("hvr", work=work, data=demo_copy, PROFILE="smoke", check=False)
    assert p.returncode != 0 and f"{oid}.jpg" in p.stdout + p.stderr and "could not decode" in p.stderr
    assert not (work / "02_hvr" / "DONE").exists() and not (work / "02_hvr" / "images.npy").exists()


def test_jigsaw_tiles_are_a_permutation():
    x = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).view(2, 3, 10, 10)
    g = torch.Generator().manual_seed(0)
    perms = pixels.random_perms(2, g)
    out = pixels.shuffle_tiles(x, perms)
    t = 10 // 3
    for b in range(2):
        for pos in range(9):
            tile = perms[b, pos].item()
            src = x[b, :, (tile // 3) * t:(tile // 3 + 1) * t, (tile % 3) * t:(tile % 3 + 1) * t]
            dst = out[b, :, (pos // 3) * t:(pos // 3 + 1) * t, (pos % 3) * t:(pos % 3 + 1) * t]
            assert torch.equal(src, dst)
        assert torch.equal(out[b, :, 9:, :], x[b, :, 9:, :])   # the leftover row stays put
        assert torch.equal(out[b, :, :, 9:], x[b, :, :, 9:])
    ident = torch.arange(9)
    assert not (pixels.random_perms(5000, g) == ident).all(1).any()
    sched = pixels.random_perms(16, g, identity_every=8)
    assert (sched[::8] == ident).all() and not (sched[1:8] == ident).all(1).any()


@pytest.mark.parametrize("size", [48, 49, 10])
def test_packed_pixel_path_equals_the_float_composition(size):
    """to_input moves packed pixels (to_pixels) and normalises once at the end; the plain order
    (uint8 -> float, normalise, then view, then shuffle the float tiles) must give the same
    batch, to float rounding, in both memory formats."""
    g = torch.Generator().manual_seed(size)
    u8 = torch.randint(0, 256, (16, size, size, 3), dtype=torch.uint8, generator=g)
    views, perms = torch.arange(16) % 8, pixels.random_perms(16, g)
    idx = pixels.view_index(size)
    mean, std = torch.tensor(pixels.MEAN).view(1, 3, 1, 1), torch.tensor(pixels.STD).view(1, 3, 1, 1)
    plain = pixels.apply_views((u8.permute(0, 3, 1, 2).float() / 255 - mean) / std, views, idx)
    px = pixels.to_pixels(u8.numpy(), "cpu")
    assert px.shape == (16, size * size) and px.dtype == torch.int32
    for channels_last in (False, True):
        fast = pixels.to_input(px, views, idx, channels_last=channels_last)
        torch.testing.assert_close(fast, plain, rtol=0, atol=2e-6)
        jig = pixels.to_input(px, views, idx, channels_last=channels_last, perms=perms)
        torch.testing.assert_close(jig, pixels.shuffle_tiles(plain, perms), rtol=0, atol=2e-6)
        assert jig.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert not torch.equal(pixels.to_input(px, views, idx, perms=perms), plain)   # the tiles did move


# -----------------------------------------------------------------------------
def test_all_ends_with_a_valid_submission_and_report(smoke_run, demo_data):
    work, p = smoke_run
    for stage in ("00_validate", "01_sgkfold", "02_hvr", "03_jigsaw", "06_stack", "07_submit"):
        assert (work / stage / "DONE").exists(), stage
    for f in common.FOLDS:                                  # smoke: one four-head network per fold
        run = work / "04_finetune" / common.run_name("multi", f)
        assert (run / "DONE").exists() and (work / "05_features" / common.run_name("multi", f) / "DONE").exists()
        ev = pd.read_csv(run / "eval.csv")
        assert list(ev["epoch"]) == [1, 2]                  # each epoch evaluated exactly once
        assert set(ev["split"]) == {"train" if f == "all" else "heldout"}
    test = pd.read_csv(demo_data / "test.csv")
    sub = pd.read_csv(work / "07_submit" / "submission.csv")
    assert list(sub.columns) == ["target"] and len(sub) == len(test)
    assert np.isfinite(sub["target"]).all() and sub["target"].between(0, 3).all()
    stacked = pd.read_csv(work / "06_stack" / "test.csv", dtype={"object_id": str}).set_index("object_id")
    assert np.allclose(sub["target"], stacked.loc[test["object_id"], "final"], atol=1e-5)   # test.csv order
    cv = pd.read_csv(work / "06_stack" / "cv.csv", dtype={"fold": str})
    assert list(cv["fold"]) == ["0", "1", "2", "overall"]
    for col in ("const_mean", "meta_only", "target_model", "stack_seed", "stack_oof", "stack_seed_meta",
                "stack_oof_meta", "blend", "blend_steps", "final", "final_recipe_post"):
        assert cv[col].between(0, 3).all(), col
    report = (work / "07_submit" / "report.md").read_text()
    for picture in ("jigsaw_loss.png", "cv_multi.png", "importance.png", "confusion.png"):
        assert f"]({picture})" in report and (work / "07_submit" / picture).exists()
    feats = pd.read_parquet(work / "05_features" / "multi_0" / "heldout.parquet")
    assert feats.shape[1] == 1 + 26 * 4 and feats["object_id"].is_unique
    raw = np.load(work / "05_features" / "multi_all" / "test.npz", allow_pickle=False)
    assert raw["outputs"].shape == (len(test), 8, 26)


def test_second_make_all_does_nothing(smoke_run, make, demo_data):
    work, _ = smoke_run
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("DONE")}
    p = make("all", work=work, data=demo_data, PROFILE="smoke")
    assert not any(s in p.stdout for s in ("03_jigsaw.py", "04_finetune.py", "05_features.py", "06_stack.py"))
    assert stamps == {p: p.stat().st_mtime_ns for p in work.rglob("DONE")}
    again = make("fold", work=work, data=demo_data, PROFILE="smoke", FOLD="2", TASK="multi")
    assert "04_finetune.py" not in again.stdout


def test_status_reads_every_run(smoke_run, make, demo_data):
    work, _ = smoke_run
    out = make("status", work=work, data=demo_data).stdout
    lines = [l for l in out.splitlines()[1:] if l.strip() and not l.startswith("CV ")]
    assert len(lines) == 1 + 4 and all(l.rstrip().endswith("done") for l in lines)
    cv = [l for l in out.splitlines() if l.startswith("CV ")]
    assert [l.split()[1] for l in cv] == ["multi/target", "multi/onehot", "multi/sortingdate"]   # word2vec: no era
    ev = [pd.read_csv(work / "04_finetune" / f"multi_{k}" / "eval.csv").iloc[-1] for k in "012"]
    pooled = np.sqrt(sum(e["n"] * e["rmse"] ** 2 for e in ev) / sum(e["n"] for e in ev))
    assert f"held-out RMSE {pooled:.4f}" in cv[0]


def test_a_work_of_another_profile_is_refused(smoke_run, make, demo_data):
    work, _ = smoke_run
    p = make("all", work=work, data=demo_data, PROFILE="cpu", check=False)
    assert p.returncode != 0 and "PROFILE=smoke" in p.stderr


# -----------------------------------------------------------------------------
def test_gpu_slots_never_share_a_gpu_and_use_them_all(tmp_path):
    """6 runs on 3 fake GPUs, up to 3 at once (as make -j3 does): no GPU ever holds two.
    Each run lasts 3 s, longer than a busy machine takes to start the next, so all 3 are used."""
    log = tmp_path / "log"
    job = f"echo $CUDA_VISIBLE_DEVICES start $(date +%s.%N) >> {log}; sleep 3; " \
          f"echo $CUDA_VISIBLE_DEVICES end $(date +%s.%N) >> {log}"
    cmd = [PY, str(REPO / "devices.py"), "on-gpu", "--gpus", "3,5,7", "--locks", str(tmp_path / "locks"),
           "--", "sh", "-c", job]
    procs = []
    for _ in range(6):
        while sum(p.poll() is None for p in procs) >= 3:
            time.sleep(0.02)
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    assert all(p.wait(timeout=60) == 0 for p in procs)
    events = [l.split() for l in log.read_text().splitlines()]
    assert {g for g, *_ in events} == {"3", "5", "7"}
    for gpu in "357":
        spans = [float(t) for g, _, t in events if g == gpu]
        kinds = [k for g, k, _ in events if g == gpu]
        assert kinds == ["start", "end"] * (len(kinds) // 2)     # strictly one at a time
        assert spans == sorted(spans)


def test_make_fans_finetunes_out_one_per_gpu(make, demo_data, tmp_path):
    """One make level: under -j4 every fine-tune and feature run starts exactly once (a recursive
    make once started each up to 3 times); GPUS pins each to a free GPU."""
    p = make("-n", "-j4", "all", work=tmp_path, data=demo_data, PROFILE="smoke", NETS=TASK_NETS, check=False)
    for script in ("04_finetune.py", "05_features.py"):
        starts = re.findall(script + r" --task (\w+) --fold (\w+)", p.stdout)
        assert sorted(starts) == sorted((t, f) for t in tasks.TASKS for f in common.FOLDS), script
    p = make("-n", "finetune", work=tmp_path, data=demo_data, GPUS="0,1,2,3", PROFILE="full", check=False)
    assert p.stdout.count("on-gpu --gpus 0,1,2,3") == 16                                     # full: 4 tasks x 4 folds
    assert "devices.py check --gpus 0,1,2,3" in p.stdout                                    # before any stage
    p = make("-n", "finetune", work=tmp_path, data=demo_data, PROFILE="smoke", check=False)
    assert p.stdout.count("CUDA_VISIBLE_DEVICES= .venv/bin/python 04_finetune.py --task multi") == 4   # GPUS empty: CPU
    p = make("-n", "finetune", work=tmp_path, data=demo_data, PROFILE="cpu", check=False)   # SEEDS=1
    assert p.stdout.count("04_finetune.py --task multi") == 4 and "--task target" not in p.stdout
    assert "--seed 1" not in p.stdout
    p = make("-n", "finetune", work=tmp_path, data=demo_data, PROFILE="cpu", SEEDS=2, check=False)
    assert p.stdout.count("04_finetune.py --task multi") == 8 and p.stdout.count("--seed 1") == 4 and "--seed 2" not in p.stdout
    p = make("-n", "-j4", "all", work=tmp_path, data=demo_data, PROFILE="smoke", NETS=TASK_NETS, SEEDS=3, check=False)
    runs = re.findall(r"04_finetune.py --task (\w+) --fold (\w+) \\\n.*\n  --profile smoke (?:--seed (\d))?", p.stdout)
    assert sorted(runs) == sorted((t, f, s) for t in tasks.TASKS for f in common.FOLDS for s in ("", "1", "2"))
    assert len(re.findall(r"05_features.py --task \w+ --fold \w+ \\\n.*\n  --seeds 3\n", p.stdout)) == 16
    p = make("-n", "jigsaw", work=tmp_path, data=demo_data, GPUS="0,1", PROFILE="smoke", check=False)
    assert "torchrun --standalone --nproc_per_node=2" in p.stdout


# -----------------------------------------------------------------------------
def test_evaluator_waits_for_complete_checkpoints(smoke_run, tmp_path):
    """A checkpoint being written (a temp name, or a final name with half the bytes) is never
    evaluated; once complete, it is, exactly once."""
    work, _ = smoke_run
    src = work / "04_finetune" / "multi_0"
    runs = tmp_path / "runs"
    run = runs / "multi_0"
    run.mkdir(parents=True)
    cmd = [PY, "04_finetune.py", "--task", "multi", "--fold", "0", "--folds", str(work / "01_sgkfold"),
           "--hvr", str(work / "02_hvr"), "--jigsaw", str(work / "03_jigsaw"), "--out", str(runs),
           "--profile", "smoke", "--role", "evaluate", "--epochs", "2"]
    evaluator = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        data = (src / "ckpt_e001.pt").read_bytes()
        (run / ".ckpt_e001.pt.abc.tmp").write_bytes(data[: len(data) // 2])    # a stalled atomic writer
        (run / "ckpt_e002.pt").write_bytes(data[: len(data) // 3])             # a careless one
        said = Lines(evaluator.stdout)
        said.wait_for("waiting for ckpt_e001.pt")
        assert evaluator.poll() is None and not (run / "eval.csv").exists()
        os.replace(run / ".ckpt_e001.pt.abc.tmp", run / "ckpt_e001.pt")
        (run / "ckpt_e001.pt").write_bytes(data)
        said.wait_for("ckpt_e002.pt is not readable yet")     # epoch 1 scored, the half-written e002 skipped
        assert list(pd.read_csv(run / "eval.csv")["epoch"]) == [1]
        shutil.copyfile(src / "ckpt_e002.pt", run / ".tmp_e002")
        os.replace(run / ".tmp_e002", run / "ckpt_e002.pt")
        assert evaluator.wait(timeout=60) == 0
    finally:
        evaluator.kill()
    ev = pd.read_csv(run / "eval.csv")
    assert list(ev["epoch"]) == [1, 2]
    assert np.allclose(ev["rmse"], pd.read_csv(src / "eval.csv")["rmse"], atol=1e-5)


# -----------------------------------------------------------------------------
def torchrun(nproc, *args):
    return subprocess.run([str(REPO / ".venv" / "bin" / "torchrun"), "--standalone", f"--nproc_per_node={nproc}",
                           *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TORCH_THREADS="1"))


def weights(path):
    return checkpointing.load_checkpoint(path)["model"]


def relative_gap(a, b):
    num = sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a if a[k].is_floating_point())
    den = sum((a[k].float() ** 2).sum() for k in a if a[k].is_floating_point())
    return float((num / den).sqrt())


def test_torchrun_two_ranks_matches_one_process(smoke_run, tmp_path):
    """DDP on 2 CPU ranks (gloo), as make runs 03 with RANKS=2: completes, only rank 0 writes,
    and trains like one process. (04 runs one process per network: no DDP there.)

    It cannot be bit-identical: each rank's BatchNorm normalises with its own half batch, and
    Adam's first steps are close to sign(gradient), so small gradient differences become whole
    steps. Measured (jigsaw, smoke, 1 epoch of 8 steps): relative L2 gap between the 1- and 2-rank
    weights 0.156 with BatchNorm's running statistics, 0.063 without; the training itself moved
    them 0.279 and 0.048 from the init. The bound below (the gap within twice the distance
    travelled) says it is the same training, not that it is the same numbers.
    The gradient averaging itself is exact: each rank's summed loss is scaled by world / global
    batch size (training.fit), so without BatchNorm the two would agree to rounding.
    """
    work, _ = smoke_run
    cmd = ["03_jigsaw.py", "--hvr", work / "02_hvr", "--profile", "smoke", "--epochs", "1"]
    one, two = tmp_path / "jigsaw_1", tmp_path / "jigsaw_2"
    for nproc, out in ((1, one), (2, two)):
        p = torchrun(nproc, *cmd, "--out", out)
        assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(f.name for f in one.iterdir()) == sorted(f.name for f in two.iterdir())
    log1, log2 = pd.read_csv(one / "loss.csv"), pd.read_csv(two / "loss.csv")
    assert log2["step"].is_unique and list(log1["step"]) == list(log2["step"])   # one writer
    w1, w2 = weights(one / "ckpt_e001.pt"), weights(two / "ckpt_e001.pt")
    common.seed_everything(0)
    init = models.build_model("resnet18", 81, width=common.PROFILES["smoke"]["03"]["width"]).state_dict()
    body = [k for k in w1 if not k.startswith("fc.")]
    travelled = relative_gap({k: init[k] for k in body}, {k: w1[k] for k in body})
    gap = relative_gap({k: w1[k] for k in body}, {k: w2[k] for k in body})
    assert 0 < gap < 2 * travelled, (gap, travelled)


def test_torch_compile_runs_and_reports_its_compile_time(make, demo_data, tmp_path):
    """--compile (the GPU fast path's option) works on this CPU too, and says how long the first
    step, which compiles the kernels, took."""
    work = tmp_path / "work"
    p = make("jigsaw", work=work, data=demo_data, PROFILE="smoke", JIGSAW_ARGS="--compile --epochs 1", timeout=600)
    took = re.search(r"torch.compile: the first step, which compiles the kernels, took ([0-9.]+)s", p.stdout)
    assert took and float(took.group(1)) > 0, p.stdout[-2000:]
    assert (work / "03_jigsaw" / "DONE").exists()


@pytest.mark.parametrize("arch", models.ARCHS)
def test_every_arch_takes_the_pretext_backbone(arch):
    """--arch resnet34 | resnet18: random init, the jigsaw body carries over, the head is the
    task's own size."""
    torch.manual_seed(0)
    pretext = models.build_model(arch, 81)
    task = models.build_model(arch, 4)
    models.load_backbone(task, pretext.state_dict())
    for name, value in task.state_dict().items():
        if not name.startswith(models.HEAD):
            assert torch.equal(value, pretext.state_dict()[name]), name
    assert task(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("seeds", ["0", "11", "abc", "2 3"])
def test_seeds_must_be_a_whole_number_from_1_to_10(make, demo_data, tmp_path, seeds):
    p = make("-n", "finetune", work=tmp_path, data=demo_data, PROFILE="smoke", SEEDS=seeds, check=False)
    assert p.returncode != 0 and "04_finetune.py" not in p.stdout
    assert f"SEEDS={seeds}: the networks per net and fold must be a whole number from 1 to 10" in p.stderr, p.stderr


@pytest.mark.parametrize("script,option", [("04_finetune.py", ["--seed", "10"]), ("05_features.py", ["--seeds", "0"])])
def test_seed_options_are_bounded(script, option, tmp_path):
    base = {"04_finetune.py": ["--task", "multi", "--fold", "0", "--folds", "f", "--hvr", "h", "--jigsaw", "j",
                               "--out", str(tmp_path)],
            "05_features.py": ["--task", "multi", "--fold", "0", "--folds", "f", "--hvr", "h", "--runs", "r",
                               "--out", str(tmp_path)]}[script]
    p = subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / script), *base, *option], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "invalid choice" in p.stderr and option[0] in p.stderr, p.stderr
    assert not any(tmp_path.iterdir())      # refused before anything is written
