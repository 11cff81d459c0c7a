"""The bench scripts still run: each script in bench/ (gpu.sh and gpu_project.py aside) is run here
as `make bench` runs it (.venv/bin/python bench/X.py from the repository root, OpenMP waiting
passively) at toy size on the CPU with one torch thread, and must exit 0. A figure script must
also print its figures: every line of its output `name: value unit` (benchlib.emit), each value
a finite number, the names those the script promises; pil_store.py and study.py, which print no
figures, are checked by the files they write. A function renamed in a pipeline file, or an option
a script no longer matches, fails here instead of in the next benchmark run. benchlib.py runs
through the others; results_doc.py and meta_params.py run in tests/test_cpu_hour.py (on the
four-head pipeline and the smoke pipeline), and so does study.py's choice of rows (--only); here
study.py trains one configuration. texture_study.py runs in tests/test_texture.py.

The figures themselves (speeds of a few toy steps on a shared machine) are not checked, except
where the script reproduces a number the pipeline wrote: stack_params.py's recipe row is 06's
cv.csv, and pil_store.py's pixels are 02's within the tolerance its docstring gives.
"""
import json
import math
import os
import re
import subprocess

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, build_store

import common

PY = str(REPO / ".venv" / "bin" / "python")
# `name: value unit`; the unit may be empty (meta_params.py) or several words (stack_params.py)
FIGURE = re.compile(r"^(\w+): (\S+)(?: (.*))?$")


