"""A newcomer's first commands: `make setup` and `make all` in a fresh clone, timed.

The repository (its committed HEAD) is cloned into a temporary directory, then, in the clone:
  setup      `make setup INSTALLER=...`: .venv built from nothing (uv, or pip alone), and the
             ImageMagick check (installed with apt-get where it is missing and we are root);
  all        `make all`: the whole pipeline on the generated demo data (the README's first command
             has both, since `make all` builds .venv itself).
As on a fresh machine, pip's and uv's caches start empty (their own, under the temporary
directory). Each is one line `fresh_<installer>_<step>: seconds s`; the clone is removed at the end.
`--requirements FILE` installs FILE instead of requirements.txt and `--no-all` stops after setup:
the script's own check in seconds (tests/test_bench.py), no figure of the product.

    python bench/fresh_clone.py                        # uv, as make setup does
    python bench/fresh_clone.py --installer pip        # pip alone, for comparison
"""
import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import benchlib



def timed(cmd, cwd, env, log):
    t0 = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {rc} after {seconds:.0f} s; its output:\n"
                         f"{Path(log).read_text()[-3000:]}")
    return seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--installer", choices=("uv", "pip"), default="uv")
    p.add_argument("--requirements", type=Path, default=None,
                   help="install this file instead of the clone's requirements.txt (the script's check)")
    p.add_argument("--no-all", action="store_true", help="stop after make setup")
    p.add_argument("--tmp", default=None, help="parent of the clone (default: the system's temp dir)")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in benchlib.MAKE_ENV_DROP}
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench_clone_") as tmp:
        clone = Path(tmp) / "clone"
        env.update(PIP_CACHE_DIR=f"{tmp}/pip-cache", UV_CACHE_DIR=f"{tmp}/uv-cache")
        subprocess.run(["git", "clone", "--quiet", str(benchlib.ROOT), str(clone)], check=True)
        if args.requirements:
            shutil.copy(args.requirements, clone / "requirements.txt")
        benchlib.note(f"a clone of {benchlib.ROOT} at "
                      f"{subprocess.run(['git', '-C', str(clone), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()}"
                      f", {os.cpu_count()} cores")
        steps = [("setup", ["make", "setup", f"INSTALLER={args.installer}"])]
        if not args.no_all:
            steps.append(("all", ["make", "all"]))
        for name, cmd in steps:
            seconds = timed(cmd, clone, env, Path(tmp) / f"{name}.log")
            benchlib.emit(f"fresh_{args.installer}_{name}", seconds, "s")


if __name__ == "__main__":
    main()
