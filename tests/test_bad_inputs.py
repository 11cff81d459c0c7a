"""The bad-input corpus: malformed raw data, made from the demo data, through the real `make`.

Every case copies the demo raw data, breaks it one way, and runs `make validate folds` with a fresh
WORK and DATA pointing at the broken copy. A *rejected* case must exit non-zero with an `error:` on
stderr (no traceback) that names the file and the offending ids or lines; it leaves no `DONE` in
WORK/00_validate or WORK/01_sgkfold, no `photos.csv`, no half-written temporary file, and it never
changes DATA nor writes anything outside WORK. A *tolerated* case must pass both targets, and where
the content is unchanged, write the same bytes as the clean data does.

| case                      | what is wrong                                         | outcome                                                       |
|---------------------------|-------------------------------------------------------|---------------------------------------------------------------|
| missing_photo             | photos/{train id}.jpg deleted                         | rejected: names the photo path (the id)                       |
| missing_test_photo        | photos/{test id}.jpg deleted                          | rejected: names the photo path                                |
| photos_dir_missing        | no photos/ at all                                     | rejected: count of bad photos, the first 10 paths             |
| zero_byte_photo           | a .jpg of 0 bytes                                     | rejected: "zero-byte photo", the path                         |
| truncated_photo           | a .jpg cut in half                                    | rejected: "truncated JPEG", the path                          |
| png_photo                 | PNG bytes in a .jpg                                   | rejected: "not a JPEG", the path                              |
| photo_is_directory        | photos/{id}.jpg is a directory                        | rejected: "unreadable photo", the path                        |
| grayscale_and_cmyk        | one grayscale (L) and one CMYK JPEG                   | tolerated: summary says "1 L, 1 CMYK: converted to RGB in 02" |
| missing_test_csv          | test.csv deleted                                      | rejected: names test.csv                                      |
| missing_techniques_csv    | techniques.csv deleted                                | rejected: names techniques.csv                                |
| missing_column            | train.csv without art_series_id                       | rejected: names the file and the column                       |
| semicolon_delimiter       | train.csv separated by ";"                            | rejected: missing columns                                     |
| extra_columns             | extra columns in train, test, materials; extra photos | tolerated (kept in the fold files; photos ignored)            |
| duplicate_train_id        | a train row twice                                     | rejected: "duplicate object_id", the id                       |
| duplicate_test_id         | a test id twice                                       | rejected: "duplicate object_id", the id                       |
| path_characters           | test ids "../../outside", "ab/…", "with space …"      | rejected before any file access: all three named              |
| uppercase_id              | a train id in upper case                              | rejected: not 20 lowercase hex characters                     |
| spaces_around_values      | spaces around every train.csv cell                    | tolerated: stripped, same outputs as clean data               |
| nan_target                | target "" and "NaN"                                   | rejected: both ids                                            |
| out_of_range_target       | target 4, -1, 2.5                                     | rejected: all three ids                                       |
| inconsistent_target       | target 1 for a sorting_date in 1701-1800              | rejected: "inconsistent with sorting_date", the id            |
| bad_sorting_date          | sorting_date "c. 1650"                                | rejected: the id                                              |
| decimal_integers          | every target and sorting_date as "2.0", "1650.0"      | tolerated: read as integers, same outputs as clean data       |
| fractional_values         | target "1.5", and another row's sorting_date "1650.5" | rejected: both columns, each id with its value                |
| empty_series              | art_series_id ""                                      | rejected: the id                                              |
| train_id_in_test          | a train id appended to test.csv                       | rejected: "ids also in train.csv", the id                     |
| empty_train_csv           | train.csv of 0 bytes                                  | rejected: "empty file"                                        |
| empty_materials_csv       | materials.csv of 0 bytes                              | rejected: "empty file"                                        |
| header_only_train         | train.csv with its header only                        | rejected: "no rows"                                           |
| header_only_test          | test.csv with its header only                         | rejected: "no rows"                                           |
| header_only_techniques    | techniques.csv with its header only                   | tolerated: word2vec from materials alone                      |
| header_only_both_names    | materials.csv and techniques.csv header only          | rejected: word2vec needs at least one name                    |
| bom_and_crlf              | every CSV with a UTF-8 BOM and CRLF line ends         | tolerated: same outputs as clean data                         |
| ragged_row                | a train.csv line with one field too many              | rejected: names the line                                      |
| short_row                 | a train.csv line with fields missing                  | rejected: "fewer fields than the header", the line            |
| non_utf8                  | Latin-1 bytes in materials.csv                        | rejected: "not UTF-8 text", the line                          |
| unknown_id_in_materials   | materials.csv names an id in no file                  | rejected: "not in train.csv", the id                          |
| techniques_name_a_test_id | techniques.csv names a test id                        | rejected: "not in train.csv", the id                          |
| empty_name                | a materials.csv name ""                               | rejected: "empty name", the id                                |
| duplicate_name_pairs      | the same (name, object_id) twice                      | tolerated: dropped, same outputs as clean data                |
| sample_submission_rows    | sample_submission.csv one row short                   | rejected: expected vs found rows                              |
| no_sample_submission      | sample_submission.csv deleted                         | tolerated (it is optional)                                    |
| download_named_submission | named atmaCup#11_sample_submission.csv, one row short | rejected: names it (the download's name is read too)          |
| too_few_rows_for_folds    | 20 train rows: no train side of 64                    | rejected by 01 (validation passes), naming train.csv and sizes |

Not in the table: DATA without train.csv falls back to generated demo data and says so (DESIGN.md;
tests/test_demo.py); the two former gaps at the end of this file (now fixed) stay as regression tests.
"""
import hashlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import run_make

