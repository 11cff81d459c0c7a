"""What the CPU profile's hour rests on: the learning-rate schedules, one network with four heads
through the whole pipeline (make all NETS=multi), evaluation inside the trainer on a CPU, and an
evaluator that never outlives its trainer nor lets its GPU go while it lives."""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, Lines, load_script, smoke_copy

import checkpointing
import common
import inference
import models
import profiles
import tasks
import training

PY = str(REPO / ".venv" / "bin" / "python")


def settings(kind, **extra):
    return training.FitSettings.pick(dict(profiles.CPU_OPTIM, lr=1.0, epochs=10, batch=1, seed=0, views=1,
                                          ckpt_every=1, schedule=kind), **extra)


def rates(run, batches=7, done=0, optim=None):
    """The learning rate of every step of a run from step `done` on, as fit takes them: the
    rate is read before the optimizer's step and the scheduler steps after it."""
    optim = optim or training.make_optimizer(torch.nn.Linear(1, 1), run)
    schedule = training.make_schedule(optim, run, batches, done=done)
    seen = []
    for _ in range(done, run.epochs * batches):
        seen.append(optim.param_groups[0]["lr"])
        optim.step()
        schedule.step()
    return seen


def test_the_recipe_halves_per_8_view_epoch_and_onecycle_climbs_then_anneals():
    # the recipe: 8 views per epoch, halved after each
    recipe = rates(settings("halve", lr=1e-3, epochs=5, views=8, halve_views=8), batches=10)
    assert recipe[3::10] == [1e-3 * 0.5 ** k for k in range(5)] and recipe[:10] == [1e-3] * 10
    # one view per epoch: halved every 8 epochs (per 8-view equivalent), or every epoch
    per8 = rates(settings("halve", epochs=17, halve_views=8), batches=1)
    assert per8[:8] == [1.0] * 8 and per8[8:16] == [0.5] * 8 and per8[16] == 0.25
    assert rates(settings("halve", epochs=3, halve_views=1), batches=1) == [1.0, 0.5, 0.25]
    cyc = rates(settings("onecycle"))
    peak = int(np.argmax(cyc))
    assert cyc[0] == pytest.approx(1 / 25) and max(cyc) == pytest.approx(1.0, abs=1e-3)
    assert peak == pytest.approx(0.25 * len(cyc), abs=1)
    assert all(a <= b for a, b in zip(cyc[:peak], cyc[1:peak + 1]))            # up, then down
    assert all(a >= b for a, b in zip(cyc[peak:], cyc[peak + 1:])) and cyc[-1] == pytest.approx(1 / 25e4)


def test_a_resumed_schedule_takes_the_uninterrupted_runs_rates_bit_for_bit():
    for run in (settings("halve", epochs=6, halve_views=2), settings("onecycle")):
        whole = rates(run)
        for done in (1, 13, 14, len(whole) - 1):
            # the optimizer of a resumed run holds the rate it stopped at, whatever the layout
            optim = training.make_optimizer(torch.nn.Linear(1, 1), run)
            optim.param_groups[0]["lr"] = 123.0
            assert rates(run, done=done, optim=optim) == whole[done:], (run.schedule, done)


def test_a_halving_between_epoch_ends_is_refused_and_a_toy_one_cycle_runs(capsys):
    with pytest.raises(SystemExit):
        rates(settings("halve", views=2, halve_views=3))
    assert re.search("halve-views 3.*a multiple", capsys.readouterr().err)
    for steps in range(1, 9):       # 4: a warm-up of one step, where torch's OneCycleLR would divide by 0
        toy = rates(settings("onecycle", epochs=1), batches=steps)
        assert len(toy) == steps and all(0 < r <= 1 for r in toy), (steps, toy)
    assert rates(settings("onecycle", epochs=1), batches=4)[0] == pytest.approx(1 / 25)


