"""The environment: exact pins agree everywhere, `make help` lists every verb of the Makefile, and
`make test`'s workers share what they build once."""
import importlib.metadata
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, run_make

PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def canonical(name):
    """PEP 503 name normalisation: Pillow == pillow, scikit_learn == scikit-learn."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines():
    lines = (line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines())
    return [line for line in lines if line]


def pins(lines):
    out = {}
    for line in lines:
        m = PIN_RE.match(line)
        assert m, f"not an exact pin (name==version): {line!r}"
        assert canonical(m[1]) not in out, f"pinned twice: {m[1]}"
        out[canonical(m[1])] = m[2]
    return out


def environment_pip_lines():
    """The `- pip:` list of environment.yml, read without a YAML library (not in requirements)."""
    lines, inside, indent = [], False, None
    for raw in (REPO / "environment.yml").read_text().splitlines():
        text = raw.split("#")[0].rstrip()
        if not text.strip():
            continue
        depth = len(text) - len(text.lstrip())
        if re.match(r"^\s*-\s*pip:\s*$", text):
            inside, indent = True, depth
            continue
        if inside:
            if depth <= indent:
                break
            item = re.match(r"^\s*-\s*(.+)$", text)
            assert item, f"environment.yml: unexpected line in the pip list: {raw!r}"
            lines.append(item[1].strip().strip("'\""))
    assert lines, "environment.yml has no `- pip:` list"
    return lines


def test_every_requirement_is_an_exact_pin():
    reqs = requirement_lines()
    assert reqs, "requirements.txt is empty"
    pins(reqs)     # asserts each line


def test_environment_yml_pins_equal_requirements():
    req, env = pins(requirement_lines()), pins(environment_pip_lines())
    only_req = {k: v for k, v in req.items() if k not in env}
    only_env = {k: v for k, v in env.items() if k not in req}
    differ = {k: (req[k], env[k]) for k in req.keys() & env.keys() if req[k] != env[k]}
    assert not only_req and not only_env and not differ, (
        f"requirements.txt vs environment.yml: only in requirements {only_req}, only in "
        f"environment.yml {only_env}, different versions (req, env) {differ}")


def test_dockerfile_repeats_the_pins():
    dockerfile = REPO / "Dockerfile"
    if not dockerfile.exists():
        pytest.skip("no Dockerfile yet")
    req = pins(requirement_lines())
    found = {canonical(n): v for n, v in re.findall(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)",
                                                    dockerfile.read_text())}
    differ = {k: (req[k], v) for k, v in found.items() if k in req and req[k] != v}
    assert not differ, f"Dockerfile pins that disagree with requirements.txt (req, docker): {differ}"


def test_running_interpreter_has_the_pinned_versions():
    """A stale .venv (requirements.txt changed, venv not rebuilt) shows up here, not as odd numbers."""
    wrong = {}
    for name, version in pins(requirement_lines()).items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have is None or have.split("+")[0] != version:    # torch may say 2.x.y+cpu
            wrong[name] = (version, have)
    assert not wrong, f"installed versions differ from the pins (pinned, installed): {wrong}"


# ---- setup_venv.py -------------------------------------------------------------------------------
def test_uv_is_given_the_package_sources_pip_is_configured_with():
    import setup_venv
    config = "\n".join([
        "global.cert='/etc/ssl/certs/ca.crt'",
        "global.constraint='/etc/xdg/pip/constraints.txt'",
        "global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'",
        "global.find-links='/opt/wheels'",
        ":env:.find-links='/opt/wheels'",           # the same place twice: passed once
        ":env:.default-timeout='180'",              # not a source
        "user.index-url='https://mirror.example/simple'",
    ])
    options, env = setup_venv.pip_sources(config)
    assert options == ["--constraint", "/etc/xdg/pip/constraints.txt",
                       "--extra-index-url", "file:///opt/a/simple", "--extra-index-url", "file:///opt/b/simple",
                       "--find-links", "/opt/wheels", "--index-url", "https://mirror.example/simple"]
    assert env == {"SSL_CERT_FILE": "/etc/ssl/certs/ca.crt"}
    assert setup_venv.pip_sources("") == ([], {})


def test_setup_venv_falls_back_to_pip_when_uv_cannot_be_installed(tmp_path):
    """A release of uv that does not exist: pip installs the requirements, and the venv has them."""
    pin = next(line for line in requirement_lines() if line.startswith("tqdm=="))   # small, pure Python
    (tmp_path / "req.txt").write_text(pin + "\n")
    venv = tmp_path / "venv"
    p = subprocess.run([sys.executable, str(REPO / "setup_venv.py"), "--venv", str(venv),
                        "--requirements", str(tmp_path / "req.txt"), "--uv", "uv==0.0.0"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "uv did not install the requirements; pip installs them" in p.stdout, p.stdout
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import tqdm; print(tqdm.__version__)"],
                             capture_output=True, text=True)
    assert version.stdout.strip() == pin.split("==")[1], version.stderr


# ---- make help -----------------------------------------------------------------------------------
def make_database():
    """Make's own view of the rules (Makefile and every included .mk): `make -p -q help`."""
    p = run_make("-p", "-q", "help", work="work", data="data/raw", check=False)
    assert ".PHONY:" in p.stdout, f"no rule database from make -p:\n{p.stderr}"
    return p.stdout


