"""Units: what a DONE stamp vouches for. A unit is a stage directory of WORK (WORK/<stage>/), or a
run directory one level below it (WORK/04_finetune/target_0/), that holds DONE; what may be
archived of it is what sync/filter.txt lets through.
"""
import os
import re
from pathlib import Path

from remote import rclone

FILTER = Path(__file__).with_name("filter.txt")  # what may be archived (rclone filter rules)
STAMP = "DONE"                       # a unit is finished when its directory holds this


def subdirs(path):
    return sorted(p for p in Path(path).iterdir() if p.is_dir() and not p.name.startswith("."))


def finished_units(work):
    """Stage directories (depth 1) and run directories (depth 2) of WORK that hold DONE."""
    units = []
    for stage in subdirs(work):
        units += [stage.name] if (stage / STAMP).is_file() else []
        units += [f"{stage.name}/{r.name}" for r in subdirs(stage) if (r / STAMP).is_file()]
    return units


def unfinished(work):
    """Directories with outputs but no DONE (running, stopped, failed): never sent."""
    out = []
    for stage in subdirs(work):
        if not (stage / STAMP).is_file():
            runs = subdirs(stage)
            out += [f"{stage.name}/{r.name}" for r in runs if not (r / STAMP).is_file()]
            out += [] if runs else [stage.name]
    return out


def unit_of(path, units):
    """The unit a file belongs to: its run directory when that is a unit, else its stage."""
    parts = path.split("/")
    if len(parts) >= 3 and "/".join(parts[:2]) in units:
        return "/".join(parts[:2])
    if len(parts) >= 2 and parts[0] in units:
        return parts[0]
    return None


def unit_dir(path):
    """The unit a file would belong to, DONE or not: its stage/run directory, else its stage."""
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) >= 3 else parts[0]


def list_files(root, tmp, units=None):
    """Files under root (local or remote) that sync/filter.txt lets through; with units given,
    only those inside them and WORK's own files."""
    rules = FILTER.read_text()
    if units is not None:
        globs = [re.sub(r"([\\*?\[\]{}])", r"\\\1", u) for u in units]  # names are not globs
        rules += "".join(f"+ /{g}/**\n" for g in globs) + "- **\n"
    rules_path = Path(tmp) / "filter.txt"
    rules_path.write_text(rules)
    rc, out, records = rclone(["lsf", "-R", "--files-only", "--fast-list",
                               "--filter-from", str(rules_path), root], show=False)
    return rc, sorted(out.splitlines()), records


def group(paths, units):
    by_unit = {u: [] for u in units}
    for p in paths:
        if unit_of(p, units) is not None:
            by_unit[unit_of(p, units)].append(p)
    return by_unit


def order_stamps(work, restored):
    """Keep Make's view of restored stages: each restored DONE no older than any file of its
    unit or any DONE of an earlier stage (stages are numbered in data-flow order; Make reruns a
    target only when something it depends on is strictly newer). rclone keeps modtimes on most
    remotes (s3, drive), and then this changes nothing, or moves a stamp by the milliseconds a
    log was flushed after it; where a remote keeps none, files carry their download time and this
    restores the order. Stamps only ever move forward. Returns the units whose stamp moved."""
    work = Path(work)
    units = finished_units(work)
    floor, moved = 0, []
    for stage in sorted({u.split("/")[0] for u in units}):
        newest = floor
        for unit in [u for u in units if u.split("/")[0] == stage]:
            stamp = work / unit / STAMP
            t = stamp.stat().st_mtime_ns
            if unit in restored:
                need = max([floor] + [p.stat().st_mtime_ns for p in (work / unit).rglob("*")
                                      if p.is_file() and p != stamp])
                if t < need:
                    os.utime(stamp, ns=(need, need))
                    t = need
                    moved.append(unit)
            newest = max(newest, t)
        floor = newest
    return moved
