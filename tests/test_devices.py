"""The machine a run asks for (devices.py, the Makefile's preflight, 04's evaluator placement):
GPUS on a machine whose CUDA cannot serve them stops make in seconds, naming the cause, and a
stage never trains on the CPU in their place; PROFILE=full without GPUS stops with a measured
estimate; an evaluator process that dies or stalls hands over to inline scoring; locks on a
filesystem without flock, and --compile without a compiler, say so."""
import ctypes
import errno
import fcntl
import json
import os
import re
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch

from conftest import REPO, Lines, plain_make

import common
import devices
import gpu_slots
import training

PY = str(REPO / ".venv" / "bin" / "python")
GOOD = dict(gpus=["0"], torch="2.14.1+cu130", torch_cuda="13.0", libcuda=True, driver="580.65.06",
            driver_cuda=13000, init=0, modes=["Default"], gpus_total=1)


def has_driver():
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


# -----------------------------------------------------------------------------
@pytest.mark.parametrize("facts,expect", [
    (dict(torch_cuda=None), "is built without CUDA"),
    (dict(libcuda=False), "no NVIDIA driver here (libcuda.so.1 cannot be loaded)"),
    (dict(driver="550.54.15", driver_cuda=12040),
     "driver 550.54.15 is too old: it supports CUDA 12.4, and torch 2.14.1+cu130 needs a driver for CUDA 13.0"),
    (dict(init=100, modes=[]), "GPU 0 is not visible (this machine shows 1 GPU(s))"),
    (dict(gpus=["0", "5"], gpus_total=4), "GPU 5 is not visible (this machine shows 4 GPU(s))"),
    (dict(modes=["Prohibited"]), "GPU 0 is in compute mode Prohibited"),
])
def test_each_cause_is_named_in_one_line(facts, expect):
    error, report = devices.diagnose({**GOOD, **facts})
    assert report is None and expect in error and "\n" not in error


def test_a_usable_gpu_reports_its_compute_mode_and_exclusive_ones_take_the_evaluator_inline(monkeypatch):
    error, report = devices.diagnose({**GOOD, "driver_cuda": 13020})    # a newer driver is fine
    assert error is None and "compute mode 0 Default" in report and "inline" not in report
    error, report = devices.diagnose({**GOOD, "gpus": ["0", "1"], "modes": ["Default", "Exclusive_Process"]})
    assert error is None and "GPU 1 takes one process at a time" in report
    cuda0 = torch.device("cuda", 0)
    monkeypatch.setattr(devices, "compute_modes", lambda: ["Exclusive_Process"])
    assert devices.evaluator_placement(cuda0, "auto") == (
        "inline", "the GPU is in compute mode Exclusive_Process: a second process cannot use it")
    assert devices.evaluator_placement(cuda0, "process")[0] == "process"
    monkeypatch.setattr(devices, "compute_modes", lambda: ["Default"])
    assert devices.evaluator_placement(cuda0, "auto")[0] == "process"
    assert devices.evaluator_placement(torch.device("cpu"), "auto")[0] == "inline"


@pytest.mark.skipif(has_driver(), reason="this machine has an NVIDIA driver: GPUS=0 may work here")
def test_make_all_with_gpus_and_no_driver_stops_in_seconds_writing_nothing(demo_data, tmp_path):
    work = tmp_path / "work"
    started = time.time()
    p = plain_make("all", "GPUS=0", f"WORK={work}", f"DATA={demo_data}")
    took = time.time() - started
    assert p.returncode != 0 and took < 20, (took, p.stderr)
    assert "GPUS=0: no NVIDIA driver here" in p.stderr
    assert sorted(f.name for f in work.iterdir()) == [".lock"]      # no stage started


@pytest.mark.skipif(has_driver(), reason="this machine has an NVIDIA driver")
def test_a_stage_asked_for_a_gpu_never_trains_on_the_cpu(smoke_run, tmp_path):
    work, _ = smoke_run
    p = subprocess.run([PY, "04_finetune.py", "--task", "target", "--fold", "0", "--folds", work / "01_sgkfold",
                        "--hvr", work / "02_hvr", "--jigsaw", work / "03_jigsaw", "--out", tmp_path / "runs",
                        "--profile", "smoke"], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, CUDA_VISIBLE_DEVICES="0"))
    assert p.returncode == 2 and "GPUS=0: no NVIDIA driver here" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "runs" / "target_0" / "loss.csv").exists()


