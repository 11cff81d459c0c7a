"""BUDGET: PROFILE=cpu's minutes decide how much its networks train (budget.py). The measured
speed is injected (ATMA11_MEASURED_RATES): a slow and a fast machine, never a sleep."""
import json
import re
import shutil
import subprocess
import sys

import pytest

import budget
from conftest import REPO, plain_make

SLOW, FAST = "55,400", "469,1705"     # images/s training, inference: this kind's slowest, and a fast one


def plan(tmp_path, rates, minutes=60, data=None):
    """budget.py plan for the real data's sizes (train.csv and test.csv rows), no folds yet."""
    if data is None:
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        (data / "train.csv").write_text("h\n" + "r\n" * 3149)
        (data / "test.csv").write_text("h\n" + "r\n" * 6707)
    out = tmp_path / f"out_{rates}_{minutes}"
    p = subprocess.run([sys.executable, "budget.py", "plan", "--budget", str(minutes), "--profile", "cpu",
                        "--data", data, "--folds", tmp_path / "no_folds", "--hvr", tmp_path / "no_hvr",
                        "--out", out], cwd=REPO, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "ATMA11_MEASURED_RATES": rates})
    assert p.returncode == 0, p.stderr
    return json.loads((out / "budget.json").read_text()), p.stdout


def test_a_slow_and_a_fast_machine_pick_different_rungs_that_fit(tmp_path):
    slow, said = plan(tmp_path, SLOW)
    fast, _ = plan(tmp_path, FAST)
    assert (slow["epochs"], slow["seeds"]) != (fast["epochs"], fast["seeds"])
    rungs = [(r["epochs"], r["seeds"]) for r in slow["ladder"]]
    assert rungs == list(budget.LADDER)
    assert rungs.index((slow["epochs"], slow["seeds"])) < rungs.index((fast["epochs"], fast["seeds"]))
    for chosen in (slow, fast):       # the most work that fits: the next rung up would not
        assert chosen["fits"] and chosen["predicted_minutes"] <= 60
        above = rungs.index((chosen["epochs"], chosen["seeds"])) + 1
        if above < len(rungs):
            assert chosen["ladder"][above]["predicted_minutes"] > 60
    assert f"{slow['epochs']} epochs x 1 seed, predicted" in said and "injected" in said
    # twice the minutes never buy less
    more, _ = plan(tmp_path, SLOW, minutes=120)
    assert rungs.index((more["epochs"], more["seeds"])) >= rungs.index((slow["epochs"], slow["seeds"]))


def test_06s_share_scales_with_the_machines_probe(tmp_path):
    """A machine on which 06's LightGBM probe runs 10 times slower leaves the networks 10 x AFTER
    less of the budget, and says so."""
    quick, _ = plan(tmp_path, FAST)
    slow_06, said = plan(tmp_path, f"{FAST},{10 * budget.PROBE_REFERENCE}")
    assert quick["after_minutes"] == pytest.approx(budget.AFTER, abs=0.01)
    assert slow_06["after_minutes"] == pytest.approx(10 * budget.AFTER, abs=0.01)
    assert f"{10 * budget.AFTER:.1f} for 06-07" in said
    rungs = list(budget.LADDER)
    assert rungs.index((slow_06["epochs"], slow_06["seeds"])) < rungs.index((quick["epochs"], quick["seeds"]))
    assert slow_06["predicted_minutes"] <= 60


def test_the_probe_times_a_booster_here():
    assert 0 < budget.probe() < 120


def test_a_budget_no_rung_fits_takes_the_cheapest_and_says_so(tmp_path):
    chosen, said = plan(tmp_path, SLOW, minutes=1)
    assert (chosen["epochs"], chosen["seeds"]) == budget.LADDER[0] and not chosen["fits"]
    assert "still over the budget" in said


