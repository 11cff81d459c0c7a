"""What several stages share: the names of files, atomic writes, stamps and locks, provenance,
seeding, and the stages' view of the profiles (the table itself: profiles.py). (The raw data's
readers and its validation: rawdata.py; the devices and GPU slots: devices.py.)

Nothing here imports torch, so the light stages (00, 01, 06, 07) start fast.
"""
import argparse
import contextlib
import fcntl
import functools
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from profiles import PROFILES

FOLDS = ("0", "1", "2", "all")
EVAL_TRAIN_ROWS = 1024   # fold `all` has no held-out side: its evaluator scores its first train rows
UMASK = os.umask(0o022)
os.umask(UMASK)



# -----------------------------------------------------------------------------
# Names: one grammar, built here and nowhere else.
ID_RE = re.compile(r"^[0-9a-f]{20}$")    # ids name files: nothing else may reach the filesystem


def fold_csv(folds_dir, fold, split):
    """WORK/01_sgkfold/fold_{fold}_{split}.csv, split in train/test."""
    return Path(folds_dir) / f"fold_{fold}_{split}.csv"


def read_fold(folds_dir, fold, split):
    """One side of one of stage 01's folds: its rows of train.csv (test.csv's ids for fold
    all's test side), object_id kept as written (ids are hex: "0123..." is no number)."""
    import pandas as pd      # here, not above: make's helpers import this module and no pandas

    table = pd.read_csv(fold_csv(folds_dir, fold, split), dtype={"object_id": str})
    check_ids(table["object_id"], fold_csv(folds_dir, fold, split), folds_dir)
    return table


def read_oof_fold(folds_dir):
    """Each train row's out-of-fold fold, "0".."2" by object_id, in train.csv's order (01's
    oof_fold.csv: the one fold whose held-out side holds the row)."""
    import pandas as pd

    table = pd.read_csv(Path(folds_dir) / "oof_fold.csv", dtype={"object_id": str, "fold": str})
    check_ids(table["object_id"], Path(folds_dir) / "oof_fold.csv", folds_dir)
    return table.set_index("object_id")["fold"]


def run_name(task, fold, seed=0):
    """<task>_<fold>; a network of another seed of the same task and fold: <task>_<fold>_s<seed>
    (make SEEDS=2: 05 averages the seeds' outputs into <task>_<fold>'s features)."""
    return f"{task}_{fold}" + (f"_s{seed}" if seed else "")


def parse_run_name(name):
    """(task, fold, seed) of a run_name; None for a name of another grammar."""
    parts = name.split("_")
    seed = parts.pop() if len(parts) == 3 else "s0"
    if len(parts) != 2 or not (seed[:1] == "s" and seed[1:].isdigit()) or seed == "s00":
        return None
    task, fold = parts
    return (task, fold, int(seed[1:])) if run_name(task, fold, int(seed[1:])) == name else None


def ckpt_name(epoch, step=None, state=False):
    """A network at an epoch's end is ckpt_e003.pt, mid-epoch ckpt_e003_s00000120.pt (the weights
    the evaluator, 05 and 04 --init read); with state, the optimizer and RNG state a run continues
    from at that point: state_e003.pt, state_e003_s00000120.pt (training.fit)."""
    kind = "state" if state else "ckpt"
    return f"{kind}_e{epoch:03d}.pt" if step is None else f"{kind}_e{epoch:03d}_s{step:08d}.pt"


# -----------------------------------------------------------------------------
# The image store's record (02's images.npy): its size and a hash of a sample of it, written by 02
# into meta.json and compared by every stage that opens the store (pixels.load_store). Hashing the
# whole store on every open would cost seconds at 224 px (1.5 GB); the sample costs milliseconds.
STORE_SAMPLE_ROWS = 64     # rows hashed, spread evenly over the store, the first and last included


def npy_layout(path):
    """(header bytes, shape, bytes the file must have) of a .npy file, from its header alone;
    ValueError when there is no readable header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        header = f.tell()
    return header, shape, header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def store_record(path):
    """{"bytes": images.npy's size, "sample_sha256": the sha256 of its header and of
    STORE_SAMPLE_ROWS rows spread evenly over it}: what 02 records and the stages compare."""
    import hashlib

    header, shape, expected = npy_layout(path)
    n = shape[0] if shape else 0
    row = (expected - header) // max(n, 1)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(header))
        for i in sorted(set(np.linspace(0, n - 1, min(n, STORE_SAMPLE_ROWS)).round().astype(int).tolist())):
            f.seek(header + i * row)
            digest.update(f.read(row))
    return {"bytes": Path(path).stat().st_size, "sample_sha256": digest.hexdigest()}


def check_ids(found, where, redo, expected=None, extra_ok=False):
    """Fail, naming the offending ids, unless the ids of an upstream table (`found`, read from
    `where`) are each there once and, with `expected`, are exactly those (extra_ok: at least
    those). `redo`: the upstream stage's directory, whose DONE the way out removes."""
    import pandas as pd

    found = pd.Series(list(found), dtype=object)
    problems = []
    repeated = found[found.duplicated()].unique()
    if len(repeated):
        problems.append(f"object_id repeated: {show_ids(repeated)}")
    if expected is not None:
        expected = pd.Series(list(expected), dtype=object)
        missing = expected[~expected.isin(found)]
        if len(missing):
            problems.append(f"no row for {show_ids(missing)}")
        unexpected = found[~found.isin(expected)]
        if len(unexpected) and not extra_ok:
            problems.append(f"rows for ids it should not hold: {show_ids(unexpected)}")
    if problems:
        fail(f"{where}: {'; '.join(problems)}. The file is not what its stage wrote for this data: redo "
             f"that stage: rm {Path(redo) / 'DONE'}, then the same command")