@pytest.mark.parametrize("gpus", ["0;touch INJECTED;echo", "0 1", "`touch INJECTED`", "0|x", "0,1&&touch INJECTED"])
def test_gpus_cannot_run_a_command(demo_data, tmp_path, gpus):
    p = plain_make("-n", "all", f"GPUS={gpus}", f"WORK={tmp_path / 'work'}", f"DATA={demo_data}", timeout=60)
    p2 = plain_make("all", f"GPUS={gpus}", f"WORK={tmp_path / 'work'}", f"DATA={demo_data}", timeout=60)
    for q in (p, p2):
        assert q.returncode != 0 and "GPU ids are numbers or GPU-/MIG- UUIDs" in q.stderr, q.stderr
    assert not (REPO / "INJECTED").exists() and not (tmp_path / "INJECTED").exists()


def test_full_without_gpus_stops_before_training_with_a_measured_estimate(demo_data, tmp_path):
    work = tmp_path / "work"
    p = plain_make("all", "PROFILE=full", f"WORK={work}", f"DATA={demo_data}")
    assert p.returncode != 0
    est = re.search(r"PROFILE=full on this CPU: about ([0-9.]+) (days|hours|min) .* at the ([0-9.]+) images/s training",
                    p.stdout)
    assert est and float(est.group(1)) > 0 and float(est.group(3)) > 0, p.stdout
    assert "FULL_ON_CPU=yes" in p.stderr
    assert sorted(f.name for f in work.iterdir()) == [".lock"]
    p = plain_make("-n", "all", "PROFILE=full", "FULL_ON_CPU=yes", f"WORK={work}", f"DATA={demo_data}")
    assert p.returncode == 0 and "03_jigsaw.py" in p.stdout and "devices.py estimate" not in p.stdout


def test_the_cpu_profile_says_its_measured_estimate_and_goes_on(demo_data, tmp_path):
    """PROFILE=cpu's work pinned (BUDGET=off) takes as long as this machine makes it: the run says
    first what it will take here, then trains; under a budget it says the budget plans it."""
    p = plain_make("preflight", "PROFILE=cpu", "BUDGET=off", f"WORK={tmp_path / 'work'}", f"DATA={demo_data}")
    est = re.search(r"PROFILE=cpu on this CPU: about ([0-9.]+) (hours|min) .* at the ([0-9.]+) images/s training", p.stdout)
    assert p.returncode == 0 and est and float(est.group(3)) > 0, p.stdout + p.stderr
    p = plain_make("preflight", "PROFILE=cpu", f"WORK={tmp_path / 'work'}", f"DATA={demo_data}")
    assert p.returncode == 0 and "BUDGET=60 min for the whole run" in p.stdout and "estimate" not in p.stdout


def test_the_estimate_counts_what_the_profile_trains_on():
    rows = {"0": 2624, "1": 2624, "2": 2624, "all": 3937}
    images = devices.profile_images("full", 9856, rows)
    assert images["03"][0] == 5 * 9856 * 8 * 8               # holdout_trains: every photo
    assert images["04"][0] == 4 * 10 * 8 * sum(rows.values())
    assert images["05"][1] == 4 * 8 * 4 * 9856
    assert images["04"][1] == 4 * 8 * 10 * (3 * (3937 - 2624) + 1024)      # held-out sides, 8 views each epoch
    cpu = devices.profile_images("cpu", 9856, rows, nets=1, seeds=2)
    assert cpu["03"][0] == 0 and cpu["05"][1] == 2 * 8 * (3 * 3937 + 9856)    # no fold test side


# -----------------------------------------------------------------------------
def test_plain_make_takes_the_work_lock(demo_data, tmp_path):
    """`make folds` typed as is (no --no-print-directory, which once hid a misread MAKEFLAGS)."""
    work = tmp_path / "work"
    work.mkdir()
    with open(work / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        p = plain_make("folds", f"WORK={work}", f"DATA={demo_data}", timeout=60)
    assert p.returncode != 0 and "another make is running on WORK" in p.stderr, p.stderr
    assert not (work / "01_sgkfold").exists()


def test_a_filesystem_without_flock_is_named(demo_data, tmp_path, monkeypatch):
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "flock").write_text("#!/bin/sh\necho 'flock: failed to get lock: No locks available' >&2\nexit 1\n")
    (shim / "flock").chmod(0o755)
    p = plain_make("folds", f"WORK={tmp_path / 'work'}", f"DATA={demo_data}",
                   env={"PATH": f"{shim}:{os.environ['PATH']}"}, timeout=60)
    kind = common.filesystem_of(tmp_path)
    assert p.returncode != 0 and f"is on a filesystem ({kind}) that cannot lock files" in p.stderr, p.stderr

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with open(tmp_path / "x.lock", "w") as f, pytest.raises(SystemExit):
        common.lock(f, tmp_path / "x.lock")


