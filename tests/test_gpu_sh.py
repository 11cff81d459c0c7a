"""bench/gpu.sh's dry run on the CPU (--cpu: the demo data, PROFILE=rehearsal): prep, then run,
every check passes and every figure the GPU run reports is there, so that the script a GPU
machine receives has run here first."""
import math
import os
import re
import subprocess

from conftest import REPO

PY = str(REPO / ".venv" / "bin" / "python")
CHECKS = ("throughput", "pipeline", "resume", "ddp")


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
    assert (tmp_path / "log").read_text().count("check_") == len(CHECKS)


def test_gpu_sh_without_prepared_data_says_what_to_run(tmp_path):
    p = subprocess.run(["bench/gpu.sh", "run", "--cpu", "--dir", tmp_path / "none", "--python", PY], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "run bench/gpu.sh prep --cpu first" in p.stderr