@pytest.fixture(scope="module")
def planned(tmp_path_factory, demo_data):
    """`make fold FOLD=0 TASK=multi PROFILE=cpu BUDGET=1` on the demo data: the cheapest rung,
    planned once, and fold 0's network trained to it."""
    work = tmp_path_factory.mktemp("budget") / "work"
    env = {"ATMA11_MEASURED_RATES": SLOW}
    p = run(["fold", "FOLD=0", "TASK=multi", "PROFILE=cpu", "BUDGET=1", f"WORK={work}", f"DATA={demo_data}"], env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return work, p, env


def run(args, env):
    return plain_make(*args, env=env, timeout=600)


def test_make_plans_once_before_the_finetunes_and_a_rerun_keeps_the_plan(planned, demo_data):
    work, p, env = planned
    text = (work / "04_finetune" / "budget.txt").read_text()
    assert text.split() == ["budget=1", "epochs=6", "seeds=1"]
    assert p.stdout.index("budget.py plan") < p.stdout.index("04_finetune.py")
    assert "[budget] BUDGET=1 min: 6 epochs x 1 seed" in p.stdout
    assert sorted(d.name for d in (work / "04_finetune").iterdir() if d.is_dir()) == ["multi_0"]
    config = json.loads((work / "04_finetune" / "multi_0" / "provenance.json").read_text())["config"]
    assert config["epochs"] == 6
    stamp = (work / "04_finetune" / "budget.txt").stat().st_mtime_ns
    common = ["PROFILE=cpu", "BUDGET=1", f"WORK={work}", f"DATA={demo_data}"]
    again = run(["fold", "FOLD=0", "TASK=multi", *common], env)
    assert again.returncode == 0 and "budget.py" not in again.stdout and "04_finetune.py" not in again.stdout
    rest = run(["-n", "finetune", *common], env)        # the other runs follow the same plan
    assert sorted(re.findall(r"04_finetune.py --task multi --fold (\w+)", rest.stdout)) == ["1", "2", "all"]
    assert rest.stdout.count("--epochs 6 2>&1 | tee") == 3 and "budget.py" not in rest.stdout
    assert (work / "04_finetune" / "budget.txt").stat().st_mtime_ns == stamp


def test_explicit_settings_pin_the_work_and_another_budget_plans_again(planned, demo_data, tmp_path):
    work, _p, env = planned
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    base = ["-n", "fold", "FOLD=0", "TASK=multi", "PROFILE=cpu", f"WORK={copy}", f"DATA={demo_data}"]
    for pin in (["SEEDS=1", "BUDGET=1"], ["FINETUNE_ARGS=--epochs 6", "BUDGET=1"], ["BUDGET=off"]):
        p = run([*base, *pin], env)
        assert p.returncode == 0, p.stderr
        assert "budget.py" not in p.stdout
        redone = re.findall(r"04_finetune.py --task multi --fold (\w+)", p.stdout)
        if pin[0].startswith("FINETUNE_ARGS"):
            assert redone == []          # the same 6 epochs, now pinned: nothing to redo
        else:
            assert redone == ["0"] and "--epochs" not in p.stdout      # the profile's 24
    p = run([*base[1:], "BUDGET=2"], env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "budget.py plan --budget 2" in p.stdout        # planned again: the same rung, nothing redone
    assert (copy / "04_finetune" / "budget.txt").read_text().split() == ["budget=2", "epochs=6", "seeds=1"]
    assert "04_finetune.py" not in p.stdout


@pytest.mark.parametrize("setting, says", [
    ("BUDGET=abc", "whole minutes"), ("BUDGET=0", "whole minutes"), ("BUDGET=60 30", "whole minutes"),
    ("BUDGET=-5", "whole minutes")])
def test_a_bad_budget_is_refused_before_anything_runs(setting, says, tmp_path, demo_data):
    p = run(["finetune", "PROFILE=cpu", setting, f"WORK={tmp_path / 'w'}", f"DATA={demo_data}"], {})
    assert p.returncode != 0 and says in p.stderr and not (tmp_path / "w").exists()


def test_a_budget_is_the_cpu_profiles(tmp_path, demo_data):
    p = run(["finetune", "PROFILE=smoke", "BUDGET=30", f"WORK={tmp_path / 'w'}", f"DATA={demo_data}"], {})
    assert p.returncode != 0 and "PROFILE=cpu's" in p.stderr


def test_finished_runs_without_a_plan_keep_their_rung(planned, demo_data, tmp_path):
    """A WORK restored by sync-down holds the runs, not 04's budget files: the plan takes the
    finished runs' rung on a machine of another speed (measured nothing), and redoes nothing."""
    work, _p, env = planned
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    for name in ("budget.txt", "budget.json"):
        (copy / "04_finetune" / name).unlink()
    p = run(["fold", "FOLD=0", "TASK=multi", "PROFILE=cpu", "BUDGET=1", f"WORK={copy}", f"DATA={demo_data}"],
            dict(env, ATMA11_MEASURED_RATES="1000000,1000000"))      # a machine on which 32 x 3 would fit
    assert p.returncode == 0, p.stderr[-2000:]
    assert "kept from the fine-tunes already finished" in p.stdout and "04_finetune.py" not in p.stdout
    assert (copy / "04_finetune" / "budget.txt").read_text().split() == ["budget=1", "epochs=6", "seeds=1"]
    plan = json.loads((copy / "04_finetune" / "budget.json").read_text())
    assert plan["kept"] and plan["predicted_minutes"] is None and plan["rates"]["train"] is None


def test_the_report_sets_the_plan_against_the_minutes_spent(tmp_path):
    import pandas as pd
    import reporting
    plan = {"budget_minutes": 60.0, "why": "BUDGET=60 min: 32 epochs x 1 seed, predicted 57 min",
            "predicted_minutes": 57.0}
    (tmp_path / "budget.json").write_text(json.dumps(plan))
    minutes = pd.DataFrame({"stage": ["04_finetune", "total"], "minutes": [60.0, 63.5]})
    text = "\n".join(reporting.budget_lines(tmp_path, minutes))
    assert "predicted 57.0 min, actual 63.5 min" in text and "over the budget by 3.5 min" in text
    minutes["minutes"] = [40.0, 45.0]
    assert "within the budget (15.0 min to spare)" in "\n".join(reporting.budget_lines(tmp_path, minutes))
    (tmp_path / "budget.json").write_text(json.dumps(dict(plan, predicted_minutes=None)))
    assert "nothing predicted" in "\n".join(reporting.budget_lines(tmp_path, minutes))
    (tmp_path / "budget.json").unlink()
    assert reporting.budget_lines(tmp_path, minutes) == []      # a run without a plan: no section