def test_multi_has_the_four_tasks_heads_and_columns():
    heads = tasks.heads("multi")
    assert [t for t, _ in heads] == list(tasks.TASKS)
    assert heads[-1][1].stop == tasks.TASK_DIMS["multi"] == 26
    out = np.random.default_rng(0).normal(size=(5, 8, 26)).astype(np.float32)
    multi = tasks.reduce_views("multi", out)
    single, start = {}, 0
    for t in tasks.TASKS:
        d = tasks.TASK_DIMS[t]
        single.update(tasks.reduce_views(t, out[:, :, start:start + d]))
        start += d
    assert list(multi) == list(single) == tasks.feature_columns("multi") and len(multi) == 104
    assert all(np.array_equal(multi[c], single[c]) for c in multi)


CPU_SHAPE = dict(NETS="multi", SEEDS=2, FOLD_TEST="no")


@pytest.fixture(scope="module")
def multi_run(make, demo_data, smoke_run, tmp_path_factory):
    """The smoke pipeline (a copy: its four-head networks are seed 0's), then the rest with
    NETS=multi SEEDS=2 FOLD_TEST=no (the cpu profile's shape: two networks per fold, averaged;
    test.csv described by fold all's networks only)."""
    work = smoke_copy(smoke_run, tmp_path_factory.mktemp("multi") / "work",
                      keep=("00_validate", "01_sgkfold", "02_hvr", "03_jigsaw", "04_finetune"))
    p = make("all", work=work, data=demo_data, PROFILE="smoke", timeout=900, jobs=2, **CPU_SHAPE)
    return work, p


def test_one_network_with_four_heads_runs_the_whole_pipeline(multi_run, make, demo_data):
    work, p = multi_run
    assert p.stdout.count("04_finetune.py --task multi") == 4 and "--task target" not in p.stdout   # seed 1's
    assert p.stdout.count("--seed 1") == 4 and p.stdout.count("--seeds 2") == 4
    assert "--role evaluate" not in p.stdout            # on a CPU the trainer evaluates at epoch ends
    for run in (f"multi_{fold}{seed}" for fold in common.FOLDS for seed in ("", "_s1")):
        ev = pd.read_csv(work / "04_finetune" / run / "eval.csv")
        assert list(ev["epoch"]) == [1, 2] and ev["views"].iloc[-1] == 8
        for head in ("target", "onehot", "sortingdate"):       # a network of a few steps: finite
            assert np.isfinite(ev[f"rmse_{head}"]).all() and ev[f"rmse_{head}"].iloc[-1] < 3
        assert (ev["rmse"] == ev["rmse_target"]).all()
    feats = pd.read_parquet(work / "05_features" / "multi_0" / "heldout.parquet")
    assert feats.shape[1] == 1 + 104
    cv = pd.read_csv(work / "06_stack" / "cv.csv")
    assert cv[["target_model", "onehot_model", "sortingdate_model", "stack_seed", "final"]].stack().between(0, 3).all()
    sub = pd.read_csv(work / "07_submit" / "submission.csv")
    assert len(sub) == len(pd.read_csv(demo_data / "test.csv")) and sub["target"].between(0, 3).all()
    report = (work / "07_submit" / "report.md").read_text()
    assert "## Held-out era RMSE per epoch" in report and "multi_0" in report
    status = make("status", work=work, data=demo_data).stdout
    assert [l.split()[1] for l in status.splitlines() if l.startswith("CV ")] == \
        ["multi/target", "multi/onehot", "multi/sortingdate"]
    assert any(l.split()[:3] == ["multi", "0", "s1"] and l.split()[-1] == "done" for l in status.splitlines())


def test_a_folds_features_are_its_seeds_networks_averaged(multi_run):
    import torch
    import pixels
    work, _ = multi_run
    saved = np.load(work / "05_features" / "multi_1" / "heldout.npz")
    images, ids, meta = pixels.load_store(work / "02_hvr")
    rows = pixels.store_rows(ids, list(saved["object_id"][:20]), "store")
    px = pixels.to_pixels(images[rows.numpy()], torch.device("cpu"))
    vidx = pixels.view_index(meta["size"])
    outs = []
    for run in ("multi_1", "multi_1_s1"):
        state = checkpointing.load_checkpoint(checkpointing.list_checkpoints(work / "04_finetune" / run)[-1][2])
        model = models.build_model(state["config"]["arch"], state["config"]["outputs"], width=state["config"]["width"])
        model.load_state_dict(state["model"])
        outs.append(inference.predict_views(model, px, vidx, torch.device("cpu"), 64,
                                            precision=common.PROFILES["smoke"]["05"]["precision"]).numpy())
    assert not np.allclose(outs[0][..., 0], outs[1][..., 0])       # two different networks
    assert np.allclose(saved["outputs"][:20, :, 0], (outs[0][..., 0] + outs[1][..., 0]) / 2, atol=1e-5)