FOLD_OUTPUTS = tuple(f"01_sgkfold/{f}" for f in (
    *(f"fold_{k}_{s}.csv" for k in ("0", "1", "2", "all") for s in ("train", "test")),
    "oof_fold.csv", "word2vec.csv", "folds.json"))
ALL_OUTPUTS = FOLD_OUTPUTS + ("00_validate/photos.csv",)
CSVS = ("train.csv", "test.csv", "materials.csv", "techniques.csv", "sample_submission.csv")


class Raw:
    """The broken copy: read and write its files as the competition formats them."""

    def __init__(self, path):
        self.path = Path(path)
        self.train = self.csv("train.csv")
        self.test = self.csv("test.csv")
        self.train_ids, self.test_ids = list(self.train["object_id"]), list(self.test["object_id"])

    def file(self, name):
        return self.path / name

    def csv(self, name):
        return pd.read_csv(self.file(name), dtype=str, keep_default_na=False)

    def write(self, name, df):
        df.to_csv(self.file(name), index=False, lineterminator="\n")

    def photo(self, oid):
        return self.path / "photos" / f"{oid}.jpg"

    def lines(self, name):
        return self.file(name).read_text().splitlines()

    def write_lines(self, name, lines):
        self.file(name).write_text("\n".join(lines) + "\n")


# ---- the cases: each breaks the copy and returns what the message (or summary) must contain -------
def missing_photo(r):
    r.photo(r.train_ids[3]).unlink()
    return [str(r.photo(r.train_ids[3])), "missing photo"]


def missing_test_photo(r):
    r.photo(r.test_ids[-1]).unlink()
    return [str(r.photo(r.test_ids[-1])), "missing photo"]


def photos_dir_missing(r):
    shutil.rmtree(r.path / "photos")
    n = len(r.train_ids) + len(r.test_ids)
    return [f"{n} bad photo(s) under {r.path / 'photos'}", str(r.photo(r.train_ids[0])), f"and {n - 10} more"]


def zero_byte_photo(r):
    r.photo(r.test_ids[0]).write_bytes(b"")
    return [str(r.photo(r.test_ids[0])), "zero-byte photo"]


def truncated_photo(r):
    p = r.photo(r.train_ids[5])
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return [str(p), "truncated JPEG"]


def png_photo(r):
    p, buf = r.photo(r.train_ids[6]), io.BytesIO()
    Image.open(p).save(buf, "PNG")
    p.write_bytes(buf.getvalue())
    return [str(p), "not a JPEG"]


