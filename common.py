"""What several stages share: the profiles, the names of files, atomic writes and stamps,
provenance, seeding, validation of the raw data, and GPU slots for Make's fan-out.

Stage scripts import it; it also has a small command line of its own:
    python common.py fingerprint --data DATA --out WORK/00_validate  # note which data WORK holds
    python common.py validate --data DATA --out WORK/00_validate     # check the raw data once
    python common.py on-gpu --gpus 0,1 --locks DIR -- CMD ...       # run CMD holding a free GPU

Nothing here imports torch, so the light stages (00, 01, 06, 07) start fast.
Longer than 400 lines: the raw-data validation is half of it; it stays here because validation
and the stages share its readers (read_raw_csv, load_train, load_test, load_names).
"""
import argparse
import contextlib
import fcntl
import io
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
import pandas as pd

# -----------------------------------------------------------------------------
# Profiles: one table, per stage. `full` is the published recipe on GPUs; `cpu` the same
# pipeline made to learn what it can in an hour on a 2-core machine, each departure from the
# recipe measured by `make study` on fold 0 of the real data (docs/results.md; held-out era
# RMSE of the target head, 8-view TTA); `smoke` runs in seconds (tests, demo data).
RECIPE_OPTIM = dict(optim="adam", lr=1e-3, betas=(0.5, 0.999), weight_decay=0.0,
                    schedule="halve", halve_views=8)     # Adam, lr halved per 8-view epoch
CPU_OPTIM = dict(optim="adamw", lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01,
                 schedule="onecycle", halve_views=8)     # study, 12 epochs: 0.831 against the
                                                         # recipe's halving per 8-view epoch 0.915
PROFILES = {
    "full": {
        "02": dict(size=224),                                   # the recipe's 224 x 224 input
        "03": dict(arch="resnet34", epochs=5, batch=256, views=8, perms=8, holdout=512,
                   holdout_trains=True, ckpt_every=200, **RECIPE_OPTIM),   # the recipe: every photo
        "04": dict(arch="resnet34", epochs=10, batch=256, views=8, shift=0, ckpt_every=200, init="jigsaw",
                   eval_views=8, eval_rows=0, keep_epochs="all",   # 10: the seed's final networks
                   **RECIPE_OPTIM),
        "05": dict(batch=512),
    },
    "cpu": {
        "02": dict(size=48),               # study: 48 px 0.831 in 2.0 min; 64 px 0.838 in 1.7; 96 px 0.862 in 1.8
        "03": dict(arch="resnet18", epochs=0, batch=64, views=1, perms=2, holdout=256,
                   holdout_trains=False, ckpt_every=50,    # study: no jigsaw; 2 / 4 epochs of it at
                   **RECIPE_OPTIM),                        # equal minutes: 0.849 / 0.863 against 0.831
        "04": dict(arch="resnet18",        # study: resnet34 0.824 in 3.8 min, resnet18 0.808 in 4.2
                   epochs=24,              # study: 6 / 12 / 24 epochs 0.842 / 0.831 / 0.808; 60: 0.834 (overfits)
                   batch=64, views=1,      # one random view per image per epoch (the 8 are TTA)
                   shift=0,
                   ckpt_every=100, init="scratch", keep_epochs="last",   # seeds: make SEEDS (Makefile;
                                                                         # cpu 2, averaged by 05)
                   eval_views=1, eval_rows=384,    # per epoch: 1 view of 384 rows (<10% of the
                   **CPU_OPTIM),                   # time); last epoch: 8 views of every row
        "05": dict(batch=256),             # ResNet18 at 48 px infers fastest at 128-256 here
    },
    "smoke": {
        "02": dict(size=24),
        "03": dict(arch="resnet18", epochs=2, batch=32, views=1, perms=2, holdout=16,
                   holdout_trains=False, ckpt_every=4, **dict(RECIPE_OPTIM, halve_views=1)),
        "04": dict(arch="resnet18", epochs=2, batch=16, views=1, shift=0, ckpt_every=1000, init="jigsaw",
                   eval_views=8, eval_rows=0, keep_epochs="all",   # ckpt_every 1000: epoch ends only
                   **dict(RECIPE_OPTIM, halve_views=1)),   # halved per (1-view) epoch: 8 steps at
                                                           # one rate diverge (held-out RMSE 3.1 vs 1.5)
        "05": dict(batch=64),
    },
}
TASKS = ("target", "onehot", "sortingdate", "word2vec")
TASK_DIMS = {"target": 1, "onehot": 4, "sortingdate": 1, "word2vec": 20}
# A network learns one task, or all four at once on one backbone (`multi`: the heads' outputs
# side by side in TASKS order, 26 in all).
NETS = (*TASKS, "multi")
TASK_DIMS["multi"] = sum(TASK_DIMS[t] for t in TASKS)
FOLDS = ("0", "1", "2", "all")
N_CLASSES = 4
ERA_EDGES = (1600, 1700, 1800)          # target = number of edges strictly below sorting_date
RAW_FILES = {                            # file -> required columns
    "train.csv": ["object_id", "sorting_date", "art_series_id", "target"],
    "test.csv": ["object_id"],
    "materials.csv": ["name", "object_id"],
    "techniques.csv": ["name", "object_id"],
}
SAMPLE_SUBMISSIONS = ("atmaCup#11_sample_submission.csv", "sample_submission.csv")
UMASK = os.umask(0o022)
os.umask(UMASK)
ID_RE = re.compile(r"^[0-9a-f]{20}$")    # ids name files: nothing else may reach the filesystem
MAX_PIXELS = 25_000_000   # per photo (make MAX_PIXELS=...): ImageMagick's default policy decodes 36 MP, not 64
MAX_SIDE = 16_000         # ImageMagick's default policy refuses a side over 16K pixels
MAX_CSV_BYTES = 1 << 30   # reads are bounded: a CSV linked to /dev/zero is an error, not a hang


