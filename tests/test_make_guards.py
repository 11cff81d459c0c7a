"""What `make` guards, typed as a user types it (plain `make` in the checkout, no extra flags):
every option that shapes a result is a prerequisite of what it shapes, and a run continues only
from checkpoints of its own setup; a finished run's network is its last epoch's or none; `make
clean` removes only what the stages wrote; no Make variable can run a command; a remote's absolute
path stays absolute.

The WORKs are copies of the session's smoke pipeline (tests/conftest.py: smoke_run), sharing its
bytes, with one torch thread per stage as it was built with, so a redone run is bit-identical.
"""
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, plain_make, smoke_copy

import checkpointing

SMOKE = ("PROFILE=smoke",)
ONE_THREAD = {"TORCH_THREADS": "1"}


def stamps(work):
    """{stage or run: its DONE's mtime}."""
    return {str(p.parent.relative_to(work)): p.stat().st_mtime_ns for p in work.rglob("DONE")}


def redone(before, work):
    after = stamps(work)
    return sorted(k for k in after if after[k] != before.get(k))


def make_in(work, data, *args, check=True):
    p = plain_make(*args, f"WORK={work}", f"DATA={data}", *SMOKE, env=ONE_THREAD, timeout=600)
    if check:
        assert p.returncode == 0, f"make {' '.join(args)} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture
def work(smoke_run, tmp_path):
    return smoke_copy(smoke_run, tmp_path / "work")


# ---- options shape results: each redoes what depends on it, and nothing else ---------------------
def test_each_option_redoes_what_it_shapes_and_nothing_else(work, demo_data):
    fold = ("fold", "FOLD=0", "TASK=multi")
    before = stamps(work)
    p = make_in(work, demo_data, *fold, "FINETUNE_ARGS=--lr 0.002")
    assert redone(before, work) == ["04_finetune/multi_0"]
    assert "multi_0: starting over (trained with another setup: lr 0.001 -> 0.002)" in p.stdout, p.stdout
    assert "resuming" not in p.stdout

    before = stamps(work)
    p = make_in(work, demo_data, *fold, "FINETUNE_ARGS=--lr 0.002", "JIGSAW_ARGS=--epochs 1")
    assert redone(before, work) == ["03_jigsaw", "04_finetune/multi_0"]
    assert "03_jigsaw: starting over" in p.stdout and "multi_0: starting over (trained with another setup: input_jigsaw" in p.stdout

    before = stamps(work)                     # the same options again: nothing
    p = make_in(work, demo_data, *fold, "FINETUNE_ARGS=--lr 0.002", "JIGSAW_ARGS=--epochs 1")
    assert redone(before, work) == [] and "python" not in p.stdout, p.stdout

    make_in(work, demo_data, "hvr", "RESIZE=pad")       # 02 redone, so 03 and all after it will be
    assert redone(before, work) == ["02_hvr"] and '"mode": "pad"' in (work / "02_hvr" / "meta.json").read_text()
    assert (work / "02_hvr" / "DONE").stat().st_mtime_ns > (work / "03_jigsaw" / "DONE").stat().st_mtime_ns