def photo_is_directory(r):
    p = r.photo(r.train_ids[7])
    p.unlink()
    p.mkdir()
    return [str(p), "unreadable photo"]


def grayscale_and_cmyk(r):
    for oid, mode in ((r.train_ids[8], "L"), (r.test_ids[1], "CMYK")):
        Image.open(r.photo(oid)).convert(mode).save(r.photo(oid), "JPEG", quality=90)
    return ["1 L", "1 CMYK", "converted to RGB in 02"]


def missing_test_csv(r):
    r.file("test.csv").unlink()
    return [str(r.file("test.csv"))]


def missing_techniques_csv(r):
    r.file("techniques.csv").unlink()
    return [str(r.file("techniques.csv"))]


def missing_column(r):
    r.write("train.csv", r.train.drop(columns="art_series_id"))
    return [str(r.file("train.csv")), "missing column", "art_series_id"]


def semicolon_delimiter(r):
    r.write_lines("train.csv", [line.replace(",", ";") for line in r.lines("train.csv")])
    return [str(r.file("train.csv")), "missing column"]


def extra_columns(r):
    """Also a photo of an id in neither CSV and a stray file under photos/: both ignored."""
    shutil.copy(r.photo(r.train_ids[0]), r.path / "photos" / ("f" * 20 + ".jpg"))
    (r.path / "photos" / "README.txt").write_text("scanned 2021\n")
    r.write("train.csv", r.train.assign(notes="from the museum's export"))
    r.write("test.csv", r.test.assign(split="test"))
    r.write("materials.csv", r.csv("materials.csv").assign(source="catalogue"))
    return []


def duplicate_train_id(r):
    r.write("train.csv", pd.concat([r.train, r.train.iloc[[4]]]))
    return [str(r.file("train.csv")), "duplicate object_id", r.train_ids[4]]


def duplicate_test_id(r):
    r.write("test.csv", pd.concat([r.test.iloc[[2]], r.test]))
    return [str(r.file("test.csv")), "duplicate object_id", r.test_ids[2]]


def path_characters(r):
    """A valid JPEG waits where "../../outside" would lead: finding it would be a path escape."""
    shutil.copy(r.photo(r.test_ids[0]), r.path.parent / "outside.jpg")
    bad = ["../../outside", "ab/" + r.test_ids[1][3:], "with space " + r.test_ids[2][11:]]
    test = r.test.copy()
    test.loc[:2, "object_id"] = bad
    r.write("test.csv", test)
    return [str(r.file("test.csv")), "20 lowercase hex characters", *bad]


def uppercase_id(r):
    train = r.train.copy()
    train.loc[9, "object_id"] = r.train_ids[9].upper()
    r.write("train.csv", train)
    return [str(r.file("train.csv")), "20 lowercase hex characters", r.train_ids[9].upper()]


def spaces_around_values(r):
    lines = r.lines("train.csv")
    padded = [", ".join(f" {v}" for v in line.split(",")) for line in lines[1:]]
    r.write_lines("train.csv", [lines[0]] + padded)
    return []


def nan_target(r):
    train = r.train.copy()
    train.loc[[10, 11], "target"] = ["", "NaN"]
    r.write("train.csv", train)
    return [str(r.file("train.csv")), "target must be an integer", r.train_ids[10], r.train_ids[11]]


def out_of_range_target(r):
    train = r.train.copy()
    train.loc[[12, 13, 14], "target"] = ["4", "-1", "2.5"]
    r.write("train.csv", train)
    return [str(r.file("train.csv")), "target must be an integer", *r.train_ids[12:15]]


def inconsistent_target(r):
    train = r.train.copy()
    row = train.index[train["target"] == "2"][0]
    train.loc[row, "target"] = "1"
    r.write("train.csv", train)
    return [str(r.file("train.csv")), "inconsistent with sorting_date", r.train_ids[row]]


def bad_sorting_date(r):
    train = r.train.copy()
    train.loc[15, "sorting_date"] = "c. 1650"
    r.write("train.csv", train)
    return [str(r.file("train.csv")), "sorting_date must be an integer", r.train_ids[15]]


