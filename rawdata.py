"""The raw competition data, read and validated once, at the start of the pipeline (make validate).

Cheap: the CSVs in full and the header of every photo, not its pixels (stage 02 decodes those).
On bad data: `error: <file>: <what> ... <the ids or lines at fault>`, exit 2, no DONE, nothing a
later stage would read; DATA is never written. docs/bad-input.md lists every case.
The stages read the CSVs through the same readers (load_train, load_test, load_names), so
what validation accepted is what they get.

    python rawdata.py fingerprint --data DATA --out WORK/00_validate  # note which data WORK holds
    python rawdata.py validate --data DATA --out WORK/00_validate     # check the raw data once
"""
import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

from common import (ID_RE, DataError, Stage, disk_full_is_an_error, fail, parse, show_ids, write_csv,
                    write_json, write_text)
from tasks import N_CLASSES, era_of_date

# -----------------------------------------------------------------------------
RAW_FILES = {                            # file -> required columns
    "train.csv": ["object_id", "sorting_date", "art_series_id", "target"],
    "test.csv": ["object_id"],
    "materials.csv": ["name", "object_id"],
    "techniques.csv": ["name", "object_id"],
}
SAMPLE_SUBMISSIONS = ("atmaCup#11_sample_submission.csv", "sample_submission.csv")
MAX_PIXELS = 25_000_000   # per photo (make MAX_PIXELS=...): ImageMagick's default policy decodes 36 MP, not 64
MAX_SIDE = 16_000         # ImageMagick's default policy refuses a side over 16K pixels
MAX_CSV_BYTES = 1 << 30   # reads are bounded: a CSV linked to /dev/zero is an error, not a hang


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


# -----------------------------------------------------------------------------
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


def read_id_table(data_dir, name):
    """(path, frame) of train.csv or test.csv: its columns there, at least one row, valid and
    unique object ids."""
    path = Path(data_dir) / name
    df = read_raw_csv(path)
    check_columns(df, path, RAW_FILES[name])
    if df.empty:
        raise DataError(f"{path}: no rows (header only)")
    check_ids(df["object_id"].to_numpy(), path)
    return path, df


def load_train(data_dir):
    """train.csv, validated, typed (sorting_date, target as int), in file order."""
    path, df = read_id_table(data_dir, "train.csv")
    errors = []
    for col, lo, hi in (("target", 0, N_CLASSES - 1), ("sorting_date", -10_000, 10_000)):
        # A whole number written with a decimal point ("2.0", "1650.0": what pandas exports for an
        # integer column that once held a NaN) is that integer; "1.5" is no era and no year.
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() | (num != num.round()) | (num < lo) | (num > hi)
        if bad.any():
            rows = [f"{oid!r}: {value!r}"
                    for oid, value in zip(df.loc[bad, "object_id"], df.loc[bad, col])]
            more = f" ... and {len(rows) - 5} more" if len(rows) > 5 else ""
            errors.append(f"{path}: {col} must be an integer in [{lo}, {hi}] (2.0 is read as 2); "
                          f"bad rows for {', '.join(rows[:5])}{more}")
        else:
            df[col] = num.astype(int)
    if errors:
        raise DataError("\n  ".join(errors))
    empty_series = df.loc[df["art_series_id"] == "", "object_id"]
    if len(empty_series):
        raise DataError(f"{path}: empty art_series_id for {show_ids(empty_series)}")
    wrong = df.loc[era_of_date(df["sorting_date"]) != df["target"], "object_id"]
    if len(wrong):
        raise DataError(f"{path}: target inconsistent with sorting_date (<=1600: 0, 1601-1700: 1, "
                        f"1701-1800: 2, >=1801: 3) for {show_ids(wrong)}")
    return df


def load_test(data_dir, train_ids=None):
    path, df = read_id_table(data_dir, "test.csv")
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
    """(width, height, mode, sha256, bytes) from a JPEG's header and bytes; raises DataError for
    what 02 could not decode. The file's size is one of 02's per-photo statistics.

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
    return w, h, mode, hashlib.sha256(data).hexdigest(), len(data)


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
    photos = pd.DataFrame(rows, columns=["object_id", "width", "height", "mode", "sha256", "bytes"])
    odd = {m: int(n) for m, n in photos["mode"].value_counts().items() if m != "RGB"}
    summary = (f"validated {data_dir}: train.csv {len(train)} rows "
               f"({train['art_series_id'].nunique()} series), test.csv {len(test)} rows, "
               f"materials.csv {len(names['materials.csv'])} pairs, "
               f"techniques.csv {len(names['techniques.csv'])} pairs, "
               f"{len(photos)} photo headers ok"
               + (f" ({', '.join(f'{n} {m}' for m, n in odd.items())}: converted to RGB in 02)"
                  if odd else ""))
    return photos, summary


def entry_stat(entry):
    """A photos/ entry's stat; a dangling link's own (validation names it, if an id refers to it;
    unreferenced photos are ignored)."""
    try:
        return entry.stat()
    except FileNotFoundError:
        return entry.stat(follow_symlinks=False)


def data_fingerprint(data_dir, cache=None, write_cache=True):
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
    stats = [(e, entry_stat(e)) for e in entries]
    listing = hashlib.sha256("".join(f"{e.name}:{st.st_size}:{st.st_mtime_ns}:{st.st_mode}\n"
                                     for e, st in stats).encode()).hexdigest()
    known = json.loads(Path(cache).read_text()) if cache and Path(cache).is_file() else {}
    if known.get("listing") != listing:
        ph = hashlib.sha256()
        for e, st in stats:
            ph.update(f"{e.name}:{st.st_size}:".encode() + file_digest(e.path, st))
        known = {"listing": listing, "photos": ph.hexdigest()}
        if cache and write_cache:
            write_json(cache, known)
    h.update(known["photos"].encode())
    return h.hexdigest()


def cmd_fingerprint(args):
    """Write OUT/source.txt only when the data's content changed, so Make reruns validation
    only then; refuse when WORK already holds stages built from other data. With --check, write
    nothing and print `same` or `changed` (make -n asks, to show only what would run)."""
    out = Path(args.out)
    stamp = out / "source.txt"
    if args.check:
        try:
            now = data_fingerprint(args.data, out / ".photos_listing.json", write_cache=False)
            print("same" if stamp.read_text().split()[0] == now else "changed")
        except (OSError, IndexError):
            print("changed")
        return
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
    stage = Stage(args.out)
    try:
        photos, summary = validate_raw(args.data, args.max_pixels)
    except DataError as e:
        fail(str(e))
    with disk_full_is_an_error(stage.dir):
        write_csv(stage.dir / "photos.csv", photos)
        print(summary, f"[{time.time() - stage.started:.1f}s]", flush=True)
        stage.finish(vars(args))


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
    f.add_argument("--check", action="store_true", help="write nothing; print same or changed")
    args = parse(p, "validate", show=sys.argv[1:2] == ["validate"])   # fingerprint: make's, quiet
    with disk_full_is_an_error(args.out):
        {"validate": cmd_validate, "fingerprint": cmd_fingerprint}[args.command](args)


if __name__ == "__main__":
    main()