# -----------------------------------------------------------------------------
# Names: one grammar, built here and nowhere else.
def fold_csv(folds_dir, fold, split):
    """WORK/01_sgkfold/fold_{fold}_{split}.csv, split in train/test."""
    return Path(folds_dir) / f"fold_{fold}_{split}.csv"


def run_name(task, fold, seed=0):
    """<task>_<fold>; a network of another seed of the same task and fold: <task>_<fold>_s<seed>
    (make SEEDS=2: 05 averages the seeds' outputs into <task>_<fold>'s features)."""
    return f"{task}_{fold}" + (f"_s{seed}" if seed else "")


def ckpt_name(epoch, step=None):
    """Epoch-end checkpoints are ckpt_e003.pt; mid-epoch ones ckpt_e003_s00000120.pt."""
    return f"ckpt_e{epoch:03d}.pt" if step is None else f"ckpt_e{epoch:03d}_s{step:08d}.pt"


def era_of_date(dates):
    """Map sorting_date to the era target 0..3 (<=1600, 1601-1700, 1701-1800, >=1801)."""
    return np.searchsorted(np.asarray(ERA_EDGES), np.asarray(dates, dtype=float), side="left")


# The era a network's output implies, continuous (numpy arrays or torch tensors alike):
def era_of_year(year):
    """A regressed year mapped linearly to the era: 1550 -> 0, 1650 -> 1 ... 1850 -> 3, clipped."""
    return ((year - 1550) / 100).clip(0, N_CLASSES - 1)


def era_of_scores(scores):
    """(N, 4) one-hot scores -> the expected class: negatives clipped, then normalised."""
    prob = scores.clip(min=0)
    prob = prob / prob.sum(1)[:, None].clip(min=1e-6)
    return sum(c * prob[:, c] for c in range(N_CLASSES))


# -----------------------------------------------------------------------------
# Errors and output discipline.
class DataError(Exception):
    """Bad raw data: the message names the file and the rows or ids at fault."""


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