def decimal_integers(r):
    """As pandas writes an integer column that once held a NaN."""
    train = r.train.copy()
    for col in ("target", "sorting_date"):
        train[col] = [f"{int(v)}.0" for v in train[col]]
    r.write("train.csv", train)
    return []


def fractional_values(r):
    train = r.train.copy()
    train.loc[18, "target"] = "1.5"
    train.loc[19, "sorting_date"] = "1650.5"
    r.write("train.csv", train)
    return [str(r.file("train.csv")), "target must be an integer", f"'{r.train_ids[18]}': '1.5'",
            "sorting_date must be an integer", f"'{r.train_ids[19]}': '1650.5'"]


def empty_series(r):
    train = r.train.copy()
    train.loc[16, "art_series_id"] = ""
    r.write("train.csv", train)
    return [str(r.file("train.csv")), "empty art_series_id", r.train_ids[16]]


def train_id_in_test(r):
    r.write("test.csv", pd.concat([r.test, r.train.iloc[[17]][["object_id"]]]))
    return [str(r.file("test.csv")), "also in train.csv", r.train_ids[17]]


def empty_train_csv(r):
    r.file("train.csv").write_bytes(b"")
    return [str(r.file("train.csv")), "empty file"]


def empty_materials_csv(r):
    r.file("materials.csv").write_bytes(b"")
    return [str(r.file("materials.csv")), "empty file"]


def header_only_train(r):
    r.write_lines("train.csv", r.lines("train.csv")[:1])
    return [str(r.file("train.csv")), "no rows"]


def header_only_test(r):
    r.write_lines("test.csv", r.lines("test.csv")[:1])
    return [str(r.file("test.csv")), "no rows"]


def header_only_techniques(r):
    r.write_lines("techniques.csv", r.lines("techniques.csv")[:1])
    return []


def header_only_both_names(r):
    for f in ("materials.csv", "techniques.csv"):
        r.write_lines(f, r.lines(f)[:1])
    return [str(r.file("materials.csv")), str(r.file("techniques.csv")), "at least one name"]


def bom_and_crlf(r):
    for f in CSVS:
        r.file(f).write_bytes(b"\xef\xbb\xbf" + r.file(f).read_bytes().replace(b"\n", b"\r\n"))
    return []


def ragged_row(r):
    lines = r.lines("train.csv")
    lines[3] += ",1"
    r.write_lines("train.csv", lines)
    return [str(r.file("train.csv")), "line 4"]


def short_row(r):
    lines = r.lines("train.csv")
    lines[4] = ",".join(lines[4].split(",")[:2])
    r.write_lines("train.csv", lines)
    return [str(r.file("train.csv")), "fewer fields than the header", "line(s) 5"]


def non_utf8(r):
    line = len(r.lines("materials.csv")) + 1
    with open(r.file("materials.csv"), "ab") as f:
        f.write(f"papier m\xe2ch\xe9,{r.train_ids[0]}\n".encode("latin-1"))
    return [str(r.file("materials.csv")), "not UTF-8", f"line {line} "]


def unknown_id_in_materials(r):
    stranger = "0123456789abcdef0123"
    assert stranger not in r.train_ids + r.test_ids
    extra = pd.DataFrame({"name": ["ink"], "object_id": [stranger]})
    r.write("materials.csv", pd.concat([r.csv("materials.csv"), extra]))
    return [str(r.file("materials.csv")), "not in train.csv", stranger]


def techniques_name_a_test_id(r):
    extra = pd.DataFrame({"name": ["pen"], "object_id": [r.test_ids[3]]})
    r.write("techniques.csv", pd.concat([r.csv("techniques.csv"), extra]))
    return [str(r.file("techniques.csv")), "not in train.csv", r.test_ids[3]]


def empty_name(r):
    materials = r.csv("materials.csv")
    materials.loc[2, "name"] = ""
    r.write("materials.csv", materials)
    return [str(r.file("materials.csv")), "empty name", materials.loc[2, "object_id"]]