def test_05_takes_the_held_out_side_from_the_evaluator(multi_run, make, demo_data, tmp_path):
    """The evaluator's last pass over a fold's held-out side (8 views of every row) is 05's
    features of that side: no second pass; without the evaluator's file, 05 computes the same."""
    work, _ = multi_run
    provenance = lambda w, run: json.loads((w / "05_features" / run / "provenance.json").read_text())["config"]
    assert provenance(work, "multi_1")["heldout_from_evaluator"] == ["multi_1", "multi_1_s1"]
    assert provenance(work, "multi_all")["heldout_from_evaluator"] == []     # no held-out side
    assert not (work / "04_finetune" / "multi_all" / inference.HELDOUT_VIEWS).exists()
    copy = smoke_copy(multi_run, tmp_path / "work")
    (copy / "04_finetune" / "multi_1_s1" / inference.HELDOUT_VIEWS).unlink()
    with np.load(copy / "04_finetune" / "multi_1" / inference.HELDOUT_VIEWS) as saved:   # another epoch's
        inference.save_views(copy / "04_finetune" / "multi_1" / inference.HELDOUT_VIEWS, saved["object_id"],
                             saved["outputs"] + 1, epoch=1, bf16=False)
    (copy / "05_features" / "multi_1" / "DONE").unlink()
    again = make("features", work=copy, data=demo_data, PROFILE="smoke", **CPU_SHAPE)
    assert again.stdout.count("05_features.py") == 1 and "(heldout: the evaluator" not in again.stdout
    assert provenance(copy, "multi_1")["heldout_from_evaluator"] == []
    for split in ("train", "heldout"):
        with np.load(work / "05_features" / "multi_1" / f"{split}.npz") as a, \
                np.load(copy / "05_features" / "multi_1" / f"{split}.npz") as b:
            assert np.array_equal(a["object_id"], b["object_id"])
            assert np.allclose(a["outputs"], b["outputs"], atol=1e-4), np.abs(a["outputs"] - b["outputs"]).max()


def test_another_seeds_redoes_the_features_and_the_same_seeds_nothing(multi_run, make, demo_data, tmp_path):
    """SEEDS is a prerequisite of 05: back to one seed, the features stop being the pair's mean."""
    work = smoke_copy(multi_run, tmp_path / "work")
    again = make("all", work=work, data=demo_data, PROFILE="smoke", **CPU_SHAPE)
    assert "04_finetune.py" not in again.stdout and "05_features.py" not in again.stdout, again.stdout
    one = make("all", work=work, data=demo_data, PROFILE="smoke", jobs=2, **dict(CPU_SHAPE, SEEDS=1))
    assert "04_finetune.py" not in one.stdout and one.stdout.count("05_features.py") == 4
    assert "06_stack.py" in one.stdout and "--seeds" not in one.stdout
    features = np.load(work / "05_features" / "multi_1" / "heldout.npz")["outputs"]
    pair = np.load(multi_run[0] / "05_features" / "multi_1" / "heldout.npz")["outputs"]
    assert not np.allclose(features, pair)       # seed 0's network alone, no longer the mean