def regular_file(path, what):
    """Raise DataError unless `path` (after symlinks) is a regular file: a FIFO would hang a read,
    a link to /dev/zero would never end."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as e:
        raise DataError(f"{path}: missing {what}") from e
    except OSError as e:
        raise DataError(f"{path}: unreadable {what} ({e.strerror})") from e
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: unreadable {what} (a directory)")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
        raise DataError(f"{path}: not a regular file ({kind}); a {what} must be a file")


def read_bounded(path, limit, what):
    """The bytes of a regular file, at most `limit` of them (DataError beyond)."""
    regular_file(path, what)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise DataError(f"{path}: unreadable {what} ({e.strerror})") from e
    if len(data) > limit:
        raise DataError(f"{path}: larger than {limit} bytes; not a {what}")
    return data


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


def utc_stamp(precise=False):
    """20261128-153012 (UTC); precise adds microseconds, so two of them never collide."""
    now = time.time()
    micro = f".{int(now % 1 * 1e6):06d}" if precise else ""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + micro


def write_provenance(stage_dir, config, started, name="provenance.json"):
    """The resolved config, argv, git revision and wall time beside the outputs."""
    write_json(Path(stage_dir) / name, {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dict(config).items()},
        "argv": sys.argv,
        "git_revision": git_revision(),
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


def parse(parser, stage, argv=None):
    """The stage's settings: the command line over the profile's table, printed once (rank 0)
    and kept by the stage in its provenance.json."""
    args = parser.parse_args(argv)
    profile = getattr(args, "profile", None)     # stages without a size preset take none
    for key, value in (PROFILES[profile].get(stage, {}) if profile else {}).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if os.environ.get("RANK", "0") == "0":
        print(f"[{stage}] settings: " + " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())), flush=True)
    return args


# -----------------------------------------------------------------------------
# Raw-data validation: once, at the start of the pipeline; cheap (photo headers, not pixels).
def read_raw_csv(path):
    """Read a competition CSV. Tolerated: a UTF-8 BOM, CRLF line ends, extra columns."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: missing file")
    raw = read_bounded(path, MAX_CSV_BYTES, "CSV file")
    if len(raw) == 0:
        raise DataError(f"{path}: empty file (not even a header)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text: line {line} has {raw[e.start:e.end]!r}") from e
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except ValueError as e:                # ParserError, EmptyDataError
        raise DataError(f"{path}: cannot be parsed as CSV ({e})") from e
    import csv

    header = [c.strip() for c in next(csv.reader(io.StringIO(text, newline="")), [])]
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:       # pandas would read the first and rename the second "target.1"
        raise DataError(f"{path}: duplicate column name(s) {twice} in the header; keep one of each")
    short = short_lines(text)
    if short:
        lines = ", ".join(map(str, short[:5])) + (" ..." if len(short) > 5 else "")
        raise DataError(f"{path}: fewer fields than the header on line(s) {lines}")
    df.columns = [c.strip() for c in df.columns]
    return df.apply(lambda col: col.str.strip())


def short_lines(text):
    """Line numbers of rows with fewer fields than the header: pandas fills them with "", which
    would pass for empty cells. (Too many fields is a pandas ParserError already.)"""
    import csv

    reader = csv.reader(io.StringIO(text, newline=""))
    width = len(next(reader, []))
    return [reader.line_num for row in reader if 0 < len(row) < width]


def check_columns(df, path, required):
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")


def check_ids(ids, path):
    bad = [i for i in ids if not ID_RE.match(i)]
    if bad:
        raise DataError(f"{path}: object_id must be 20 lowercase hex characters; bad: {show_ids(bad)}")
    dup = sorted(set(ids[pd.Series(ids).duplicated().to_numpy()]))
    if dup:
        raise DataError(f"{path}: duplicate object_id {show_ids(dup)}")


def load_train(data_dir):
    """train.csv, validated, typed (sorting_date, target as int), in file order."""
    path = Path(data_dir) / "train.csv"
    df = read_raw_csv(path)
    check_columns(df, path, RAW_FILES["train.csv"])
    if df.empty:
        raise DataError(f"{path}: no rows (header only)")
    check_ids(df["object_id"].to_numpy(), path)
    for col, lo, hi in (("target", 0, N_CLASSES - 1), ("sorting_date", -10_000, 10_000)):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = df.loc[num.isna() | (num != num.round()) | (num < lo) | (num > hi), "object_id"]
        if len(bad):
            raise DataError(f"{path}: {col} must be an integer in [{lo}, {hi}]; "
                            f"bad rows for {show_ids(bad)}")
        df[col] = num.astype(int)
    empty_series = df.loc[df["art_series_id"] == "", "object_id"]
    if len(empty_series):
        raise DataError(f"{path}: empty art_series_id for {show_ids(empty_series)}")
    wrong = df.loc[era_of_date(df["sorting_date"]) != df["target"], "object_id"]
    if len(wrong):
        raise DataError(f"{path}: target inconsistent with sorting_date (<=1600: 0, 1601-1700: 1, "
                        f"1701-1800: 2, >=1801: 3) for {show_ids(wrong)}")
    return df