def duplicate_name_pairs(r):
    materials = r.csv("materials.csv")
    r.write("materials.csv", pd.concat([materials.iloc[:3], materials.iloc[:3], materials.iloc[3:]]))
    return []


def sample_submission_rows(r):
    r.write_lines("sample_submission.csv", r.lines("sample_submission.csv")[:-1])
    return [str(r.file("sample_submission.csv")), f"{len(r.test_ids)} rows", f"x {len(r.test_ids) - 1}"]


def no_sample_submission(r):
    r.file("sample_submission.csv").unlink()
    return []


def download_named_submission(r):
    """Short, so that the check proves the file is read under this name, not silently skipped."""
    r.file("sample_submission.csv").rename(r.file("atmaCup#11_sample_submission.csv"))
    r.write_lines("atmaCup#11_sample_submission.csv", r.lines("atmaCup#11_sample_submission.csv")[:-1])
    return [str(r.file("atmaCup#11_sample_submission.csv")), f"{len(r.test_ids)} rows"]


def too_few_rows_for_folds(r):
    sizes = r.train["art_series_id"].map(r.train["art_series_id"].value_counts())
    keep = r.train[sizes == 1].head(20)     # single-row series: all movable, so 01 moves them all
    r.write("train.csv", keep)
    for f in ("materials.csv", "techniques.csv"):
        names = r.csv(f)
        r.write(f, names[names["object_id"].isin(keep["object_id"])])
    return [str(r.file("train.csv"))]


@dataclass
class Case:
    mutate: object          # breaks the copy; returns the strings the message or summary must hold
    outcome: str            # "rejected" (by validation), "rejected by 01", "tolerated"
    same: tuple = ()        # tolerated: outputs byte-identical to the clean data's
    xfail: str = ""         # a known gap, with what must change

    @property
    def name(self):
        return self.mutate.__name__


CASES = [
    Case(missing_photo, "rejected"),
    Case(missing_test_photo, "rejected"),
    Case(photos_dir_missing, "rejected"),
    Case(zero_byte_photo, "rejected"),
    Case(truncated_photo, "rejected"),
    Case(png_photo, "rejected"),
    Case(photo_is_directory, "rejected"),
    Case(grayscale_and_cmyk, "tolerated", same=FOLD_OUTPUTS),
    Case(missing_test_csv, "rejected"),
    Case(missing_techniques_csv, "rejected"),
    Case(missing_column, "rejected"),
    Case(semicolon_delimiter, "rejected"),
    Case(extra_columns, "tolerated",
         same=("01_sgkfold/oof_fold.csv", "01_sgkfold/word2vec.csv", "01_sgkfold/folds.json",
               "01_sgkfold/fold_all_test.csv", "00_validate/photos.csv")),
    Case(duplicate_train_id, "rejected"),
    Case(duplicate_test_id, "rejected"),
    Case(path_characters, "rejected"),
    Case(uppercase_id, "rejected"),
    Case(spaces_around_values, "tolerated", same=ALL_OUTPUTS),
    Case(nan_target, "rejected"),
    Case(out_of_range_target, "rejected"),
    Case(inconsistent_target, "rejected"),
    Case(bad_sorting_date, "rejected"),
    Case(decimal_integers, "tolerated", same=ALL_OUTPUTS),
    Case(fractional_values, "rejected"),
    Case(empty_series, "rejected"),
    Case(train_id_in_test, "rejected"),
    Case(empty_train_csv, "rejected"),
    Case(empty_materials_csv, "rejected"),
    Case(header_only_train, "rejected"),
    Case(header_only_test, "rejected"),
    Case(header_only_techniques, "tolerated",
         same=tuple(f for f in ALL_OUTPUTS if not f.endswith(("word2vec.csv", "folds.json")))),
    Case(header_only_both_names, "rejected"),
    Case(bom_and_crlf, "tolerated", same=ALL_OUTPUTS),
    Case(ragged_row, "rejected"),
    Case(short_row, "rejected"),
    Case(non_utf8, "rejected"),
    Case(unknown_id_in_materials, "rejected"),
    Case(techniques_name_a_test_id, "rejected"),
    Case(empty_name, "rejected"),
    Case(duplicate_name_pairs, "tolerated", same=ALL_OUTPUTS),
    Case(sample_submission_rows, "rejected"),
    Case(no_sample_submission, "tolerated", same=ALL_OUTPUTS),
    Case(download_named_submission, "rejected"),
    Case(too_few_rows_for_folds, "rejected by 01"),
]


