"""bench/gpu.sh's dry run on the CPU (--cpu: the demo data, PROFILE=rehearsal): prep, then run,
every check passes and every figure the GPU run reports is there, so that the script a GPU
machine receives has run here first."""
import math
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import REPO

PY = str(REPO / ".venv" / "bin" / "python")
CHECKS = ("throughput", "syncbn", "pipeline", "resume", "ddp")


def test_gpu_sh_dry_run_passes_every_check_and_projects_the_profile(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "MFLAGS"}
    env["TORCH_THREADS"] = "1"
    where = tmp_path / "gpu"
    prep = subprocess.run(["bench/gpu.sh", "prep", "--cpu", "--dir", where, "--python", PY], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=300)
    assert prep.returncode == 0, prep.stderr[-3000:]
    run = subprocess.run(["bench/gpu.sh", "run", "--cpu", "--dir", where, "--python", PY, "--log", tmp_path / "log"],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    checks = dict(re.findall(r"^check_(\w+): (\w+)$", run.stdout, re.M))
    assert checks == {c: "ok" for c in CHECKS}, run.stdout
    figures = dict(re.findall(r"^(gpu_sh_cpu_\w+): ([0-9.e+-]+) (?:images/s|s|min)$", run.stdout, re.M))
    for name in ("resnet34_32px_train_bf16", "resnet34_32px_infer_fp32", "02_hvr_wall", "jigsaw_rate",
                 "finetune_rate", "projected_1gpu_rehearsal_profile", "projected_4gpu_rehearsal_profile"):
        assert math.isfinite(float(figures[f"gpu_sh_cpu_{name}"])) and float(figures[f"gpu_sh_cpu_{name}"]) > 0, name
    assert float(figures["gpu_sh_cpu_projected_4gpu_rehearsal_profile"]) < \
        float(figures["gpu_sh_cpu_projected_1gpu_rehearsal_profile"])
    assert len(re.findall(r"^check_", (tmp_path / "log").read_text(), re.M)) == len(CHECKS)
    for dtype in ("fp32", "bf16"):      # SyncBatchNorm's function against F.batch_norm, its own verdicts
        assert f"gpu_sh_cpu_syncbn_check_{dtype}: ok" in run.stdout
    assert re.search(r"^gpu_sh_cpu_torch: 2\.\d+\.\d+\S* CUDA ", run.stdout, re.M)
    assert re.search(r"^gpu_sh_cpu_ddp_efficiency_assumed: 0\.8 x$", run.stdout, re.M)


def test_gpu_sh_stops_at_its_hard_limit(tmp_path):
    """A run that hangs (here: any run, given 3 s) is stopped whole at HARD_S, and says so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "MFLAGS"}
    where = tmp_path / "gpu"
    (where / "work" / "01_sgkfold").mkdir(parents=True)
    (where / "work" / "01_sgkfold" / "DONE").touch()
    (where / "raw" / "photos").mkdir(parents=True)
    started = time.time()
    p = subprocess.run(["bench/gpu.sh", "run", "--cpu", "--dir", where, "--python", PY, "--log", tmp_path / "log"],
                       cwd=REPO, capture_output=True, text=True, env={**env, "HARD_S": "3"}, timeout=120)
    assert p.returncode == 124 and time.time() - started < 30, (p.returncode, p.stderr[-2000:])
    assert "stopped at its hard limit of 3s (HARD_S)" in p.stderr
    assert "stopped at its hard limit" in (tmp_path / "log").read_text()


def test_gpu_sh_without_prepared_data_says_what_to_run(tmp_path):
    p = subprocess.run(["bench/gpu.sh", "run", "--cpu", "--dir", tmp_path / "none", "--python", PY], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "run bench/gpu.sh prep --cpu first" in p.stderr


@pytest.mark.parametrize("data", ["demo_data", "real_data"])
def test_prep_for_the_gpu_machine_runs_here_without_a_gpu(request, tmp_path, data):
    """prep (PROFILE=full, no --cpu) on a GPU-less machine: the full profile's stop before
    training is no stop for validate and folds, which train nothing."""
    raw = request.getfixturevalue(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "MFLAGS"}
    where = tmp_path / "gpu"
    p = subprocess.run(["bench/gpu.sh", "prep", "--dir", where, "--data", raw, "--python", PY], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "prep: done" in p.stdout and "devices.py estimate" not in p.stderr
    assert (where / "work" / "01_sgkfold" / "DONE").exists() and (where / "work" / "00_validate" / "DONE").exists()
    assert sorted(f.name for f in (where / "raw" / "photos").iterdir()) == sorted(f.name for f in (raw / "photos").iterdir())
    assert sorted(f.name for f in (where / "work").iterdir()) == ["00_validate", "01_sgkfold"]
    capped = subprocess.run(["bench/gpu.sh", "prep", "--dir", where, "--data", raw, "--python", PY, "--max-mib", "1"],
                            cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert capped.returncode == 1 and "over the 1 MiB the working tree and" in capped.stderr, capped.stderr


def scaling_commands():
    """The command lines of docs/scaling.md's code blocks (continuations joined), in order."""
    text = (REPO / "docs" / "scaling.md").read_text().replace("\\\n", " ")
    blocks = re.findall(r"^(?:    .*\n|\n)+", text, re.M)
    return [" ".join(l.split()) for b in blocks for l in b.splitlines()
            if re.match(r"\s*(make|srun|\.venv/bin/torchrun) ", l)]


def test_every_command_of_the_scaling_page_runs(demo_data, tmp_path):
    """Each make line of docs/scaling.md as `make -n` (hvr for real: PROFILE=full on a CPU), each
    torchrun line for real at toy size (one node, one process, a one-view epoch), with the
    page's placeholders filled in for this machine."""
    work = tmp_path / "atma11-work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "MFLAGS"}
    env.update(CUDA_VISIBLE_DEVICES="0,1", SLURM_NNODES="1", SLURM_JOB_ID="4242", W=str(work), TORCH_THREADS="1")
    commands = scaling_commands()
    assert sum(c.startswith("make hvr") for c in commands) == 2 and sum("torchrun" in c for c in commands) == 2
    for command in commands:
        line = (command.replace("/shared/atmacup11", str(demo_data)).replace("/shared/atma11-work", str(work))
                .replace("$W", str(work)).replace("WORK=work-ddp-check", f"WORK={tmp_path / 'ddp'}").replace('"$head:29500"', "127.0.0.1:29511").replace("HOST:29500", "127.0.0.1:29511")
                .replace("--nnodes N", "--nnodes 1").replace("--nproc_per_node G", "--nproc_per_node 1")
                .replace("--nproc_per_node 8", "--nproc_per_node 1").removeprefix("srun "))
        if line.startswith("make hvr"):
            shell = line
        elif line.startswith("make"):
            shell = line.replace("make ", "make -n ", 1)
        else:
            shell = line + " --epochs 1 --views 1 --perms 1 --width 8 --holdout 16"
            shutil.rmtree(work / "03_jigsaw", ignore_errors=True)
        on_cpu = {"CUDA_VISIBLE_DEVICES": ""} if "torchrun" in line else {}      # no GPU here
        p = subprocess.run(["bash", "-c", shell], cwd=REPO, capture_output=True, text=True, env={**env, **on_cpu},
                           timeout=600)
        assert p.returncode == 0, (shell, p.stderr[-3000:])
        if "torchrun" in line:
            assert (work / "03_jigsaw" / "DONE").exists(), shell
        if line.startswith("make jigsaw"):
            assert "CUDA_VISIBLE_DEVICES=0,1,2,3 .venv/bin/torchrun --standalone --nproc_per_node=4 03_jigsaw.py" \
                in p.stdout and "--epochs 1" in p.stdout, p.stdout
        if line.startswith("make all"):
            assert "devices.py check --gpus 0,1" in p.stdout and "04_finetune.py" in p.stdout
    assert (work / "02_hvr" / "DONE").exists()