def load_test(data_dir, train_ids=None):
    path = Path(data_dir) / "test.csv"
    df = read_raw_csv(path)
    check_columns(df, path, RAW_FILES["test.csv"])
    if df.empty:
        raise DataError(f"{path}: no rows (header only)")
    check_ids(df["object_id"].to_numpy(), path)
    if train_ids is not None:
        both = sorted(set(df["object_id"]) & set(train_ids))
        if both:
            raise DataError(f"{path}: ids also in train.csv: {show_ids(both)}")
    return df


def load_names(data_dir, file, train_ids):
    """materials.csv / techniques.csv in long format; exact duplicate pairs dropped."""
    path = Path(data_dir) / file
    df = read_raw_csv(path)
    check_columns(df, path, RAW_FILES[file])
    unknown = sorted(set(df["object_id"]) - set(train_ids))
    if unknown:
        raise DataError(f"{path}: object_id not in train.csv: {show_ids(unknown)}")
    empty = df.loc[df["name"] == "", "object_id"]
    if len(empty):
        raise DataError(f"{path}: empty name for {show_ids(empty)}")
    return df.drop_duplicates(["name", "object_id"]).reset_index(drop=True)


def jpeg_end(data):
    """Offset just past the JPEG's end-of-image marker, or None. The header's segments are walked
    to the first scan, and the EOI is looked for after it: an EOI inside an embedded thumbnail
    (an APP1 segment) does not count, and bytes after the real EOI are allowed (decoders stop
    there). Garbled pixel data is 02's to find: only a decode can tell."""
    i, n = 2, len(data)
    while i + 4 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:                 # fill byte
            i += 1
            continue
        if marker == 0xDA:                 # start of scan: the entropy-coded data follows
            end = data.rfind(b"\xff\xd9", i)
            return None if end < 0 else end + 2
        if marker == 0xD9:
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def photo_header(path, max_pixels=MAX_PIXELS):
    """(width, height, mode, sha256) from a JPEG's header and bytes; raises DataError for what 02
    could not decode.

    Checks the start (SOI) and end (EOI) markers and parses the header, without decoding pixels:
    that is 02's job, done once. The content hash lets 02 trust only decodes of these bytes.
    """
    import hashlib
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    data = read_bounded(path, 1 << 30, "photo")
    if len(data) == 0:
        raise DataError(f"{path}: zero-byte photo")
    if data[:3] != b"\xff\xd8\xff":
        raise DataError(f"{path}: not a JPEG (starts with {data[:8]!r})")
    if jpeg_end(data) is None:
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker)")
    try:
        Image.MAX_IMAGE_PIXELS = None      # our own limit below names the photo and the way out
        with Image.open(io.BytesIO(data)) as im:
            (w, h), mode = im.size, im.mode
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: undecodable JPEG header ({e})") from e
    if w * h > max_pixels or max(w, h) > MAX_SIDE:
        raise DataError(f"{path}: {w} x {h} pixels, more than the limit of {max_pixels} pixels "
                        f"(and {MAX_SIDE} a side); raise it with make MAX_PIXELS=N if ImageMagick's "
                        f"policy (identify -list resource) allows such a photo")
    return w, h, mode, hashlib.sha256(data).hexdigest()