def tree_digest(path):
    """Every file and directory under path, with a hash of each file's bytes."""
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        h.update(str(p.relative_to(path)).encode() + (b"/" if p.is_dir() else b"\0"))
        if p.is_file():
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def outside(root, work):
    return {p for p in root.rglob("*") if work not in p.parents and p != work}


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.name, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)] if c.xfail else [])
    for c in CASES])
def test_bad_input(case, demo_copy, demo_folds, tmp_path):
    data, work = demo_copy, tmp_path / "work"
    needles = case.mutate(Raw(data))
    data_before, around_before = tree_digest(data), outside(tmp_path, work)

    p = run_make("validate", "folds", work=work, data=data, check=False)
    out = f"--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"

    assert "Traceback" not in p.stderr, f"a crash, not a clear error:\n{out}"
    assert tree_digest(data) == data_before, "DATA was modified"
    assert outside(tmp_path, work) == around_before, "something was written outside WORK"
    assert not list(work.rglob(".*.tmp")), f"temporary files left: {list(work.rglob('.*.tmp'))}"
    if case.outcome == "tolerated":
        assert p.returncode == 0, out
        assert (work / "00_validate/DONE").exists() and (work / "01_sgkfold/DONE").exists()
        summary = next(line for line in p.stdout.splitlines() if line.startswith("validated "))
        for needle in needles:
            assert needle in summary, f"{needle!r} not in the summary line:\n{out}"
        differ = [f for f in case.same if (work / f).read_bytes() != (demo_folds / f).read_bytes()]
        assert not differ, f"outputs differ from the clean data's: {differ}"
        return

    assert p.returncode != 0, f"accepted:\n{out}"
    assert "error: " in p.stderr, out
    for needle in needles:
        assert needle in p.stderr, f"{needle!r} not in the message:\n{out}"
    assert not (work / "01_sgkfold/DONE").exists()
    if case.outcome == "rejected":          # by validation: nothing a later stage could read
        assert not (work / "00_validate/DONE").exists()
        left = {f.name for f in (work / "00_validate").glob("*")}
        assert left <= {"source.txt", ".photos_listing.json"}, f"00_validate holds {left} after a failed validation"
        assert not (work / "01_sgkfold").exists(), "01 ran on data that failed validation"
    else:                                   # by 01: validation passed, 01 wrote no stamp
        assert (work / "00_validate/DONE").exists()


def test_every_case_is_documented():
    rows = {line.split("|")[1].strip() for line in __doc__.splitlines() if line.startswith("| ")}
    names = {c.name for c in CASES}
    assert names <= rows, f"cases missing from the docstring table: {sorted(names - rows)}"
    assert rows - {"case"} <= names, f"documented but not tested: {sorted(rows - names - {'case'})}"
    assert len(CASES) >= 15


# ---- former gaps, kept as regression tests ------------------------------------------------------
def test_fixing_the_data_and_rerunning_resumes(demo_copy, tmp_path):
    """A typo costs minutes: fix it, run the same command again, same WORK."""
    work, saved = tmp_path / "work", (demo_copy / "train.csv").read_bytes()
    nan_target(Raw(demo_copy))
    assert run_make("validate", work=work, data=demo_copy, check=False).returncode != 0
    (demo_copy / "train.csv").write_bytes(saved)
    run_make("folds", work=work, data=demo_copy)
    assert (work / "01_sgkfold/DONE").exists()


def test_data_path_with_a_space_is_not_silently_replaced(demo_data, tmp_path):
    data = tmp_path / "my data"
    shutil.copytree(demo_data, data)
    p = run_make("-n", "validate", work=tmp_path / "work", data=data, check=False)
    assert "demo" not in p.stdout + p.stderr and (p.returncode != 0 or str(data) in p.stdout)
