"""Shared fixtures: the repository, a `make` that runs the real Makefile, small generated raw data,
and the real data copy when it is present.

Tests drive stages through `make <target>` (never `make all`, which grows to train networks), each
with its own temporary WORK, so they exercise exactly what a user runs:

    def test_x(make, demo_data, tmp_path):
        p = make("folds", work=tmp_path / "work", data=demo_data)
        assert (tmp_path / "work/01_sgkfold/DONE").exists()
"""
import fcntl
import importlib.util
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))           # `import common` in tests, as the stage scripts do
DEMO_SIZE = dict(train=128, test=48)   # 96 train rows cannot be cut to --align 64 train sides
REAL_DATA_ENV = "ATMA11_DATA"           # where the real competition files are, if not beside us
# Make variables a user may have exported; tests pin what they need and never inherit the rest.
MAKE_ENV_DROP = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS",
                 "DATA", "WORK", "GPUS", "PROFILE", "FOLD", "TASK")
# `make test` runs the files over pytest-xdist workers, one per core: each worker's torch (in its
# own process and in every stage it starts) gets one thread, and so does OpenMP (LightGBM,
# scikit-learn, OpenBLAS), so that two workers' threads never spin against each other on the same
# cores (OpenMP's waiting threads spin: two 06 runs at once take several times the CPU with two
# threads each than with one).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["TORCH_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"


def run_make(*args, work, data, check=True, env=None, timeout=600, jobs=1, **variables):
    """Run `make -C REPO ARGS WORK=work DATA=data [VAR=value ...]`; return the CompletedProcess.

    Output is captured (text). With check=True a non-zero exit fails the test and shows both
    streams. `env` adds to a clean copy of os.environ (no inherited MAKEFLAGS or Make variables).
    jobs > 1: Make's -j, each job's output kept together (what `GPUS=0,1` does on GPUs), and
    one torch thread per job: on two cores the smoke pipelines' many short torch processes (each
    ~5 s of imports) overlap, and two jobs of two threads would spin against each other (the
    smoke pipeline here: 148 s at -j2 with one thread each, 196 s with two).
    """
    full_env = {k: v for k, v in os.environ.items() if k not in MAKE_ENV_DROP}
    if jobs > 1:
        full_env["TORCH_THREADS"] = "1"
    full_env.update(env or {})
    parallel = [f"-j{jobs}", "--output-sync=target"] if jobs > 1 else []
    cmd = ["make", "-C", str(REPO), "--no-print-directory", *parallel, *map(str, args),
           f"WORK={work}", f"DATA={data}", *(f"{k}={v}" for k, v in variables.items())]
    p = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and p.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {p.returncode}\n--- stdout\n{p.stdout}\n"
                    f"--- stderr\n{p.stderr}", pytrace=False)
    return p


def plain_make(*args, env=None, timeout=300, cwd=REPO):
    """`make ARGS` as a user types it in the checkout (cwd): no -C, no --no-print-directory (which
    once hid a misread MAKEFLAGS), a clean environment plus `env`."""
    full = {k: v for k, v in os.environ.items() if k not in MAKE_ENV_DROP}
    full.update(env or {})
    return subprocess.run(["make", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=full, timeout=timeout)


def kill_make(target, work, data, ready, *, max_delay=0.0, seed=0, timeout=300, env=None, **variables):
    """Start `make target` (clean environment, as run_make, plus `env`), wait until ready() holds
    and then a random 0..max_delay seconds more, kill -9 its whole process group (make, python,
    the evaluator, convert); return whether it was still running when killed."""
    env = {**{k: v for k, v in os.environ.items() if k not in MAKE_ENV_DROP}, **(env or {})}
    cmd = ["make", "-C", str(REPO), "--no-print-directory", target, f"WORK={work}", f"DATA={data}",
           *(f"{k}={v}" for k, v in variables.items())]
    proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0, max_delay))
    alive = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return alive


class Lines:
    """A process's text output (its stdout pipe), read by a thread as it comes, so a test waits
    for what the process says instead of sleeping: wait_for(text) returns the first line, after
    the lines already taken, that holds `text`."""

    def __init__(self, stream):
        self.queue, self.seen = queue.Queue(), []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in iter(stream.readline, ""):
            self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, text, timeout=120):
        deadline = time.time() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(deadline - time.time(), 0.01))
            except queue.Empty:
                pytest.fail(f"no line with {text!r} in {timeout}s; read:\n" + "".join(self.seen), pytrace=False)
            if line is None:
                self.queue.put(None)
                pytest.fail(f"the output ended without a line with {text!r}:\n" + "".join(self.seen), pytrace=False)
            self.seen.append(line)
            if text in line:
                return line