def validate_raw(data_dir, max_pixels=MAX_PIXELS):
    """Check every raw file; return (photos table, summary line). Raises DataError."""
    data_dir = Path(data_dir)
    if (data_dir / "photos").exists() and not (data_dir / "photos").is_dir():
        raise DataError(f"{data_dir / 'photos'}: not a directory (the photos must be "
                        f"photos/<object_id>.jpg)")
    train = load_train(data_dir)
    test = load_test(data_dir, train["object_id"])
    names = {f: load_names(data_dir, f, train["object_id"]) for f in ("materials.csv", "techniques.csv")}
    if all(df.empty for df in names.values()):   # 01's word2vec has no vocabulary to learn
        raise DataError(f"{data_dir / 'materials.csv'} and {data_dir / 'techniques.csv'}: "
                        f"no rows in either; the word2vec targets need at least one name")
    for f in SAMPLE_SUBMISSIONS:     # optional; when present it must fit test.csv
        sub = data_dir / f
        if sub.exists():
            s = read_raw_csv(sub)
            if list(s.columns) != ["target"] or len(s) != len(test):
                raise DataError(f"{sub}: expected one column 'target' and {len(test)} rows "
                                f"(test.csv), got {list(s.columns)} x {len(s)}")
    ids = pd.concat([train["object_id"], test["object_id"]], ignore_index=True)
    rows, errors = [], []
    for oid in ids:
        try:
            rows.append((oid, *photo_header(data_dir / "photos" / f"{oid}.jpg", max_pixels)))
        except DataError as e:
            errors.append(str(e))
    if errors:
        head = "\n  ".join(errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise DataError(f"{len(errors)} bad photo(s) under {data_dir / 'photos'}:\n  {head}{more}")
    photos = pd.DataFrame(rows, columns=["object_id", "width", "height", "mode", "sha256"])
    odd = {m: int(n) for m, n in photos["mode"].value_counts().items() if m != "RGB"}
    summary = (f"validated {data_dir}: train.csv {len(train)} rows "
               f"({train['art_series_id'].nunique()} series), test.csv {len(test)} rows, "
               f"materials.csv {len(names['materials.csv'])} pairs, "
               f"techniques.csv {len(names['techniques.csv'])} pairs, "
               f"{len(photos)} photo headers ok"
               + (f" ({', '.join(f'{n} {m}' for m, n in odd.items())}: converted to RGB in 02)"
                  if odd else ""))
    return photos, summary


def data_fingerprint(data_dir, cache=None):
    """sha256 of the CSVs and of every photo's bytes: content, not paths or times, so a WORK
    restored on another machine still matches its data, and a photo replaced by another of the
    same size is noticed. The photos' hash is reused from `cache` (a JSON file) while their
    listing (names, sizes, mtimes) is unchanged: ~0.3 s for the real photos, 0.05 s when cached.
    Only regular files are read (validation names the others)."""
    import hashlib
    import stat

    def file_digest(path, st):
        if not stat.S_ISREG(st.st_mode):
            return f"not a regular file {stat.S_IFMT(st.st_mode)}".encode()
        with open(path, "rb") as f:
            return hashlib.sha256(f.read(MAX_CSV_BYTES + 1)).digest()

    data_dir = Path(data_dir)
    h = hashlib.sha256()
    for f in sorted(RAW_FILES):
        path = data_dir / f
        h.update(f.encode() + b"\0" + file_digest(path, os.stat(path)))
    photos = data_dir / "photos"
    entries = sorted(os.scandir(photos), key=lambda e: e.name) if photos.is_dir() else []
    stats = [(e, e.stat()) for e in entries]
    listing = hashlib.sha256("".join(f"{e.name}:{st.st_size}:{st.st_mtime_ns}:{st.st_mode}\n"
                                     for e, st in stats).encode()).hexdigest()
    known = json.loads(Path(cache).read_text()) if cache and Path(cache).is_file() else {}
    if known.get("listing") != listing:
        ph = hashlib.sha256()
        for e, st in stats:
            ph.update(f"{e.name}:{st.st_size}:".encode() + file_digest(e.path, st))
        known = {"listing": listing, "photos": ph.hexdigest()}
        if cache:
            write_json(cache, known)
    h.update(known["photos"].encode())
    return h.hexdigest()


def cmd_fingerprint(args):
    """Write OUT/source.txt only when the data's content changed, so Make reruns validation
    only then; refuse when WORK already holds stages built from other data."""
    out = Path(args.out)
    stamp = out / "source.txt"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with disk_full_is_an_error(out):
            now = f"{data_fingerprint(args.data, out / '.photos_listing.json')}  {Path(args.data).resolve()}"
    except FileNotFoundError as e:
        fail(f"{e.filename}: missing file")
    except OSError as e:
        fail(f"{args.data}: {e}")
    # Only finished work downstream of validation is worth protecting; a failed or merely
    # validated WORK simply follows the corrected data.
    built = [d for d in out.parent.glob("*/DONE") if d.parent.name not in ("00_validate", "00_demo_data")]
    if stamp.exists():
        before = stamp.read_text().split()[0]
        if before == now.split()[0] or not built:
            write_text(stamp, now + "\n") if before != now.split()[0] else None
            return
        fail(f"{out.parent} was built from other data (fingerprint {before[:12]}, now {now[:12]} "
             f"for {args.data}).\n  Use another WORK=..., or `make clean WORK={out.parent}` to start over.")
    write_text(stamp, now + "\n")


def cmd_validate(args):
    started = time.time()
    out = start_stage(args.out)
    try:
        photos, summary = validate_raw(args.data, args.max_pixels)
    except DataError as e:
        fail(str(e))
    with disk_full_is_an_error(out):
        write_csv(out / "photos.csv", photos)
        write_provenance(out, vars(args), started)
        print(summary, f"[{time.time() - started:.1f}s]", flush=True)
        mark_done(out)


# -----------------------------------------------------------------------------
# GPU slots: Make runs up to len(GPUS) recipes at once (-j); each takes a free GPU here.
def on_free_gpu(gpus, lock_dir, cmd, poll=0.2):
    """Run `cmd` with CUDA_VISIBLE_DEVICES set to one GPU of `gpus` that no other run holds.

    The hold is an flock on lock_dir/gpu<id>.lock, released by the kernel when the last process
    holding its descriptor ends, however it ends: no stale locks after a kill. The command
    inherits the descriptor (its number in $GPU_SLOT_FD) and passes it on to its own helpers
    (04's evaluator), so the GPU stays held while any process of the run lives.
    With no GPUs the command runs as is.
    """
    if not gpus:       # GPUS empty: the CPU, even on a machine that has GPUs
        return subprocess.call(cmd, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    while True:
        for gpu in gpus:
            f = open(Path(lock_dir) / f"gpu{gpu}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu), GPU_SLOT_FD=str(f.fileno()))
            print(f"[gpu {gpu}] {' '.join(cmd)}", flush=True)
            try:
                return subprocess.call(cmd, env=env, pass_fds=(f.fileno(),))
            finally:
                f.close()
        time.sleep(poll)


def cmd_setting(args):
    table = PROFILES[args.profile].get(args.stage, {})
    if args.key not in table:
        fail(f"profile {args.profile} has no setting {args.key!r} for stage {args.stage}")
    print(table[args.key])


def cmd_on_gpu(args):
    gpus = [g for g in args.gpus.split(",") if g.strip()]
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    sys.exit(on_free_gpu(gpus, args.locks, cmd))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check the raw data; write OUT/photos.csv and OUT/DONE")
    v.add_argument("--data", required=True)
    v.add_argument("--out", required=True)
    v.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="largest photo (width x height)")
    f = sub.add_parser("fingerprint", help="write OUT/source.txt when the data's content changed")
    f.add_argument("--data", required=True)
    f.add_argument("--out", required=True)
    s = sub.add_parser("setting", help="print one setting of a stage's profile (02_hvr_augment.sh's size)")
    s.add_argument("--profile", required=True, choices=sorted(PROFILES))
    s.add_argument("--stage", required=True)
    s.add_argument("key")
    g = sub.add_parser("on-gpu", help="run a command on a free GPU of --gpus")
    g.add_argument("--gpus", default="")
    g.add_argument("--locks", required=True)
    g.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args()
    with disk_full_is_an_error(getattr(args, "out", None) or "WORK"):
        {"validate": cmd_validate, "fingerprint": cmd_fingerprint, "on-gpu": cmd_on_gpu,
         "setting": cmd_setting}[args.command](args)


if __name__ == "__main__":
    main()