def run_bench(script, *args, timeout=300):
    """Run bench/<script> with `args` as bench.mk does; fail with its stderr unless it exits 0."""
    env = {**os.environ, "TORCH_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [PY, f"bench/{script}", *map(str, args)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


def figures(stdout):
    """{name: (value, unit)} of a figure script's output: every line a figure, every value finite
    (make bench collects the lines in WORK/bench/results.txt: anything else there is noise)."""
    found = {}
    for line in stdout.splitlines():
        m = FIGURE.match(line)
        assert m, f"not a `name: value unit` line: {line!r}"
        value = float(m[2])
        assert math.isfinite(value), line
        assert m[1] not in found, f"{m[1]} printed twice"
        found[m[1]] = (value, m[3] or "")
    return found


def test_train_loop(tmp_path):
    """Figure 3: 04's batch_loss (tasks.head_losses of the target task) inside training.fit, paired
    with a bare torchvision loop."""
    p = run_bench("train_loop.py", "--sizes", 32, "--batch", 4, "--steps", "1,1", "--arch", "resnet18",
                  "--device", "cpu", "--tmp", tmp_path)
    got = figures(p.stdout)
    assert set(got) == {"train_loop_32px_ours", "train_loop_32px_bare", "train_loop_32px_vs_ref"}
    assert all(v > 0 for v, _ in got.values())
    assert got["train_loop_32px_ours"][1] == "images/s" and got["train_loop_32px_vs_ref"][1] == "x"
    assert not any(tmp_path.iterdir())           # fit's run directory is a temporary one


def test_model_throughput():
    p = run_bench("model_throughput.py", "--arch", "resnet18", "--size", 32, "--train-batch", 4,
                  "--infer-batch", 4, "--warm", 1, "--steps", 1, "--device", "cpu")
    got = figures(p.stdout)
    assert set(got) == {f"model_resnet18_32px_{kind}_{precision}" for kind in ("train", "infer")
                        for precision in ("fp32", "bf16")}
    assert all(v > 0 and unit == "images/s" for v, unit in got.values())


# Figures 1 and 2 on 8 demo photos at 24 px (the smoke profile's store; a multiple of 3 for the
# jigsaw's tiles), one pass of one timed batch each; the store is made by the real stage 02.
BATCH_ARGS = ("--sizes", 24, "--photos", 8, "--batch", 8, "--rounds", 1, "--batches", 1, "--device", "cpu")


def test_input_path(demo_data, tmp_path):
    p = run_bench("input_path.py", "--data", demo_data, *BATCH_ARGS, "--workers", 1, "--tmp", tmp_path)
    got = figures(p.stdout)
    assert set(got) == {"input_24px_ours", "input_24px_recipe_loader", "input_24px_vs_ref"}
    assert all(v > 0 for v, _ in got.values())
    assert not any(tmp_path.iterdir())           # its scratch directory is removed


@pytest.mark.parametrize("data", ["demo_data", "real_data"])
def test_jigsaw_batches(data, request, tmp_path):
    """Also on 8 of the real photos where they are present: make bench samples those (photos of
    every size and colour mode through the recipe's views and stage 02)."""
    p = run_bench("jigsaw_batches.py", "--data", request.getfixturevalue(data), *BATCH_ARGS, "--puzzles", 2,
                  "--jobs", 1, "--tmp", tmp_path)
    got = figures(p.stdout)
    tag = "jigsaw_24px"
    ours = {f"{tag}_ours", f"{tag}_epoch_ours", f"{tag}_disk_ours"}
    recipe = {f"{tag}_recipe_prerender", f"{tag}_vs_ref", f"{tag}_epoch_recipe_prerender",
              f"{tag}_disk_recipe_per_epoch", f"{tag}_disk_vs_ref"}
    assert set(got) == ours | recipe             # ImageMagick is a prerequisite of the pipeline
    assert all(v > 0 for v, _ in got.values())
    # the store's disk for the real data is exact arithmetic: 9856 photos x 24 x 24 x 3 bytes
    assert got[f"{tag}_disk_ours"] == (pytest.approx(9856 * 24 * 24 * 3 / 1e9, rel=0.01), "GB")
    assert not any(tmp_path.iterdir())


def test_pil_store_matches_02s_store(demo_data, tmp_path):
    """The store gpu.sh makes without ImageMagick: 02's files (but stats.csv), the same ids in the
    same order, and pixels within the tolerance its docstring gives."""
    ids = sorted(p.stem for p in (demo_data / "photos").glob("*.jpg"))
    magick = build_store(demo_data / "photos", ids, tmp_path / "magick", 24)
    ids_csv = tmp_path / "photos.csv"               # 00_validate/photos.csv's shape: object_id first
    ids_csv.write_text("object_id,width,height\n" + "".join(f"{i},0,0\n" for i in ids))
    run_bench("pil_store.py", "--photos", demo_data / "photos", "--ids", ids_csv, "--out", tmp_path / "pil",
              "--size", 24)
    pil = tmp_path / "pil"
    assert common.is_done(pil)
    assert {f.name for f in magick.iterdir()} - {f.name for f in pil.iterdir()} == {"stats.csv"}
    assert (pil / "ids.txt").read_text().split() == (magick / "ids.txt").read_text().split()
    meta = json.loads((pil / "meta.json").read_text())
    record = ("bytes", "sample_sha256")         # 02's record of its store: its own pixels' hash
    ours = {k: v for k, v in json.loads((magick / "meta.json").read_text()).items() if k not in record}
    assert meta.pop("decoder") == "PIL" and meta == ours
    a = np.load(magick / "images.npy").astype(np.int16)
    b = np.load(pil / "images.npy").astype(np.int16)
    assert a.shape == b.shape == (len(ids), 24, 24, 3)
    diff = np.abs(a - b)
    assert diff.mean() < 1 and diff.mean(axis=(1, 2, 3)).max() < 3, (diff.mean(), diff.mean(axis=(1, 2, 3)).max())


def test_stack_params_reproduces_06s_cv(smoke_run):
    """06's stacks rebuilt under other booster settings, on the smoke WORK (NETS=multi, smoke's
    default); its row of the recipe's settings is 06's cv.csv."""
    work = smoke_run[0]
    p = run_bench("stack_params.py", "--work", work, "--nets", "multi", "--sets", "recipe", "small")
    got = figures(p.stdout)
    heads = {f"target_head_fold{k}_{side}_rmse" for k in ("0", "1", "2") for side in ("train", "heldout")}
    stacks = {f"stack_{mode}{meta}_{name}_rmse" for mode in ("seed", "oof") for meta in ("", "_meta")
              for name in ("recipe", "small")}
    assert set(got) == heads | stacks
    assert all(0 <= v < 4 for v, _ in got.values())
    assert all(re.fullmatch(r"\(rounds \d+/\d+/\d+\)", got[s][1]) for s in stacks), got
    cv = pd.read_csv(work / "06_stack" / "cv.csv").iloc[-1]      # the pooled row
    for stack in ("stack_seed", "stack_oof", "stack_seed_meta", "stack_oof_meta"):
        assert got[f"{stack}_recipe_rmse"][0] == pytest.approx(cv[stack], abs=1e-4), stack


def test_study_trains_a_configuration(smoke_run, demo_data, tmp_path):
    """make study's script end to end for one configuration, one epoch: 04 through its own
    options, the row, the plot. It needs a 48 px store (the cpu profile's); the folds are the
    smoke WORK's."""
    work = smoke_run[0]
    ids = pd.read_csv(work / "00_validate" / "photos.csv", dtype={"object_id": str})["object_id"]
    hvr = build_store(demo_data / "photos", list(ids), tmp_path / "hvr48", 48)
    out = tmp_path / "study"
    p = run_bench("study.py", "--folds", work / "01_sgkfold", "--hvr", hvr, "--ids",
                  work / "00_validate" / "photos.csv", "--photos", demo_data / "photos", "--out", out,
                  "--python", PY, "--only", "base", "--epochs", 1)
    assert f"wrote {out / 'study.csv'}" in p.stdout
    row = pd.read_csv(out / "study.csv").set_index("name").loc["base"]
    assert row["epochs"] == 1 and row["size"] == 48 and row["fine_tune_minutes"] > 0
    assert all(0 <= row[f"rmse_{h}"] < 4 for h in ("target", "onehot", "sortingdate")), row
    assert (out / "study.png").stat().st_size > 0 and (out / "provenance.json").exists()


def test_weight_average_scores_the_last_epoch_as_04_does(smoke_run, tmp_path):
    """bench/weight_average.py at toy size (the cpu profile's network at width 8 for 2 epochs on the smoke
    WORK's store and folds): its K = 1 row, the run's own last epoch, is the 8-view RMSE 04
    wrote for it; K = 2 averages other weights, and with --bn recomputes BatchNorm's statistics."""
    work = smoke_run[0]
    out = tmp_path / "wa"
    p = run_bench("weight_average.py", "--folds", work / "01_sgkfold", "--hvr", work / "02_hvr", "--out", out,
                  "--fold", "0", "--epochs", 2, "--width", 8, "--tails", 1, 2, "--bn", "--python", PY)
    got = {m[1]: float(m[2]) for m in re.finditer(r"^(wa_\w+): (\S+) $", p.stdout, re.M)}
    heads = ("target", "onehot", "sortingdate")
    assert set(got) == {f"wa_f0_s0_last{k}_{h}_rmse" for k in (1, 2, "2_bn") for h in heads}
    last = pd.read_csv(out / "runs" / "multi_0" / "eval.csv").iloc[-1]
    assert last["views"] == 8
    for h in heads:
        assert got[f"wa_f0_s0_last1_{h}_rmse"] == pytest.approx(last[f"rmse_{h}"], abs=5e-4), h
    assert got["wa_f0_s0_last2_target_rmse"] != got["wa_f0_s0_last1_target_rmse"]
    assert got["wa_f0_s0_last2_bn_target_rmse"] != got["wa_f0_s0_last2_target_rmse"]
    assert "| last | bn | target mean |" in p.stdout


def test_fresh_clone(tmp_path):
    """A newcomer's setup in a fresh clone of HEAD, at toy size: one small pin instead of
    requirements.txt (the real install is minutes; CI's own fresh clone runs it), no make all."""
    pin = next(line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("tqdm=="))
    (tmp_path / "req.txt").write_text(pin + "\n")
    clones = tmp_path / "clones"
    clones.mkdir()
    p = run_bench("fresh_clone.py", "--requirements", tmp_path / "req.txt", "--no-all", "--tmp", clones)
    got = figures(p.stdout)
    assert set(got) == {"fresh_uv_setup"} and got["fresh_uv_setup"][0] > 0, p.stdout
    assert not any(clones.iterdir())                # the clone is removed


def test_end_to_end(tmp_path):
    """Figure 4's script up to its first make goal (the whole smoke pipeline is minutes, and
    tests/test_pipeline.py runs it): demo data, `make validate` timed, then rerun, which must
    find nothing to do."""
    p = run_bench("end_to_end.py", "--profile", "smoke", "--until", "validate", "--tmp", tmp_path)
    got = figures(p.stdout)
    prefix = "e2e_demo_smoke"
    assert set(got) == {f"{prefix}_{stage}_{figure}" for stage in ("demo", "validate", "rerun_validate")
                        for figure in ("wall", "peak_rss")} | {f"{prefix}_total_wall"}
    assert all(v > 0 for v, _ in got.values())
    assert got[f"{prefix}_total_wall"][0] == pytest.approx(
        got[f"{prefix}_demo_wall"][0] + got[f"{prefix}_validate_wall"][0], rel=0.05, abs=0.02)
    assert "changed" not in p.stderr, p.stderr       # the rerun rewrote nothing in WORK
    assert not any(tmp_path.iterdir())              # its WORK and logs are removed