def load_script(filename):
    """Import a stage script (01_sgkfold.py is no valid module name) without running its main()."""
    spec = importlib.util.spec_from_file_location(Path(filename).stem.lstrip("0123456789_"),
                                                  REPO / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module



def build_store(photos, ids, out, size, mode="stretch"):
    """Run the real 02_hvr_augment.sh on `ids` of the photos directory into out/; returns out.
    The id list carries no photo sizes: 02 takes each photo's size from its own decode."""
    ids_csv = out.parent / f"ids_{out.name}.csv"
    ids_csv.write_text("object_id,width,height,mode\n" + "".join(f"{i},0,0,RGB\n" for i in ids))
    subprocess.run([str(REPO / "02_hvr_augment.sh"), "--photos", str(photos), "--ids", str(ids_csv),
                    "--out", str(out), "--size", str(size), "--mode", mode, "--python",
                    str(REPO / ".venv" / "bin" / "python")],
                   check=True, capture_output=True, cwd=REPO, timeout=120)
    return out

def generate_demo(out, **options):
    """Run 00_demo_data.py --out OUT [--train N --test N --seed S ...]; return OUT. Without
    options: the script's defaults, i.e. what `make demo` makes."""
    flags = [x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    subprocess.run([sys.executable, str(REPO / "00_demo_data.py"), "--out", str(out), *flags],
                   check=True, capture_output=True, text=True, timeout=300)
    return Path(out)


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture(scope="session")
def make():
    """The `run_make` helper: make(*targets, work=..., data=..., check=True, **MAKE_VARS)."""
    return run_make


def built_once(tmp_path_factory, name, build):
    """build(directory) run once per test session, then its JSON-able result returned to every
    caller: under pytest-xdist the first worker to ask builds it in the session's shared temporary
    directory while the others wait on its lock, then all read the same files (a session fixture
    would be built by each worker, and a WORK built beside other raw-data files than its own
    would look stale to Make). A build that failed (no result.json) is redone by the next caller."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if XDIST_WORKER else root
    where, result = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir()
            result.write_text(json.dumps(build(where)))
        return json.loads(result.read_text())


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small generated raw-data directory (session-wide; treat as read-only, copy to modify)."""
    return Path(built_once(tmp_path_factory, "demo",
                           lambda d: str(generate_demo(d / "raw", **DEMO_SIZE))))


@pytest.fixture(scope="session")
def demo_folds(demo_data, tmp_path_factory):
    """A WORK in which `make folds` ran on demo_data (session-wide; read-only: copy it to extend)."""
    def build(d):
        run_make("folds", work=d / "work", data=demo_data, env={"PYTHONHASHSEED": "1"})
        return str(d / "work")
    return Path(built_once(tmp_path_factory, "demo_folds", build))


@pytest.fixture
def demo_copy(demo_data, tmp_path):
    """A private, writable copy of the demo raw data, for tests that corrupt or edit it."""
    return Path(shutil.copytree(demo_data, tmp_path / "data"))


@pytest.fixture(scope="session")
def real_data():
    """The real competition files: $ATMA11_DATA, else ../shared/atmacup11 beside the checkout."""
    path = Path(os.environ.get(REAL_DATA_ENV) or REPO.parent / "shared" / "atmacup11")
    if not (path / "train.csv").is_file():
        pytest.skip(f"real data absent: no train.csv in {path} (set {REAL_DATA_ENV}=DIR to the "
                    f"competition files to run this test)")
    return path


@pytest.fixture(scope="session")
def smoke_run(demo_data, tmp_path_factory):
    """The whole pipeline once, PROFILE=smoke, on the small demo set: (WORK, make's result).
    Session-wide and read-only: tests that rerun stages do so on a copy (smoke_copy)."""
    def build(d):
        p = run_make("all", work=d / "work", data=demo_data, PROFILE="smoke", timeout=900, jobs=2)   # NETS=multi
        return dict(work=str(d / "work"),
                    make=dict(args=p.args, returncode=p.returncode, stdout=p.stdout, stderr=p.stderr))
    run = built_once(tmp_path_factory, "smoke", build)
    return Path(run["work"]), subprocess.CompletedProcess(**run["make"])


REHEARSE = dict(PROFILE="rehearsal", SUBMIT="recipe")


@pytest.fixture(scope="session")
def rehearsal(demo_data, tmp_path_factory):
    """`make -j2 all PROFILE=rehearsal SUBMIT=recipe` on the small demo set, once: PROFILE=full's
    own path at toy size (tests/test_rehearsal.py). (WORK, make's result); read-only: tests that
    rerun stages do so on a copy (link_work)."""
    def build(d):
        p = run_make("all", work=d / "work", data=demo_data, timeout=900, jobs=2, **REHEARSE)
        return dict(work=str(d / "work"),
                    make=dict(args=p.args, returncode=p.returncode, stdout=p.stdout, stderr=p.stderr))
    run = built_once(tmp_path_factory, "rehearsal", build)
    return Path(run["work"]), subprocess.CompletedProcess(**run["make"])


def smoke_copy(smoke_run, dst, keep=None):
    """A copy of the smoke WORK (link_work); `keep`: only these stage folders."""
    return link_work(smoke_run[0], dst, keep)


def link_work(src, dst, keep=None):
    """A copy of a WORK that shares the files' bytes (hard links: the stages replace files, never
    write into them), without its lock; `keep`: only these stage folders."""
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name == ".lock" or (keep is not None and entry.is_dir() and entry.name not in keep):
            continue
        subprocess.run(["cp", "-al", str(entry), str(dst / entry.name)], check=True)
    return dst


# The files whose session-wide pipelines take longest start first: under pytest-xdist (--dist
# loadfile) the others then fill the workers around them, instead of one worker finishing alone.
# xdist reorders files by their number of tests unless told not to (make test: --no-loadscope-reorder).
FIRST = ("test_rehearsal.py", "test_pipeline.py", "test_gpu_sh.py", "test_cpu_hour.py")


def pytest_collection_modifyitems(items):
    rank = {name: k for k, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))     # stable: files keep their order