# -----------------------------------------------------------------------------
def evaluated_run(work, out, *extra):
    """04 (task target, fold 0, smoke) with its evaluator as a process: (Popen, evaluator pid)."""
    cmd = [PY, "04_finetune.py", "--task", "target", "--fold", "0", "--folds", work / "01_sgkfold",
           "--hvr", work / "02_hvr", "--jigsaw", work / "03_jigsaw", "--out", out, "--profile", "smoke",
           "--eval", "process", *extra]
    proc = subprocess.Popen(list(map(str, cmd)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, TORCH_THREADS="1", CUDA_VISIBLE_DEVICES=""))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"evaluator: a process of its own \(pid (\d+)\)", line)
        if m:
            return proc, int(m.group(1)), lines
    pytest.fail("no evaluator process started:\n" + "".join(lines))


def finished(proc, lines, run):
    out = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    assert (run / "DONE").exists() and list(pd.read_csv(run / "eval.csv")["epoch"]) == [1, 2]
    return out, json.loads((run / "provenance.json").read_text())["config"]["evaluator"]


def test_an_evaluator_process_that_dies_hands_over_to_inline_scoring(smoke_run, tmp_path):
    work, _ = smoke_run
    proc, pid, lines = evaluated_run(work, tmp_path / "runs")
    os.kill(pid, signal.SIGKILL)
    out, story = finished(proc, lines, tmp_path / "runs" / "target_0")
    assert "the evaluator process was killed by signal 9: the held-out side is scored inline" in out
    assert story.startswith("process, then inline: the evaluator process was killed by signal 9")


