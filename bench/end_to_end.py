"""Figure 4, end to end: wall time and peak memory of every stage of `make all`, in a fresh WORK.

Each stage is its own make goal, run in pipeline order (validate, folds, hvr, jigsaw, finetune,
features, stack, submit), so its figures are its own; then `make all` once more, which must find
nothing to do (its wall time is the cost of a no-op rerun; a file it changes in WORK is reported).
Per stage:
  wall       seconds from starting make to its exit;
  peak_rss   the largest sum of resident memory over make and all its descendants, read from
             /proc every 0.1 s (a stage's processes run together: 04's trainer and evaluator),
             or the largest single process's peak (wait4's ru_maxrss) when that is larger.

Demo data: 00_demo_data.py at the tests' size (128 train, 48 test objects; `make demo` makes
480/240, too slow for a bench on 2 cores), timed as stage `demo`, then given to make as DATA.
Real data (`--real`): the competition directory as DATA, PROFILE=cpu by default (~45 minutes on
2 cores). `--until GOAL` stops after that stage, its rerun then `make GOAL`: the script's own
check at a few seconds' cost (tests/test_bench.py), no figure of the pipeline.

    python bench/end_to_end.py --profile smoke                 # demo data
    python bench/end_to_end.py --real --data data/raw --profile cpu
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib

# -----------------------------------------------------------------------------
GOALS = ("validate", "folds", "hvr", "jigsaw", "finetune", "features", "stack", "submit")
DEMO_SIZE = (128, 48)     # train, test objects: the tests' demo size
POLL = 0.1                # seconds between /proc reads
PAGE = os.sysconf("SC_PAGE_SIZE")

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--profile", default="smoke", help="PROFILE for make (smoke, cpu)")
p.add_argument("--real", action="store_true", help="the real data (--data, $ATMA11_DATA or data/raw)")
p.add_argument("--data", default=None, help="real data directory (with --real)")
p.add_argument("--skip-missing", action="store_true", help="--real without real data: say so and exit 0")
p.add_argument("--demo-train", type=int, default=DEMO_SIZE[0])
p.add_argument("--demo-test", type=int, default=DEMO_SIZE[1])
p.add_argument("--tmp", default=None, help="parent of the fresh WORK (default: the system's temp dir)")
p.add_argument("--keep", action="store_true", help="keep the WORK and its logs")
p.add_argument("--prefix", default=None, help="name prefix of the printed lines (default e2e_<data>_<profile>)")
p.add_argument("--until", default=GOALS[-1], choices=GOALS,
               help="the last stage timed (default: all of them); the rerun is then `make UNTIL`")


def children(pid):
    """pid and all its descendants, from /proc/*/stat."""
    parent = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parent[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {pid}, [pid]
    while frontier:
        frontier = [c for c, pp in parent.items() if pp in frontier and c not in tree]
        tree.update(frontier)
    return tree


def rss_bytes(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def snapshot(work):
    """{path: (size, mtime)} of WORK's files, GPU-slot locks aside: a no-op rerun changes none."""
    return {str(f.relative_to(work)): (f.stat().st_size, f.stat().st_mtime_ns)
            for f in Path(work).rglob("*") if f.is_file() and ".gpu_locks" not in f.parts}


def measured(cmd, log, env=None, cwd=None):
    """Run cmd; return (exit code, wall seconds, peak bytes) as the docstring defines them."""
    peak, done = [0], threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes(children(proc.pid)))
            done.wait(POLL)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    watcher.join()
    return proc.returncode, wall, max(peak[0], usage.ru_maxrss * 1024)


def main():
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in benchlib.MAKE_ENV_DROP}
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench_e2e_") as tmp:
        tmp = Path(tmp).resolve()
        work, logs = tmp / "work", tmp / "logs"
        logs.mkdir()
        stages = []
        if args.real:
            data = benchlib.real_data_dir(args.data)
            if data is None:
                where = f"--data, ${benchlib.REAL_DATA_ENV} or data/raw"
                if args.skip_missing:
                    benchlib.note(f"end to end on the real data: skipped, no real data ({where})")
                    return
                benchlib.common.fail(f"--real: no real data ({where})")
            kind = "real"
        else:
            data, kind = tmp / "demo_raw", "demo"
            stages.append(("demo", [sys.executable, str(benchlib.ROOT / "00_demo_data.py"), "--out", str(data),
                                    "--train", str(args.demo_train), "--test", str(args.demo_test)]))
        make = ["make", "-C", str(benchlib.ROOT), "--no-print-directory"]
        variables = [f"WORK={work}", f"DATA={data}", f"PROFILE={args.profile}", "GPUS="]
        goals = GOALS[: GOALS.index(args.until) + 1]
        stages += [(goal, [*make, goal, *variables]) for goal in goals]
        rerun = "all" if goals == GOALS else args.until
        stages.append((f"rerun_{rerun}", [*make, rerun, *variables]))
        prefix = args.prefix or f"e2e_{kind}_{args.profile}"
        benchlib.note(f"{prefix}: make {rerun} in {work}, data {data}; logs {logs}"
                      f"{'' if args.keep else ' (removed at the end)'}; {os.cpu_count()} cores, "
                      f"load average {os.getloadavg()[0]:.1f}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
        total = 0.0
        changed = set()
        for name, cmd in stages:
            before = snapshot(work) if name.startswith("rerun_") else None
            with open(logs / f"{name}.log", "w") as log:
                code, wall, peak = measured(cmd, log, env=env, cwd=benchlib.ROOT)
            if code != 0:
                tail = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-20:]
                print("\n".join(tail), file=sys.stderr)
                print(f"error: stage {name} exited {code}: {' '.join(cmd)}", file=sys.stderr)
                if args.keep:
                    keep_outputs(tmp)
                sys.exit(1)
            if name.startswith("rerun_"):
                after = snapshot(work)
                changed = {f for f in before.keys() | after.keys() if before.get(f) != after.get(f)}
            else:
                total += wall
            benchlib.emit(f"{prefix}_{name}_wall", wall, "s")
            benchlib.emit(f"{prefix}_{name}_peak_rss", peak / 2 ** 20, "MiB")
        benchlib.emit(f"{prefix}_total_wall", total, "s")
        if changed:
            benchlib.note(f"{prefix}: the rerun of make {rerun} changed {len(changed)} file(s) in WORK, "
                          f"e.g. {sorted(changed)[:3]}")
        if args.keep:
            keep_outputs(tmp)


def keep_outputs(tmp):
    """--keep: move the WORK and logs out of the temporary directory before it is removed."""
    kept = Path(tempfile.mkdtemp(prefix="bench_e2e_kept_", dir=tmp.parent))
    for name in ("work", "logs", "demo_raw"):
        if (tmp / name).exists():
            (tmp / name).rename(kept / name)
    benchlib.note(f"kept in {kept}")


if __name__ == "__main__":
    main()