def test_without_fold_test_the_oof_stacks_are_scored_not_submitted(multi_run, make, demo_data, tmp_path):
    """FOLD_TEST=no: the fold networks skip test.csv (half of 05's images), the oof stacks keep
    their CV but leave the candidates; FOLD_TEST=yes redoes folds 0-2's features, not fold all's."""
    import json
    work, p = multi_run
    for fold in common.FOLDS:
        files = {f.name for f in (work / "05_features" / f"multi_{fold}").iterdir()}
        assert ("test.npz" in files and "test.parquet" in files) == (fold == "all"), (fold, files)
    assert "stack_oof, stack_oof_meta: scored, not submittable" in p.stdout
    cv = pd.read_csv(work / "06_stack" / "cv.csv")
    assert cv[["stack_oof", "stack_oof_meta"]].stack().between(0, 3).all()
    test = pd.read_csv(work / "06_stack" / "test.csv")
    assert {"stack_seed", "stack_seed_meta", "blend", "blend_steps", "final"} <= set(test.columns)
    assert not {"stack_oof", "stack_oof_meta"} & set(test.columns)
    params = json.loads((work / "06_stack" / "params.json").read_text())
    assert params["candidates"] == ["stack_seed", "stack_seed_meta", "blend", "blend_steps"] and params["stack"] in params["candidates"]
    oof_only = make("stack", work=smoke_copy(multi_run, tmp_path / "oof"), data=demo_data, PROFILE="smoke",
                    STACK_ARGS="--mode oof", check=False, **CPU_SHAPE)
    assert oof_only.returncode != 0 and "make FOLD_TEST=yes" in oof_only.stderr, oof_only.stderr[-800:]

    work = smoke_copy(multi_run, tmp_path / "work")
    yes = make("all", work=work, data=demo_data, PROFILE="smoke", jobs=2, **dict(CPU_SHAPE, FOLD_TEST="yes"))
    assert yes.stdout.count("05_features.py") == 3 and yes.stdout.count("--fold-test yes") == 3, yes.stdout
    assert "not submittable" not in yes.stdout and "04_finetune.py" not in yes.stdout
    assert all((work / "05_features" / f"multi_{k}" / "test.parquet").exists() for k in ("0", "1", "2"))
    assert {"stack_oof", "stack_oof_meta"} <= set(pd.read_csv(work / "06_stack" / "test.csv").columns)
    back = make("features", work=work, data=demo_data, PROFILE="smoke", jobs=2, **CPU_SHAPE)    # and back: removed
    assert back.stdout.count("05_features.py") == 3
    assert not any((work / "05_features" / f"multi_{k}" / "test.parquet").exists() for k in ("0", "1", "2"))