def test_a_rerun_with_other_options_after_a_kill_starts_over(work, demo_data):
    """A kill leaves checkpoints without DONE: a rerun of other options must not continue them.
    More epochs of the recipe's halving schedule do continue: its rate does not depend on them."""
    run = work / "04_finetune" / "multi_1"
    (run / "DONE").unlink()
    (run / ".ckpt_e002.pt.k1ll3d.tmp").write_bytes(b"\0" * 1000)       # what a kill mid-write leaves
    p = make_in(work, demo_data, "fold", "FOLD=1", "TASK=multi", "FINETUNE_ARGS=--lr 0.002")
    assert "multi_1: starting over" in p.stdout and "resuming" not in p.stdout, p.stdout
    assert not list(run.glob(".*.tmp"))

    p = make_in(work, demo_data, "fold", "FOLD=1", "TASK=multi", "FINETUNE_ARGS=--lr 0.002 --epochs 3")
    assert "resuming from ckpt_e002.pt" in p.stdout and "starting over" not in p.stdout, p.stdout
    assert [r.split(",")[0] for r in (run / "eval.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]


# ---- a finished run's network is its last epoch's ---------------------------------------------------
def test_a_deleted_or_truncated_last_checkpoint_is_named_then_redone_never_replaced(work, demo_data):
    gone, cut = work / "04_finetune" / "multi_0" / "ckpt_e002.pt", work / "04_finetune" / "multi_1" / "ckpt_e002.pt"
    original = checkpointing.load_checkpoint(cut)["model"]
    gone.unlink()
    data = cut.read_bytes()
    cut.unlink()                              # a new file: the hard-linked original stays whole
    cut.write_bytes(data[: len(data) // 3])
    for run in ("multi_0", "multi_1"):
        (work / "05_features" / run / "DONE").unlink()          # 05 to be redone
    p = make_in(work, demo_data, "-k", "all", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert f"{gone} is missing: 05 uses the network of the run's last epoch, 2, and no other" in p.stderr, p.stderr
    assert f"{cut}: unreadable checkpoint" in p.stderr
    assert f"rm {gone.parent / 'DONE'}" in p.stderr
    assert not (work / "05_features" / "multi_0" / "DONE").exists()

    (work / "04_finetune" / "multi_1" / "DONE").unlink()       # the way out the message gives
    p = make_in(work, demo_data, "fold", "FOLD=1", "TASK=multi")
    assert f"{cut}: unreadable checkpoint" in p.stdout and "removed; the run redoes it" in p.stdout
    redone = checkpointing.load_checkpoint(cut)["model"]
    assert all(torch.equal(original[k], redone[k]) for k in original)      # the same network again


# ---- make clean ----------------------------------------------------------------------------------
def test_clean_keeps_data_inside_work_and_every_file_it_did_not_write(work, demo_data):
    data = Path(shutil.copytree(demo_data, work / "raw"))
    (work / "notes.txt").write_text("mine")
    p = plain_make("clean", f"WORK={work}", f"DATA={data}")
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in work.iterdir()) == ["notes.txt", "raw"], p.stdout
    assert sorted(f.name for f in data.iterdir()) == sorted(f.name for f in demo_data.iterdir())
    assert f"kept {work}: it holds other files" in p.stdout

    inside = Path(shutil.copytree(demo_data, work / "02_hvr" / "raw"))       # DATA in a stage folder
    p = plain_make("clean", f"WORK={work}", f"DATA={inside}")
    assert p.returncode == 0 and (inside / "train.csv").exists(), p.stdout + p.stderr
    assert f"kept {work / '02_hvr'}: it holds DATA" in p.stdout


def test_clean_never_removes_the_checkout(tmp_path):
    """`make clean WORK=$PWD` in a copy of the checkout: refused, every file still there."""
    copy = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, copy / name)
    for where in (str(copy), ".", ".."):
        p = plain_make("clean", f"WORK={where}", cwd=copy)
        assert p.returncode != 0 and "holds this checkout" in p.stderr, p.stderr
    assert all((copy / name).exists() for name in files)


# ---- no Make variable runs a command ---------------------------------------------------------------
INJECTED = "INJECTED_BY_A_VARIABLE"


@pytest.mark.parametrize("goal,variable", [
    ("all", f"GPUS=0;touch {INJECTED};echo"),
    ("all", f"PROFILE=x||touch {INJECTED}||x"),
    ("all", f"NETS=multi;touch {INJECTED}"),
    ("all", f"SUBMIT=best;touch {INJECTED}"),
    ("all", f"FINETUNE_ARGS=--lr 1;touch {INJECTED}"),
    ("all", f"JIGSAW_ARGS=$(shell touch {INJECTED})"),
    ("all", f"STACK_ARGS=`touch {INJECTED}`"),
    ("all", f"PYTHON=python3;touch {INJECTED}"),
    ("views", f"ID=x||touch {INJECTED}"),
    ("views", f"ID=$(shell touch {INJECTED})"),
    ("sync-down", f"RUN=x'||touch {INJECTED}||'"),
    ("sync-list", f"REMOTE=arc:x';touch {INJECTED};'"),
    ("sync-list", f"REMOTE=arc:x\ntouch {INJECTED}"),
])
def test_no_variable_can_run_a_command(goal, variable, work, demo_data):
    p = plain_make(goal, f"WORK={work}", f"DATA={demo_data}", *SMOKE, variable, timeout=120)
    assert p.returncode != 0, p.stdout[-2000:]
    assert "Traceback" not in p.stderr, p.stderr
    assert not (REPO / INJECTED).exists() and not (work / INJECTED).exists(), p.stdout[-2000:]


@pytest.mark.parametrize("goal,variable", [
    ("folds", "PY=.venv/bin/python ; touch INJECTED_BY_A_VARIABLE ; true"),
    ("folds", "DIR_VALID=/tmp/elsewhere"),
    ("folds", "VENV=/tmp/another-venv"),
    ("all", "LAUNCH=touch INJECTED_BY_A_VARIABLE"),
    ("all", "RAW=/tmp/other-raw"),
])
def test_makes_own_variables_are_no_settings(goal, variable, demo_data, tmp_path):
    """Set on the command line, or from the environment under make -e: refused before anything runs."""
    name = variable.split("=")[0]
    p = plain_make(goal, variable, f"WORK={tmp_path / 'work'}", f"DATA={demo_data}", timeout=60)
    assert p.returncode != 0 and f"{name} is make's own variable, not a setting" in p.stderr, p.stderr
    value = variable.split("=", 1)[1]
    p = plain_make("-e", goal, f"WORK={tmp_path / 'work'}", f"DATA={demo_data}", env={name: value}, timeout=60)
    assert p.returncode != 0 and f"{name} is make's own variable" in p.stderr and "make -e" in p.stderr, p.stderr
    assert not (tmp_path / "work").exists() and not (REPO / INJECTED).exists()
    assert not Path("/tmp/elsewhere").exists()


def test_a_bad_profile_or_choice_is_refused_before_anything_is_written(demo_data, tmp_path):
    for goal, variable in (("all", "PROFILE=bogus"), ("all", "SUBMIT=bogus"), ("all", "NETS=multi bogus"),
                           ("fold", "FOLD=3"), ("fold", "TASK=era"), ("all", "RESIZE=crop"),
                           ("setup", "INSTALLER=conda"), ("all", "EVAL=inline inline"),
                           ("all", "FOLD_TEST=yes no"), ("all", "FULL_ON_CPU=yes yes"), ("all", "EVAL=inline,process"),
                           ("test", "TEST_JOBS=auto 0")):
        p = plain_make(goal, variable, f"WORK={tmp_path / 'work'}", f"DATA={demo_data}")
        assert p.returncode != 0 and f"{variable}:" in p.stderr, p.stderr
        assert not (tmp_path / "work").exists()


def test_a_work_reached_through_a_link_or_a_tilde_or_a_dash_is_refused_before_anything_is_written(demo_data, tmp_path):
    """WORK inside DATA through a link, WORK=~/... (make does not expand ~, its shells would),
    WORK=-rf: each refused, naming it, and nothing written, in DATA or anywhere."""
    data = Path(shutil.copytree(demo_data, tmp_path / "raw"))
    before = sorted(p.name for p in data.iterdir())
    (tmp_path / "into").symlink_to(data)
    p = plain_make("folds", f"WORK={tmp_path / 'into' / 'work'}", f"DATA={data}")
    assert p.returncode != 0 and f"is inside DATA={data} (it resolves to {data / 'work'})" in p.stderr, p.stderr
    home = tmp_path / "home"
    (home / "d").mkdir(parents=True)
    (home / "d" / "raw").symlink_to(data)
    p = plain_make("folds", "WORK=~/d/raw/work", f"DATA={data}", env={"HOME": str(home)})
    assert p.returncode != 0 and "WORK=~/d/raw/work begins with ~, which make does not expand" in p.stderr, p.stderr
    assert sorted(p.name for p in data.iterdir()) == before and not (REPO / "~").exists()
    for dash in ("-rf", "--version"):
        p = plain_make("folds", f"WORK={dash}", f"DATA={data}")
        assert p.returncode != 0 and f"WORK={dash} begins with -" in p.stderr and "write ./" in p.stderr, p.stderr
    p = plain_make("folds", f"WORK={tmp_path}/w", "DATA=-x")
    assert p.returncode != 0 and "DATA=-x begins with -" in p.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "into", "raw"] and not (REPO / "-rf").exists()


def test_a_dry_run_lists_only_what_would_run(work, demo_data):
    """make -n all on a finished WORK lists no stage (a real make all runs none); with other
    FINETUNE_ARGS exactly the fine-tunes and what follows them; with changed photos the
    fingerprint check first. A dry run writes nothing."""
    names = lambda p: sorted(re.findall(r"\b(0\d_\w+\.(?:py|sh)|rawdata\.py \w+)", p.stdout))
    before = stamps(work)
    p = make_in(work, demo_data, "-n", "all")
    assert names(p) == [], p.stdout
    p = make_in(work, demo_data, "-n", "all", "FINETUNE_ARGS=--lr 0.002")
    assert names(p) == ["04_finetune.py"] * 4 + ["05_features.py"] * 4 + ["06_stack.py", "07_submit.py"], p.stdout
    data = Path(shutil.copytree(demo_data, work.parent / "changed"))
    photo = sorted((data / "photos").iterdir())[0]
    photo.write_bytes(photo.read_bytes() + b"\0")
    p = make_in(work, data, "-n", "all")
    assert names(p)[:2] == ["01_sgkfold.py", "02_hvr_augment.sh"] and "rawdata.py fingerprint" in names(p), p.stdout
    assert stamps(work) == before and make_in(work, demo_data, "all").stdout.count("python") == 0


def test_an_unchanged_requirements_txt_reinstalls_nothing(tmp_path):
    """A newer requirements.txt of the same content (a fresh clone's, a git checkout's) only
    refreshes the stamp; another content installs."""
    copy = tmp_path / "checkout"
    copy.mkdir()
    for name in ("Makefile", "make/checks.mk", "profiles.py", "requirements.txt", "setup_venv.py"):
        (copy / name).parent.mkdir(exist_ok=True)
        shutil.copy2(REPO / name, copy / name)
    (copy / ".venv").mkdir()
    shutil.copy2(REPO / "requirements.txt", copy / ".venv" / "requirements.txt")
    (copy / ".venv" / "sysdeps").write_text("Version: ImageMagick 6.9\n")
    shim = tmp_path / "python"          # the interpreter make builds .venv with: logs an install
    shim.write_text(f"#!/bin/sh\n[ \"$1\" = setup_venv.py ] && {{ echo install >> {tmp_path / 'log'}; exit 1; }}\n"
                    f"exec python3 \"$@\"\n")
    shim.chmod(0o755)
    old = time.time() - 3600          # the stamp older than requirements.txt, as in a fresh clone
    os.utime(copy / ".venv" / "requirements.txt", (old, old))
    os.utime(copy / "requirements.txt", (old + 60, old + 60))
    p = plain_make("setup", f"PYTHON={shim}", cwd=copy)
    assert p.returncode == 0 and not (tmp_path / "log").exists(), p.stdout + p.stderr
    assert (copy / ".venv" / "requirements.txt").stat().st_mtime > old + 60       # refreshed, so newer
    with open(copy / "requirements.txt", "a") as f:
        f.write("tomli==2.0.1\n")
    later = time.time() + 60          # file times are as coarse as the kernel's tick: set one clearly newer
    os.utime(copy / "requirements.txt", (later, later))
    p = plain_make("setup", f"PYTHON={shim}", cwd=copy)
    assert p.returncode != 0 and (tmp_path / "log").read_text() == "install\n"


# ---- remotes -----------------------------------------------------------------------------------------
def test_an_absolute_remote_path_stays_absolute_and_a_quote_in_it_is_text(demo_folds, tmp_path):
    work = shutil.copytree(demo_folds, tmp_path / "work", ignore=shutil.ignore_patterns(".lock"))
    archive = tmp_path / "Tom's runs"
    env = {"RCLONE_CONFIG": str(tmp_path / "rclone.conf"), "RCLONE_CONFIG_LOC_TYPE": "local"}
    (tmp_path / "rclone.conf").write_text("")
    p = plain_make("sync-up", f"REMOTE=loc:{archive}", "RUN=abs", f"WORK={work}", env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (archive / "runs" / "abs" / "01_sgkfold" / "DONE").exists()
    assert not (REPO / str(archive).lstrip("/")).exists() and not (REPO / "tmp").exists()
    p = plain_make("sync-list", f"REMOTE=loc:{archive}", env=env, timeout=120)
    assert p.returncode == 0 and "abs" in p.stdout, p.stdout + p.stderr
    unfinished = archive / "runs" / "unfinished" / "04_finetune" / "target_0"    # an upload cut short
    unfinished.mkdir(parents=True)
    (unfinished / "ckpt_e001.pt").write_bytes(b"half")
    p = plain_make("sync-down", f"REMOTE=loc:{archive}", "RUN=unfinished", f"WORK={tmp_path / 'down'}", env=env, timeout=120)
    assert p.returncode != 0 and "holds no finished stage" in p.stderr and "restored" not in p.stdout, p.stdout + p.stderr