def test_an_evaluator_process_that_stalls_is_stopped_and_its_epochs_scored_inline(smoke_run, tmp_path):
    work, _ = smoke_run
    proc, pid, lines = evaluated_run(work, tmp_path / "runs", "--eval-stall", "3")
    os.kill(pid, signal.SIGSTOP)
    out, story = finished(proc, lines, tmp_path / "runs" / "target_0")
    assert story == "process, then inline: the evaluator process scored no epoch for 3s and was stopped", out
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_an_evaluator_process_is_refused_where_old_checkpoints_are_deleted(smoke_run, tmp_path):
    work, _ = smoke_run
    p = subprocess.run([PY, "04_finetune.py", "--task", "target", "--fold", "0", "--folds", work / "01_sgkfold",
                        "--hvr", work / "02_hvr", "--jigsaw", work / "03_jigsaw", "--out", tmp_path,
                        "--profile", "cpu", "--eval", "process"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert p.returncode == 2 and "keeps the last one only; use --eval inline" in p.stderr, p.stderr[-2000:]


def test_compile_without_a_compiler_is_refused_with_a_message(smoke_run, tmp_path, monkeypatch):
    work, _ = smoke_run
    p = subprocess.run([PY, "03_jigsaw.py", "--hvr", work / "02_hvr", "--out", tmp_path / "jig", "--profile", "smoke",
                        "--compile"], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PATH=str(tmp_path / "nothing"), CUDA_VISIBLE_DEVICES=""))
    assert p.returncode == 2, p.stderr[-2000:]
    assert "--compile: torch.compile builds its kernels with a C++ compiler" in p.stderr
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert training.compile_needs(torch.device("cuda", 0))[0].startswith("a C compiler")


# -----------------------------------------------------------------------------
# A cluster's GPUs: a preset CUDA_VISIBLE_DEVICES composed, nvidia-smi's order, cuInit's errors
# named, MIG slices one per process, slot locks shared by every WORK on the host.
FAKE_LIBCUDA = r"""
#include <stdlib.h>
int cuInit(unsigned flags) { const char *e = getenv("FAKE_CUINIT"); return e ? atoi(e) : 0; }
int cuDriverGetVersion(int *v) { *v = 13000; return 0; }
int cuDeviceGetCount(int *n) { *n = 1; return 0; }
int cuDeviceGet(int *d, int i) { *d = i; return 0; }
int cuDeviceGetAttribute(int *v, int attr, int d) { *v = 0; return 0; }
"""


@pytest.fixture(scope="module")
def fake_driver(tmp_path_factory):
    """A libcuda.so.1 whose cuInit returns $FAKE_CUINIT: the driver's failures, on any machine."""
    where = tmp_path_factory.mktemp("fake_driver")
    (where / "fake.c").write_text(FAKE_LIBCUDA)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", where / "libcuda.so.1", where / "fake.c"], check=True)
    return where


@pytest.mark.parametrize("code,remedy", [
    (802, "Fabric Manager must run (systemctl start nvidia-fabricmanager"),
    (803, "forward-compatibility library (cuda-compat's libcuda) does not match the kernel driver"),
    (804, "forward compatibility (cuda-compat) is not supported on this GPU"),
    (999, "sudo modprobe nvidia_uvm"),
    (34, "is the CUDA toolkit's stub"),
])
def test_each_cuinit_error_is_named_with_its_remedy_through_make(fake_driver, demo_data, tmp_path, code, remedy):
    p = plain_make("preflight", "GPUS=0", f"WORK={tmp_path / 'work'}", f"DATA={demo_data}", timeout=120,
                   env={"LD_LIBRARY_PATH": str(fake_driver), "FAKE_CUINIT": str(code)})
    assert p.returncode != 0 and f"GPUS=0: CUDA cannot start (cuInit error {code}): " in p.stderr, p.stderr
    assert remedy in p.stderr and len(p.stderr.splitlines()) == 2       # one line, and make's
    assert "not visible" not in p.stderr


def test_several_mig_slices_are_checked_one_per_process_and_03_trains_on_the_first(fake_driver, demo_data, tmp_path):
    """CUDA shows a process one MIG slice: each id is checked in a process of its own (here each
    reports its own cuInit failure), 03 runs as one process on the first slice, every fine-tune
    takes one slice, and RANKS=2 over slices is refused with the reason."""
    migs = "MIG-4b0c1c0e-aaaa-5f2e-9c1e-000000000001,MIG-4b0c1c0e-aaaa-5f2e-9c1e-000000000002"
    p = plain_make("preflight", f"GPUS={migs}", f"WORK={tmp_path / 'work'}", f"DATA={demo_data}", timeout=120,
                   env={"LD_LIBRARY_PATH": str(fake_driver), "FAKE_CUINIT": "802"})
    assert p.returncode != 0
    for mig in migs.split(","):
        assert f"GPUS={mig}: CUDA cannot start (cuInit error 802)" in p.stderr, p.stderr
    p = plain_make("-n", "all", f"GPUS={migs}", "PROFILE=full", f"WORK={tmp_path / 'work'}", f"DATA={demo_data}")
    assert p.returncode == 0, p.stderr
    first = migs.split(",")[0]
    assert f"CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={first} .venv/bin/python 03_jigsaw.py" in p.stdout
    assert "torchrun" not in p.stdout and p.stdout.count(f"on-gpu --gpus {migs} --locks /tmp/atma11-gpu-locks -- .venv/bin/python 04_finetune.py") == 16
    p = plain_make("-n", "all", f"GPUS={migs}", "RANKS=2", f"WORK={tmp_path / 'work'}", f"DATA={demo_data}")
    assert p.returncode != 0 and "RANKS=2 with MIG slices in GPUS" in p.stderr


@pytest.mark.parametrize("preset,gpus,expect", [
    (None, ["0", "1"], None),
    ("4,5,6,7", ["4", "6"], None),
    ("GPU-aa,GPU-bb", ["GPU-bb"], None),
    ("4,5,6,7", ["0", "1", "2", "3"], "names GPU 0,1,2,3, outside the GPUs this job was granted "
                                      "(CUDA_VISIBLE_DEVICES=4,5,6,7, set before make)"),
    ("GPU-aa", ["0"], "names GPU 0, outside the GPUs this job was granted"),
    ("", ["0"], "grants this job no GPU"),
    ("NoDevFiles", ["0"], "grants this job no GPU"),
])
def test_gpus_must_lie_within_a_preset_cuda_visible_devices(preset, gpus, expect):
    reason = devices.outside_grant(gpus, preset)
    assert (reason is None) if expect is None else (expect in reason), reason


def test_a_job_granted_other_gpus_is_refused_before_any_stage_and_an_empty_gpus_says_it_uses_the_cpu(demo_data, tmp_path):
    work = tmp_path / "work"
    p = plain_make("all", "GPUS=0,1", f"WORK={work}", f"DATA={demo_data}", env={"CUDA_VISIBLE_DEVICES": "4,5"})
    assert p.returncode != 0 and "GPUS=0,1 names GPU 0,1, outside the GPUs this job was granted " \
                                 "(CUDA_VISIBLE_DEVICES=4,5" in p.stderr, p.stderr
    assert sorted(f.name for f in work.iterdir()) == [".lock"]
    p = plain_make("preflight", "PROFILE=smoke", f"WORK={work}", f"DATA={demo_data}", env={"CUDA_VISIBLE_DEVICES": "4,5"})
    assert p.returncode == 0 and "GPUS is empty, so this run uses the CPU (PROFILE=smoke), though " \
                                 "CUDA_VISIBLE_DEVICES=4,5 (set before make) grants GPUs: to train on them, add GPUS=4,5" in p.stderr
    p = plain_make("preflight", "PROFILE=smoke", f"WORK={work}", f"DATA={demo_data}", env={"CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 0 and "GPUS is empty" not in p.stderr


def test_every_gpu_command_numbers_gpus_as_nvidia_smi_does(demo_data, tmp_path, fake_driver):
    """CUDA_DEVICE_ORDER=PCI_BUS_ID in 03's command line and in every run on-gpu starts, and in
    the driver check."""
    p = plain_make("-n", "all", "GPUS=0,1", f"WORK={tmp_path}", f"DATA={demo_data}")
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0,1 .venv/bin/torchrun" in p.stdout, p.stdout
    out = subprocess.run([PY, "devices.py", "on-gpu", "--gpus", "1", "--locks", tmp_path / "locks", "--", "sh", "-c",
                          "echo $CUDA_DEVICE_ORDER $CUDA_VISIBLE_DEVICES"], cwd=REPO, capture_output=True,
                         text=True, env={k: v for k, v in os.environ.items() if k != "CUDA_DEVICE_ORDER"})
    assert out.stdout.splitlines()[-1] == "PCI_BUS_ID 1"
    probe = "import devices, os; f = devices.cuda_facts(['0']); print(os.environ['CUDA_DEVICE_ORDER'], f['init'])"
    out = subprocess.run([PY, "-c", probe], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, LD_LIBRARY_PATH=str(fake_driver), FAKE_CUINIT="0"))
    assert out.stdout.split() == ["PCI_BUS_ID", "0"], out.stderr


def test_gpu_slot_locks_are_per_host_and_take_any_id(demo_data, tmp_path):
    """Two WORKs name the same lock folder (make's GPU_LOCKS), so a GPU one holds is busy for the
    other; an old-style MIG id (slashes) is one plain lock file."""
    for work in ("w1", "w2"):
        p = plain_make("-n", "fold", "GPUS=0", f"WORK={tmp_path / work}", f"DATA={demo_data}")
        assert "on-gpu --gpus 0 --locks /tmp/atma11-gpu-locks --" in p.stdout, p.stdout
    p = plain_make("-n", "fold", "GPUS=0", f"GPU_LOCKS={tmp_path / 'locks'}", f"WORK={tmp_path}/w1", f"DATA={demo_data}")
    assert f"--locks {tmp_path / 'locks'} --" in p.stdout
    p = plain_make("-n", "fold", "GPUS=0", "GPU_LOCKS=locks", f"WORK={tmp_path}/w1", f"DATA={demo_data}")
    assert p.returncode != 0 and "GPU_LOCKS=locks: an absolute path" in p.stderr
    mig = "MIG-GPU-4b0c1c0e-aaaa-5f2e-9c1e-000000000001/1/0"
    locks = tmp_path / "shared" / "locks"
    held = subprocess.Popen([PY, "devices.py", "on-gpu", "--gpus", mig, "--locks", locks, "--", "sleep", "30"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        Lines(held.stdout).wait_for(f"[gpu {mig}] sleep 30")           # the slot is taken: the command runs
        assert [f.name for f in locks.iterdir()] == ["gpuMIG-GPU-4b0c1c0e-aaaa-5f2e-9c1e-000000000001_1_0.lock"]
        assert locks.stat().st_mode & 0o7777 == 0o1777                 # every user's runs can lock there
        second = subprocess.Popen([PY, "devices.py", "on-gpu", "--gpus", mig, "--locks", locks, "--", "true"],
                                  cwd=REPO, stdout=subprocess.PIPE, text=True)
        said = Lines(second.stdout)
        said.wait_for("is held by another run")
        assert second.poll() is None                                   # waits: the GPU is held
    finally:
        os.killpg(held.pid, signal.SIGKILL)     # the command too: it holds the slot as long as it lives
        held.wait()
    assert second.wait(timeout=30) == 0 and said.wait_for(f"[gpu {mig}] true")


def test_a_gpu_index_and_its_uuid_share_one_slot():
    uuids = ["GPU-11111111-aaaa", "GPU-22222222-bbbb"]
    assert gpu_slots.slot_name("1", uuids) == gpu_slots.slot_name("GPU-22222222-bbbb") != gpu_slots.slot_name("0", uuids)
    assert gpu_slots.slot_name("3", uuids) == "gpu3.lock"          # beyond what NVML lists: the id itself