def test_evaluator_exits_when_its_trainer_dies(multi_run, tmp_path):
    """A GPU evaluator whose trainer was killed (-9) stops at its next look for a checkpoint
    instead of polling forever (and holding its GPU) as an orphan."""
    work, _ = multi_run
    cmd = [PY, "04_finetune.py", "--task", "multi", "--fold", "0", "--folds", work / "01_sgkfold",
           "--hvr", work / "02_hvr", "--jigsaw", work / "03_jigsaw", "--out", tmp_path / "runs",
           "--profile", "smoke", "--role", "evaluate"]
    # the "trainer": a shell that starts the evaluator and waits, as 04 --role run does
    trainer = subprocess.Popen(["sh", "-c", "ATMA11_TRAINER_PID=$$ " + " ".join(f"'{c}'" for c in map(str, cmd))
                                + " & echo $!; wait"],
                               cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
    evaluator = int(trainer.stdout.readline())
    Lines(trainer.stdout).wait_for("waiting for ckpt_e001.pt")      # in its loop, looking for a checkpoint
    assert os.path.exists(f"/proc/{evaluator}")
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait()
    deadline = time.time() + 30
    while os.path.exists(f"/proc/{evaluator}") and time.time() < deadline:
        time.sleep(0.2)
        try:
            os.waitpid(evaluator, os.WNOHANG)
        except ChildProcessError:
            pass
    alive = os.path.exists(f"/proc/{evaluator}") and "Z" not in open(f"/proc/{evaluator}/stat").read().split()[2]
    if alive:
        os.kill(evaluator, signal.SIGKILL)
    assert not alive, "the evaluator outlived its trainer"


def test_gpu_slot_stays_held_while_a_process_of_the_run_lives(tmp_path):
    """on-gpu hands its lock down: a run whose helper (a background process) outlives the run's
    main process keeps the GPU until the helper ends too."""
    locks = tmp_path / "locks"
    log = tmp_path / "log"
    first = [PY, str(REPO / "devices.py"), "on-gpu", "--gpus", "7", "--locks", str(locks), "--",
             "sh", "-c", f"(sleep 3; echo helper-end $(date +%s.%N) >> {log}) & exit 0"]
    second = [PY, str(REPO / "devices.py"), "on-gpu", "--gpus", "7", "--locks", str(locks), "--",
              "sh", "-c", f"echo second-start $(date +%s.%N) >> {log}"]
    assert subprocess.call(first, stdout=subprocess.DEVNULL) == 0      # returns at once
    assert subprocess.call(second, stdout=subprocess.DEVNULL, timeout=60) == 0
    events = dict(line.split() for line in log.read_text().splitlines())
    assert float(events["second-start"]) >= float(events["helper-end"])


def test_study_configurations_are_complete_and_distinct():
    """make study covers every axis the CPU profile is chosen on, each against one base."""
    sys.path.insert(0, str(REPO / "bench"))
    study = load_script("bench/study.py")
    names = [n for n, _, _ in study.CONFIGS]
    assert len(set(names)) == len(names)
    assert {a for _, a, _ in study.CONFIGS} == {"base", "epochs", "schedule", "size", "arch", "heads", "jigsaw", "init",
                                                "ensemble", "precision", "loss"}
    configs = [tuple(sorted(dict(study.BASE, **c).items())) for _, _, c in study.CONFIGS]
    assert len(set(configs)) == len(configs)
    assert math.isclose(study.PIPELINE_NETS, 3 + 1.5)


def test_study_only_reruns_the_named_configurations_and_keeps_the_other_rows(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "bench"))
    study = load_script("bench/study.py")
    (tmp_path / "hvr").mkdir()
    (tmp_path / "hvr" / "meta.json").write_text('{"size": 48}')
    out = tmp_path / "study"
    out.mkdir()
    names = [n for n, _, _ in study.CONFIGS]
    row = lambda name, rmse: dict(name=name, axis="x", pipeline_minutes=1.0, rmse_target=rmse)
    retired = row("shift_24", 0.828)            # a configuration measured at 6f8466d, no longer in CONFIGS
    pd.DataFrame([row(n, 0.9) for n in names[:-1]] + [retired]).to_csv(out / "study.csv", index=False)   # the last never ran
    ran = []
    monkeypatch.setattr(study, "run_config", lambda args, name, axis, changes: ran.append(name) or row(name, 0.5))
    monkeypatch.setattr(sys, "argv", ["study", "--folds", "f", "--hvr", str(tmp_path / "hvr"), "--ids", "i",
                                      "--photos", "p", "--out", str(out), "--only", names[1], names[-1]])
    study.main()
    df = pd.read_csv(out / "study.csv")
    assert ran == [names[1], names[-1]] and list(df["name"]) == names + ["shift_24"]   # CONFIGS' order, then the retired
    assert df.set_index("name")["rmse_target"].to_dict() == {**{n: 0.5 if n in ran else 0.9 for n in names}, "shift_24": 0.828}


def test_results_page_is_generated_from_a_finished_work(multi_run, tmp_path):
    """docs/results.md's generator reads only the WORK's files (and /usr/bin/time's output)."""
    work, _ = multi_run
    timing = tmp_path / "time.txt"
    timing.write_text("\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:06\n\tMaximum resident set size (kbytes): 2097152\n")
    out = tmp_path / "docs" / "results.md"
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    subprocess.run([PY, "bench/results_doc.py", "--work", work, "--time", timing, "--out", out, "--readme", readme,
                    "--command", "make all PROFILE=smoke"], check=True, cwd=REPO, capture_output=True)
    page = out.read_text()
    cv = pd.read_csv(work / "06_stack" / "cv.csv")
    assert f"{cv['final'].iloc[-1]:.4f}" in page and "Wall time 62.1 min, peak resident memory 2.00 GiB" in page
    assert "multi_0/target" in page and "| 04_finetune |" in page
    row = [l for l in readme.read_text().splitlines() if l.startswith("| this project's CPU hour")]
    assert len(row) == 1 and f" | {cv['final'].iloc[-1]:.4f} | " in row[0]


def test_the_readmes_headline_is_the_results_pages():
    """The README's CPU-hour CV is the one docs/results.md shows for the submission."""
    row = [l for l in (REPO / "README.md").read_text().splitlines() if l.startswith("| this project's CPU hour")]
    page = (REPO / "docs" / "results.md").read_text()
    submitted = re.search(r"\| \*\*the submission\*\* .*\| ([0-9.]+) \|$", page, re.M)
    assert len(row) == 1 and submitted and f" | {submitted[1]} | " in row[0]