# -----------------------------------------------------------------------------
# Errors and output discipline.
class DataError(Exception):
    """Bad raw data: the message names the file and the rows or ids at fault."""


def size_text(n):
    """A byte count as people read it: 812 B, 3.4 KB, 61.9 MB, 1.2 GB (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def fail(msg, code=2):
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


@contextlib.contextmanager
def disk_full_is_an_error(where):
    """A full disk under WORK ends the stage with one line that says so (not a traceback, and not
    blamed on the data): ENOSPC / EDQUOT from anything written inside the block."""
    import errno

    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        fail(f"the disk holding {where} is full: could not write {e.filename or where} "
             f"({e.strerror}); free space there (df -h {where}), then run the same command again")


def show_ids(ids, limit=5):
    ids = [str(i) for i in ids]
    more = f" ... and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(repr(i) for i in ids[:limit]) + more


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; os.replace it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)      # mkstemp makes 0600; outputs are shared like any file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path, df, **kw):
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n", **kw)


def is_done(stage_dir):
    return (Path(stage_dir) / "DONE").exists()


def start_stage(stage_dir):
    """A stage that (re)starts is not done until it says so again: drop its stamp first."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "DONE").unlink(missing_ok=True)
    return stage_dir


def mark_done(stage_dir):
    """Written last, after every output is in place. Empty: times live in provenance.json."""
    write_text(Path(stage_dir) / "DONE", "")


class Stage:
    """One stage's (or one run's) life in its directory, the same for every stage: begun, its
    DONE is dropped and its clock starts; finished, its provenance.json is written (the config,
    the revision the process started on: parse() reads it, the wall time), then DONE, last."""

    def __init__(self, stage_dir, started=None):
        self.dir = start_stage(stage_dir)
        self.started = time.time() if started is None else started

    def finish(self, config):
        write_provenance(self.dir, config, self.started)
        mark_done(self.dir)


def filesystem_of(path):
    """The type of the filesystem holding `path` (ext4, nfs4, lustre, ...), from /proc/mounts."""
    path, best, kind = os.path.realpath(path), "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            mount = mount.replace("\\040", " ")
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def lock(f, path, wait=True):
    """An exclusive flock on the open file f (at `path`): True once held; False when another
    process holds it and wait is False. A filesystem without flock (Lustre mounted without
    -o flock, some NFS) is an error that names it, not a lock that someone else holds."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        fail(f"{path}: this filesystem ({filesystem_of(Path(path).parent)}) cannot lock files "
             f"({e.strerror}); put WORK on a filesystem with flock (a local disk, Lustre mounted "
             f"with -o flock)")


def git_revision(length=12):
    """The repository's commit (`length` hex digits), "-dirty" when tracked files changed."""
    try:
        out = subprocess.run(["git", "rev-parse", f"--short={length}", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=Path(__file__).parent,
                               timeout=10).stdout.strip()
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("ATMA11_GIT_REVISION", "unknown")    # the Docker image has no .git


def read_epoch_rows(path):
    """{epoch: its line} of a per-epoch CSV (eval.csv, holdout.csv; epoch first), header dropped;
    {} when it does not exist yet."""
    lines = Path(path).read_text().splitlines()[1:] if Path(path).exists() else []
    return {int(line.split(",")[0]): line for line in lines}


def forget_epochs_after(path, last):
    """Drop the rows of epochs past `last` from a per-epoch CSV (a run that continues from an
    earlier checkpoint trains and scores them again)."""
    rows = read_epoch_rows(path)
    if any(e > last for e in rows):
        header = Path(path).read_text().splitlines()[0]
        write_text(path, header + "\n" + "".join(rows[e] + "\n" for e in sorted(rows) if e <= last))


def utc_stamp(precise=False):
    """20261128-153012 (UTC); precise adds microseconds, so two of them never collide."""
    now = time.time()
    micro = f".{int(now % 1 * 1e6):06d}" if precise else ""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + micro


@functools.lru_cache(maxsize=None)
def started_revision():
    """The revision of the code this process runs: read once, at its first call (parse() makes it as
    a stage starts), so a checkout that changes the files while a stage runs does not relabel it."""
    return git_revision()


def write_provenance(stage_dir, config, started, name="provenance.json"):
    """The resolved config, argv, git revision (the process's, at its start) and wall time beside
    the outputs."""
    write_json(Path(stage_dir) / name, {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dict(config).items()},
        "argv": sys.argv,
        "git_revision": started_revision(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 3),
    })


def seed_everything(seed):
    """Seed the global RNGs (model init and anything incidental); data order uses its own RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def profile_parser(description):
    """An argparse parser whose defaults come from the profile named by --profile.

    Unknown options are errors (argparse's own rule); the stage adds its options with
    `default=None` where the profile supplies one, then calls `parse(parser, stage)`.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--profile", default="cpu", choices=sorted(PROFILES),
                   help="size preset: full (the recipe, GPUs), cpu (2 cores), smoke (tests)")
    return p


def parse(parser, stage, argv=None, show=True):
    """The stage's settings: the command line over the profile's table, printed once (rank 0;
    show=False: a helper of make's, not a stage) and kept by the stage in its provenance.json.
    Every stage starts here: it also reads the revision the stage runs (started_revision)."""
    args = parser.parse_args(argv)
    started_revision()
    profile = getattr(args, "profile", None)     # stages without a size preset take none
    for key, value in (PROFILES[profile].get(stage, {}) if profile else {}).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if show and os.environ.get("RANK", "0") == "0":
        print(f"[{stage}] settings: " + " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())), flush=True)
    return args
