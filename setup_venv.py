"""Install requirements.txt into .venv (make setup's recipe), with uv where it can, else pip.

pip unpacks the pinned CUDA torch and its libraries (6 GB installed) on one core, uv on all of
them: a fresh .venv took 133 s with pip and 70 s with uv on a 2-core machine (`make
bench-clone`, docs/benchmarks.md). uv reads its own settings, not pip's, so the package sources a machine gives pip (pip
config and PIP_* variables: indexes, find-links, a constraints file, a CA bundle) are passed on to
it, and it picks the best match across them, as pip does. Modules are compiled at install: where
PYTHONDONTWRITEBYTECODE is set, every process would otherwise recompile torch.

If uv cannot be installed or fails, pip installs the same file (what is already there is kept).
Only the standard library: this runs before the venv has anything in it.

    python3 setup_venv.py --venv .venv --requirements requirements.txt
    python3 setup_venv.py --venv .venv --requirements requirements.txt --installer pip
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

UV = "uv==0.13.9"     # the installer: not a dependency of the pipeline, so not in requirements.txt
# pip's settings that say where packages come from, as uv's options (each value may list several)
PIP_TO_UV = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
             "find-links": "--find-links", "constraint": "--constraint"}
CONFIG_LINE = re.compile(r"^[^.=\s]*\.([a-z-]+)=(.*)$")     # global.find-links='/opt/wheels'


def pip_sources(config_list):
    """uv's options and environment for the sources in `pip config list`'s output (files and
    PIP_* variables, as pip itself reads them): ([option, value, ...], {variable: value})."""
    options, env = [], {}
    for line in config_list.splitlines():
        m = CONFIG_LINE.match(line.strip())
        if not m:
            continue
        key, values = m[1], " ".join(shlex.split(m[2])).split()     # 'a b': two values to pip
        if key in PIP_TO_UV:
            for value in values:
                pair = [PIP_TO_UV[key], value]
                if not any(options[i:i + 2] == pair for i in range(0, len(options), 2)):
                    options += pair
        elif key == "cert" and values:
            env["SSL_CERT_FILE"] = values[0]
    return options, env


def run(cmd, env=None):
    print("+", " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], env=env).returncode == 0


def install_with_uv(python, requirements, uv):
    bin_dir = python.parent
    if not run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", uv]):
        return False
    config = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    options, env = pip_sources(config)
    env = dict(env, **os.environ)       # a variable already set wins
    return run([bin_dir / "uv", "pip", "install", "--quiet", "--python", python, "--compile-bytecode",
                "--index-strategy", "unsafe-best-match", *options, "-r", requirements], env=env)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", type=Path, required=True)
    p.add_argument("--requirements", type=Path, required=True)
    p.add_argument("--installer", choices=("uv", "pip"), default="uv",
                   help="uv (parallel; pip if it fails) or pip alone")
    p.add_argument("--uv", default=UV, help=f"the uv release pip installs into the venv first ({UV})")
    args = p.parse_args()
    python = args.venv / "bin" / "python"
    if not os.access(python, os.X_OK) and not run([sys.executable, "-m", "venv", args.venv]):
        sys.exit(f"setup_venv.py: could not create {args.venv} with {sys.executable} -m venv")
    if args.installer == "uv":
        if install_with_uv(python, args.requirements, args.uv):
            return
        print("setup_venv.py: uv did not install the requirements; pip installs them", flush=True)
    if not run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", args.requirements]):
        sys.exit(f"setup_venv.py: pip could not install {args.requirements} into {args.venv}")


if __name__ == "__main__":
    main()