def test_blend_weighs_each_fold_with_the_other_folds_rows_only():
    import stacking as stack
    rng = np.random.default_rng(0)
    n = 300
    ids = pd.Index([f"o{i}" for i in range(n)])
    fold = pd.Series(np.repeat(["0", "1", "2"], n // 3), index=ids)
    x = pd.DataFrame({"good": rng.normal(size=n), "noise": rng.normal(size=n)}, index=ids)
    y = 2 * x["good"].to_numpy() + 0.5
    pred, test, final = stack.blend(x, x.iloc[:5], y, fold)
    assert final.coef_ == pytest.approx([2, 0], abs=1e-9) and final.intercept_ == pytest.approx(0.5)
    assert np.allclose(pd.concat(pred.values()).loc[ids], y) and np.allclose(test, y[:5])
    # fold 0's labels changed: fold 0's own predictions do not move, the others' do
    y2 = y.copy()
    y2[:100] += rng.normal(size=100) * 5
    pred2, _, _ = stack.blend(x, x.iloc[:5], y2, fold)
    assert np.allclose(pred2["0"], pred["0"]) and not np.allclose(pred2["1"], pred["1"])
    # weights are never negative: a reversed input gets 0, not -1
    _, _, reversed_fit = stack.blend(-x, x.iloc[:5], y, fold)
    assert (reversed_fit.coef_ >= 0).all()


def test_onehot_steps_sum_to_the_expected_class_and_a_blend_can_weigh_each():
    """blend_steps' inputs: P(era >= c) of onehot's scores (clipped and normalised as for its
    expected class), falling with c; when the truth weighs the steps unequally, the step blend
    finds it and the expected class cannot."""
    import tasks
    import stacking as stack
    rng = np.random.default_rng(1)
    scores = rng.dirichlet(np.ones(4), 400) + rng.normal(0, 0.05, (400, 4))
    steps = tasks.era_steps(scores)
    assert np.allclose(steps.sum(1), tasks.era_of_scores(scores))
    assert (np.diff(steps, axis=1) <= 1e-12).all() and (steps >= 0).all() and (steps <= 1 + 1e-9).all()
    table = pd.DataFrame(scores, columns=tasks.onehot_columns())
    assert np.allclose(np.column_stack(list(tasks.onehot_steps(table).values())), steps)
    ids = pd.Index([f"o{i}" for i in range(400)])
    fold = pd.Series(np.repeat(["0", "1", "2", "0"], 100), index=ids)
    y = 3 * steps[:, 2] + 0.5 * steps[:, 0]
    by_step = pd.DataFrame(steps, index=ids, columns=tasks.step_columns())
    expected = pd.DataFrame({"era": steps.sum(1)}, index=ids)
    step_pred, _, fit = stack.blend(by_step, by_step, y, fold)
    era_pred, _, _ = stack.blend(expected, expected, y, fold)
    assert fit.coef_ == pytest.approx([0.5, 0, 3], abs=1e-6)
    rmse = lambda pred: stack.rmse(pd.concat(pred.values()).loc[ids], y)
    assert rmse(step_pred) < 1e-6 < rmse(era_pred)


def test_the_statistics_booster_uses_its_own_params_and_the_bench_scores_both(smoke_run):
    """bench/meta_params.py scores the recipe's booster and META_PARAMS on the statistics alone;
    its 06-style score of META_PARAMS is the stats_only CV that 06 itself wrote."""
    work = smoke_run[0]
    p = subprocess.run([PY, "bench/meta_params.py", "--work", work, "--rounds", "200"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    figures = dict(line.split(": ", 1) for line in p.stdout.splitlines())
    assert {f"meta_only_{s}_{m}" for s in ("recipe", "meta") for m in ("shared_rounds_rmse", "shared_rounds_best",
                                                                         "as_06_rmse")} == set(figures)
    cv = pd.read_csv(work / "06_stack" / "cv.csv")
    assert float(figures["meta_only_meta_as_06_rmse"]) == pytest.approx(cv["stats_only"].iloc[-1], abs=1e-4)
