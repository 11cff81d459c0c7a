"""The rehearsal of `make all GPUS=...`: PROFILE=rehearsal is PROFILE=full's own path at toy size
(profiles.REHEARSAL names every setting in which it differs: image size, widths, epochs, row and
step counts), run through the real make on the demo data as the GPU path runs it (make -j2):

- four single-task networks per fold, 4 folds, each evaluated by a process of its own;
- 8-view epochs with the recipe's halving of the learning rate after each;
- 03 under torchrun with 2 ranks (gloo);
- SUBMIT=recipe on those networks, then the default SUBMIT=best, which only restacks;
- a kill -9 in 04, then a rerun that ends identical to the uninterrupted rehearsal.

What a CPU cannot rehearse: CUDA kernels (bf16 autocast and cudnn on a GPU), NCCL, SyncBatchNorm's
forward (it needs NCCL: gloo ranks normalise their own share), a GPU's compute mode and the
slots' pinning of runs to GPUs. bench/gpu.sh checks those on a GPU.
"""
import io
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REHEARSE, kill_make, link_work, run_make

import checkpointing
import common
import profiles
import tasks

RUNS = [common.run_name(t, f) for t in tasks.TASKS for f in common.FOLDS]
KILLED = "onehot_1"          # the run the kill test interrupts


def read_json(path):
    return json.loads(path.read_text())


def test_the_rehearsal_differs_from_full_only_where_it_says():
    full, rehearsal = common.PROFILES["full"], common.PROFILES["rehearsal"]
    assert set(full) == set(rehearsal)
    for stage in full:
        changed = {k for k in full[stage] if full[stage][k] != rehearsal[stage][k]}
        assert changed == set(profiles.REHEARSAL.get(stage, {})), stage
    assert rehearsal["04"]["views"] == rehearsal["03"]["views"] == 8 and rehearsal["04"]["schedule"] == "halve"


def test_four_single_task_networks_per_fold_each_with_an_evaluator_process(rehearsal):
    work, p = rehearsal
    assert sorted(d.name for d in (work / "04_finetune").iterdir() if d.is_dir()) == sorted(RUNS)
    for run in RUNS:
        d = work / "04_finetune" / run
        assert (d / "DONE").exists(), run
        assert read_json(d / "provenance.json")["config"]["evaluator"] == "process", run
        assert "[04] evaluator: a process of its own" in (d / "log.txt").read_text(), run
        ev = pd.read_csv(d / "eval.csv")
        assert list(ev["epoch"]) == [1, 2] and list(ev["views"]) == [8, 8], run


def test_epochs_are_8_views_and_the_rate_halves_after_each(rehearsal):
    work, _ = rehearsal
    c4 = common.PROFILES["rehearsal"]["04"]
    for run in RUNS:
        task, fold = run.split("_")
        rows = len(pd.read_csv(common.fold_csv(work / "01_sgkfold", fold, "train")))
        log = pd.read_csv(work / "04_finetune" / run / "loss.csv")
        per_epoch = log.groupby("epoch")["step"].max()
        steps = math.ceil(rows * 8 / c4["batch"])       # every view of every row, once per epoch
        assert list(per_epoch) == [steps * e for e in (1, 2)], run
        lr = log.groupby("epoch")["lr"].unique()
        assert [list(v) for v in lr] == [[c4["lr"]], [c4["lr"] / 2]], run


def test_the_jigsaw_ran_under_torchrun_with_two_ranks(rehearsal):
    work, p = rehearsal
    assert "torchrun --standalone --nproc_per_node=2 03_jigsaw.py" in p.stdout
    assert read_json(work / "03_jigsaw" / "provenance.json")["config"]["ranks"] == 2
    log = pd.read_csv(work / "03_jigsaw" / "loss.csv")
    assert log["step"].is_unique                    # rank 0 alone writes
    photos = len((work / "02_hvr" / "ids.txt").read_text().split())
    c3 = common.PROFILES["rehearsal"]["03"]
    assert log["step"].max() == math.ceil(photos * c3["views"] * c3["perms"] / c3["batch"])


