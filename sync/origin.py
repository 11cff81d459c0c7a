"""A run's origin: the data set and the profile that built it. A WORK says its own (source.txt,
profile.txt); sync-up records beside each unit it archives the origin that built it (.origin);
here those are read, from WORK and from the remote, and compared: sync-up refuses to add to a run
that another data set or profile built, sync-down to restore a run that mixes them, or into a WORK
of other data or another profile.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import common
from common import fail
from remote import copy, last_error, rclone, under

# -----------------------------------------------------------------------------
# A run holds one data set and one profile. What built a WORK: its data's fingerprint
# (rawdata.py fingerprint: the content hash, then the data's path) and its PROFILE (the Makefile).
SOURCE = "00_validate/source.txt"
PROFILE = "profile.txt"
# Beside each archived unit, sync-up records the fingerprint and profile it was built from, so that
# sync-down can tell a run mixed from two WORKs. Hidden: sync/filter.txt keeps it out of a restore.
ORIGIN = ".origin"


@dataclass
class Origin:
    data: str = ""            # the data's fingerprint ("" where unknown)
    path: str = ""            # where that data was (informative: the same data may move)
    profile: str = ""         # "" until a stage that depends on the profile ran (02 writes it)


def origin_of(root):
    """The Origin of a WORK (or of a run's files fetched from the remote): its source.txt, its
    profile.txt."""
    source, profile = Path(root) / SOURCE, Path(root) / PROFILE
    data, _, path = source.read_text().strip().partition(" ") if source.is_file() else ("", "", "")
    return Origin(data, path.strip(), profile.read_text().strip() if profile.is_file() else "")


def work_origin(work, dry_run):
    """The Origin of the WORK that sync-up archives; outside a dry run, its data must be known."""
    origin = origin_of(work)
    if not origin.data and not dry_run:
        fail(f"{work / SOURCE} is missing, so which data built {work} is unknown, and an archived "
             f"run must say: `make validate WORK={work}` (with the DATA it was built from) "
             f"writes it")
    return origin


def write_records(origin, units, into):
    """Write each unit's ORIGIN record (the data and profile that built it) under the folder into;
    return their paths, relative to it."""
    record = json.dumps({"data": origin.data, "profile": origin.profile}, sort_keys=True) + "\n"
    for u in units:
        common.write_text(Path(into) / u / ORIGIN, record)
    return [f"{u}/{ORIGIN}" for u in units]


def fetch_origins(src, tmp):
    """Copy what says which data and profile built a run on the remote (its source.txt and
    profile.txt, every unit's .origin) into a local folder; return (that folder, {unit: Origin})."""
    into = Path(tmp) / "archived"
    # listed first: a copy from a run that is not there yet would be retried, seconds apart
    rc, out, records = rclone(["lsf", "-R", "--files-only", "--fast-list", "--include",
                               f"/{SOURCE}", "--include", f"/{PROFILE}", "--include", ORIGIN,
                               src], show=False)
    if rc not in (0, 3):                 # 3: no such run yet
        fail(f"cannot list {src}: {last_error(records)}")
    paths = out.splitlines() if rc == 0 else []
    rc, records = copy(src, str(into), paths, tmp, "origins.txt", show=False)
    if rc:
        fail(f"cannot read {src}: {last_error(records)}")
    units = {}
    for path in into.rglob(ORIGIN):
        unit = str(path.parent.relative_to(into))
        try:
            units[unit] = Origin(**json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            fail(f"{under(src, unit, ORIGIN)}: not a record of sync-up's ({e}); was it edited?")
    return into, units


def by_value(named):
    """{value: [names]} of a {name: value}, empty values left out."""
    groups = {}
    for name, value in sorted(named.items()):
        if value:
            groups.setdefault(value, []).append(name)
    return groups


# -----------------------------------------------------------------------------
# The checks: sync-up's before anything is sent, sync-down's before anything is restored.
def check_same_origin(up, tmp):
    """sync-up adds to a run only what was built from the same data and profile as the run."""
    archived, units = fetch_origins(up.dest, tmp)
    theirs = origin_of(archived)
    mine = up.origin
    datas = by_value({SOURCE: theirs.data, **{u: o.data for u, o in units.items()}})
    profiles = by_value({PROFILE: theirs.profile, **{u: o.profile for u, o in units.items()}})
    other = [d for d in datas if d != mine.data]
    if other:
        path = f" ({theirs.path})" if theirs.data == other[0] and theirs.path else ""
        fail(f"run {up.run} on {up.remote} was built from other data than {up.work}:\n"
             f"  run {up.run}: data {other[0][:12]}{path} ({', '.join(datas[other[0]][:4])})\n"
             f"  {up.work}: data {mine.data[:12]} ({mine.path})\n"
             f"  A run holds one data set; nothing was sent. Archive {up.work} as another run: "
             f"RUN=<a new id>")
    other = [p for p in profiles if mine.profile and p != mine.profile]
    if other:
        fail(f"run {up.run} on {up.remote} was built with PROFILE={other[0]}, {up.work} with "
             f"PROFILE={mine.profile}.\n  A run holds one profile; nothing was sent. Archive "
             f"{up.work} as another run: RUN=<a new id>")


def check_restore_origin(work, run, remote, units, tmp):
    """Every unit restored was built from one data set and one profile, those of WORK if it has
    any; returns the units archived without a record (by an older sync-up), which go unchecked."""
    archived, origins = fetch_origins(under(remote, "runs", run), tmp)
    theirs = origin_of(archived)
    origins = {u: o for u, o in origins.items() if u in units}
    for what, source, key in (("data", SOURCE, "data"), ("PROFILE", PROFILE, "profile")):
        groups = by_value({source: getattr(theirs, key), **{u: getattr(o, key)
                                                            for u, o in origins.items()}})
        if len(groups) > 1:
            fail(f"run {run} on {remote} mixes stages built from different {what}, so no WORK "
                 f"can continue from it; nothing was restored:\n  "
                 + "\n  ".join(f"{what} {v[:12]}: {', '.join(names)}"
                               for v, names in groups.items()))
    mine = origin_of(work)
    data = theirs.data or next((o.data for o in origins.values()), "")
    profile = theirs.profile or next((o.profile for o in origins.values() if o.profile), "")
    if mine.data and data and mine.data != data:
        fail(f"{work} was built from other data than run {run}: {work}: data {mine.data[:12]} "
             f"({mine.path}); run {run}: data {data[:12]} ({theirs.path or 'path unknown'}). "
             f"Restore it into another WORK=...")
    if mine.profile and profile and mine.profile != profile:
        fail(f"{work} holds a PROFILE={mine.profile} run, run {run} is PROFILE={profile}: "
             f"restore it into another WORK=...")
    return [u for u in units if u not in origins and u != SOURCE.split("/")[0]]
