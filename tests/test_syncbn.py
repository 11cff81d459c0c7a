"""bench/syncbn_check.py's dry run on the CPU, at toy size: torch's SyncBatchNorm function (over a
gloo group of one rank, with the script's stand-in CPU kernels for its CUDA-only ops) matches
F.batch_norm in fp32 and bf16, every line is a check or a figure, and the GPU-only count of host
syncs is said to need a GPU. A perturbed weight on the function's side must fail the check, so
that the comparison is known to compare."""
import math
import os
import re
import subprocess

import pytest
import torch

from conftest import REPO

PY = str(REPO / ".venv" / "bin" / "python")
TOY = ("--device", "cpu", "--batch", 4, "--size", 32, "--width", 8, "--warm", 1, "--steps", 1)
DTYPES = ("fp32", "bf16")
QUANTITIES = ("out", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var")
CHECK = re.compile(r"^check_(\w+): (ok|FAILED)$")
DIFF = re.compile(r"^(syncbn_\w+_max_abs_diff_\w+): (\S+) \(tolerance (\S+)\)$")
FIGURE = re.compile(r"^(\w+): (\S+) (images/s|x)$")


def run_check(*args):
    env = {**os.environ, "TORCH_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([PY, "bench/syncbn_check.py", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def parse(stdout):
    """({check: ok|FAILED}, {diff line: (value, tolerance)}, {figure: value}); every line one of them."""
    checks, diffs, figures = {}, {}, {}
    for line in stdout.splitlines():
        if m := CHECK.match(line):
            checks[m[1]] = m[2]
        elif m := DIFF.match(line):
            diffs[m[1]] = (float(m[2]), float(m[3]))
        elif m := FIGURE.match(line):
            figures[m[1]] = float(m[2])
        else:
            pytest.fail(f"neither a check nor a figure: {line!r}")
    for value in [*figures.values(), *(v for pair in diffs.values() for v in pair)]:
        assert math.isfinite(value), stdout
    return checks, diffs, figures


def test_dry_run_matches_batch_norm_and_times_both_networks():
    p = run_check(*TOY)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    checks, diffs, figures = parse(p.stdout)
    assert checks == {f"syncbn_{d}": "ok" for d in DTYPES}
    assert set(diffs) == {f"syncbn_{d}_max_abs_diff_{q}" for d in DTYPES for q in QUANTITIES}
    assert all(0 <= value <= tol and tol > 0 for value, tol in diffs.values()), diffs
    assert set(figures) == {"syncbn_train_images_per_s", "batchnorm_train_images_per_s", "syncbn_slowdown"}
    assert all(v > 0 for v in figures.values())
    assert "host syncs per step: needs a GPU" in p.stderr       # said, not counted
    assert "stand-in CPU kernels" in p.stderr                   # what the dry run could not exercise


def test_a_perturbed_function_fails_the_check():
    """The function's weight 5 % off: its output, input gradient and weight gradient differ from
    F.batch_norm's beyond tolerance in both dtypes, its bias gradient and running statistics do
    not, and the script exits 1."""
    p = run_check(*TOY, "--perturb", 0.05)
    assert p.returncode == 1, (p.stdout + p.stderr)[-4000:]
    checks, diffs, _ = parse(p.stdout)
    assert checks == {f"syncbn_{d}": "FAILED" for d in DTYPES}
    for d in DTYPES:
        got = {q: diffs[f"syncbn_{d}_max_abs_diff_{q}"] for q in QUANTITIES}
        assert {q for q, (value, tol) in got.items() if value > tol} == {"out", "grad_input", "grad_weight"}, (d, got)
    assert "FAILED: SyncBatchNorm's function differs from F.batch_norm in fp32, bf16" in p.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_is_refused_with_the_dry_run_named():
    p = run_check("--device", "cuda")
    assert p.returncode != 0 and "--device cpu is the dry run" in p.stderr, p.stderr[-2000:]