def test_the_recipe_is_submitted(rehearsal, demo_data):
    work, _ = rehearsal
    assert read_json(work / "06_stack" / "params.json")["submit"] == "recipe"
    sub = pd.read_csv(work / "07_submit" / "submission.csv")
    assert len(sub) == len(pd.read_csv(demo_data / "test.csv")) and sub["target"].between(0, 3).all()


def test_a_kill_in_04_then_a_rerun_ends_identical(rehearsal, demo_data, tmp_path):
    """kill -9 of the whole make (trainer and evaluator process) once the run has a checkpoint;
    the rerun resumes it and ends bit-identical to the uninterrupted rehearsal: weights, eval.csv
    (its seconds aside), 05's outputs and the submission."""
    ref, _ = rehearsal
    work = link_work(ref, tmp_path / "work")
    for stale in (f"04_finetune/{KILLED}", f"05_features/{KILLED}", "06_stack", "07_submit"):
        shutil.rmtree(work / stale)
    run = work / "04_finetune" / KILLED
    alive = kill_make("all", work, demo_data, lambda: bool(checkpointing.list_checkpoints(run)),
                      env={"TORCH_THREADS": "1"}, timeout=600, **REHEARSE)
    assert alive and not (run / "DONE").exists()
    run_make("all", work=work, data=demo_data, jobs=2, timeout=600, **REHEARSE)
    assert "resuming from ckpt_e" in (run / "log.txt").read_text()
    for name in ("ckpt_e001.pt", "ckpt_e002.pt"):
        a = checkpointing.load_checkpoint(ref / "04_finetune" / KILLED / name)["model"]
        b = checkpointing.load_checkpoint(run / name)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ev_ref, ev = (pd.read_csv(d / "eval.csv").drop(columns="seconds") for d in (ref / "04_finetune" / KILLED, run))
    pd.testing.assert_frame_equal(ev_ref, ev)
    for split in ("train", "heldout", "test"):
        with np.load(ref / "05_features" / KILLED / f"{split}.npz") as a, \
                np.load(work / "05_features" / KILLED / f"{split}.npz") as b:
            assert np.array_equal(a["outputs"], b["outputs"]), split
    assert (work / "07_submit" / "submission.csv").read_bytes() == (ref / "07_submit" / "submission.csv").read_bytes()


@pytest.fixture(scope="module")
def recipe_run(make, demo_data, rehearsal, tmp_path_factory):
    """The rehearsal's WORK (made with SUBMIT=recipe; a copy), made again with the default SUBMIT."""
    work = link_work(rehearsal[0], tmp_path_factory.mktemp("recipe") / "work")
    recipe = (work / "07_submit" / "submission.csv").read_bytes()
    recipe_report = (work / "07_submit" / "report.md").read_text()
    p = make("all", work=work, data=demo_data, PROFILE="rehearsal")
    return work, recipe, recipe_report, p


def test_submit_best_after_recipe_only_restacks_and_the_report_names_both(recipe_run, demo_data):
    work, recipe, recipe_report, again = recipe_run
    assert "04_finetune.py" not in again.stdout and "06_stack.py" in again.stdout   # only restacked
    best = (work / "07_submit" / "submission.csv").read_bytes()
    params = pd.read_json(work / "06_stack" / "params.json", typ="series")
    assert params["submit"] == "best" and recipe != best
    test = pd.read_csv(work / "06_stack" / "test.csv")
    sub = pd.read_csv(io.BytesIO(recipe))
    order = pd.read_csv(demo_data / "test.csv")["object_id"]
    assert np.allclose(sub["target"], test.set_index("object_id").loc[order, "recipe"], atol=1e-5)
    recipe_cv = params["cv_overall"]["recipe"]
    for report, submitted in ((recipe_report, "SUBMIT=recipe"), ((work / "07_submit" / "report.md").read_text(), "SUBMIT=best")):
        assert submitted in report and "the recipe's own submission" in report
        assert f"{recipe_cv:.4f}" in report