def phony_verbs(db):
    """The .PHONY targets, minus pure markers (no prerequisites, no recipe: FORCE)."""
    phony = set()
    for line in db.splitlines():
        if line.startswith(".PHONY:"):
            phony |= set(line.split(":", 1)[1].split())
    verbs = set()
    for target in phony:
        rule = re.search(rf"^{re.escape(target)}:(.*)\n((?:.+\n)*)", db, re.M)  # to a blank line
        assert rule, f"{target} is .PHONY but has no rule"
        has_recipe = any(line.startswith("\t") for line in rule[2].splitlines())
        if rule[1].strip() or has_recipe:
            verbs.add(target)
    return verbs


def test_help_is_the_default_goal_and_lists_every_phony_target(tmp_path):
    db = make_database()
    verbs = phony_verbs(db)
    assert {"help", "all", "test", "clean"} <= verbs, verbs
    default = run_make(work=tmp_path / "work", data=tmp_path / "data")      # no goal
    listed = set(re.findall(r"^\s*make (\S+)\s+\S", default.stdout, re.M))
    missing = sorted(verbs - listed)
    assert not missing, f"`make help` lacks a line for .PHONY target(s) {missing}:\n{default.stdout}"
    helped = run_make("help", work=tmp_path / "work", data=tmp_path / "data")
    assert helped.stdout == default.stdout
    assert not (tmp_path / "work").exists(), "make help must not create WORK"


def test_every_documented_target_is_listed(tmp_path):
    """Targets with a `## ` comment in any included makefile, also those not declared .PHONY."""
    makefiles = [REPO / "Makefile"]
    for line in (REPO / "Makefile").read_text().splitlines():
        m = re.match(r"^-?include\s+(.+)$", line)
        if m:
            makefiles += [REPO / f for f in m[1].split() if (REPO / f).exists()]
    documented = {m[1] for f in makefiles
                  for m in re.finditer(r"^([^\s:#=%$]+)\s*:[^=].*?##\s", f.read_text(), re.M)}
    helped = run_make("help", work=tmp_path / "work", data=tmp_path / "data").stdout
    listed = set(re.findall(r"^\s*make (\S+)\s+\S", helped, re.M))
    assert documented and not documented - listed, (
        f"documented but not in `make help`: {sorted(documented - listed)}\n{helped}")


BUILD_ONCE = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import conftest

class Factory:                       # what built_once uses of pytest's tmp_path_factory
    def getbasetemp(self):
        return Path({worker_dir!r})

def build(d):
    with open({log!r}, "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    time.sleep(1)                    # long enough for the other worker to reach the lock
    (d / "made").write_text("x")
    return str(d / "made")

print(conftest.built_once(Factory(), "thing", build))
"""


def test_two_workers_build_a_shared_fixture_once(tmp_path):
    """`make test`'s xdist workers: two processes asking built_once for the same thing at once
    get the same result, and only one of them builds it."""
    log = tmp_path / "builds.log"
    procs = []
    for worker in ("gw0", "gw1"):
        worker_dir = tmp_path / f"popen-{worker}"
        worker_dir.mkdir()
        code = BUILD_ONCE.format(tests=str(REPO / "tests"), worker_dir=str(worker_dir), log=str(log))
        procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                      env=dict(os.environ, PYTEST_XDIST_WORKER=worker)))
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1] == str(tmp_path / "thing" / "made")
    assert len(log.read_text().split()) == 1, "built by both workers"
