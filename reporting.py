"""Reading runs while they go and after: loss curves, the status table of the 03/04 runs, the
CV line and the held-out-per-epoch plots. No torch: 07 and `make status` start fast.

    python reporting.py status --jigsaw WORK/03_jigsaw --finetune WORK/04_finetune   # the runs, CV per head
    python reporting.py cv-plot --runs WORK/04_finetune     # cv_<net>.png
"""
import argparse
from pathlib import Path

import numpy as np

import common
import tasks


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported when a picture is drawn)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi=90):
    """Write `fig` to `path` as PNG, atomically, and free it."""
    with common.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)


def plot_curves(path, csv_path, columns, title, x="step"):
    plt = pyplot()
    import pandas as pd
    df = pd.read_csv(csv_path)
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 3.5))
    for ax, col in zip(np.atleast_1d(axes), columns):
        for label, part in (df.groupby("split") if "split" in df else [("", df)]):
            ax.plot(part[x], part[col], marker="." if len(part) < 50 else None, label=label or None)
        ax.set_xlabel(x)
        ax.set_ylabel(col)
        if "split" in df:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


# -----------------------------------------------------------------------------
def run_state(run_dir):
    """waiting / running / done / failed: <reason>, from the stamps and the run's lock."""
    import fcntl
    if (run_dir / "DONE").exists():
        return "done"
    lock = run_dir / ".running"
    if lock.exists():
        with open(lock) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "running"
    if (run_dir / "FAILED").exists():
        return "failed: " + (run_dir / "FAILED").read_text().strip()
    log = run_dir / "log.txt"
    if log.exists() and log.stat().st_size:
        last = [l for l in log.read_text(errors="replace").splitlines() if l.strip()][-1:]
        return "stopped: " + (last[0][-90:] if last else "")
    return "waiting"


def last_row(path):
    import pandas as pd
    if not path.exists():
        return {}
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return {}
    return df.iloc[-1].to_dict() if len(df) else {}


def seed_runs(finetune, net, fold):
    """[(seed, run directory)] of a net and fold: seed 0's (there or not), then every other
    seed's that exists (<net>_<fold>_s<k>), in seed order."""
    others = []
    for d in Path(finetune).glob(common.run_name(net, fold) + "_s*"):
        suffix = d.name.rsplit("_s", 1)[1]
        if suffix.isdigit() and int(suffix) > 0:
            others.append((int(suffix), d))
    return [(0, Path(finetune) / common.run_name(net, fold))] + sorted(others)


def status(jigsaw, finetune, nets=tasks.TASKS):
    """One table of the 03 run and every 04 run (stage 03's and 04's directories): those of `nets`
    (the make's NETS), whether started or not, and any other that exists; safe to read while they
    write."""
    import pandas as pd
    finetune = Path(finetune)
    runs = [("jigsaw", "-", Path(jigsaw))]
    runs += [(t, f if seed == 0 else f"{f} s{seed}", d) for t in tasks.NETS for f in common.FOLDS
             for seed, d in seed_runs(finetune, t, f)
             if t in nets or d.exists()]
    rows = []
    for task, fold, d in runs:
        log = last_row(d / "loss.csv")
        ev = last_row(d / "eval.csv") if task != "jigsaw" else last_row(d / "holdout.csv")
        state = run_state(d) if d.exists() else "waiting"
        rmse = ev.get("rmse", ev.get("tile_acc", ""))
        rows.append({
            "task": task, "fold": fold,
            "epoch/step": f"{int(log['epoch'])}/{int(log['step'])}" if log else "",
            "loss": f"{log['loss']:.4f}" if log else "",
            "eval": "" if rmse == "" or pd.isna(rmse) else
                    (f"rmse {rmse:.4f} (e{int(ev['epoch'])})" if task != "jigsaw" else f"tile acc {rmse:.3f} (e{int(ev['epoch'])})"),
            "img/s": f"{log['images_per_s']:.0f}" if log else "",
            "state": state,
        })
    print(pd.DataFrame(rows).to_string(index=False))
    for net in tasks.NETS:
        for head in (tasks.TASKS if net == "multi" else (net,)):
            line = fold_cv(finetune, net, head)
            if line:
                print(line)


def fold_cv(runs_dir, net, head=None):
    """The CV line of a network's head (default: the network's task): the held-out era RMSE of
    folds 0-2 pooled over their rows, at the last epoch all three have evaluated; None until
    they have, and for a head without an era."""
    import pandas as pd
    head = head or net
    evals = []
    for fold in common.FOLDS[:3]:
        path = Path(runs_dir) / common.run_name(net, fold) / "eval.csv"
        try:
            evals.append(pd.read_csv(path).query("split == 'heldout'").set_index("epoch"))
        except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError):
            return None
    common_epochs = set.intersection(*(set(e.index) for e in evals))
    if not common_epochs:
        return None
    epoch = max(common_epochs)
    col = tasks.eval_column(head) if tasks.eval_column(head) in evals[0] else "rmse"
    if col == "rmse" and head != net:
        return None
    rows = [e.loc[epoch] for e in evals]
    pooled = np.sqrt(sum(r["n"] * r[col] ** 2 for r in rows) / sum(r["n"] for r in rows))
    if not np.isfinite(pooled):     # word2vec: no era to score
        return None
    name = head if head == net else f"{net}/{head}"
    views = int(rows[0].get("views", 8))
    return (f"CV {name} (epoch {epoch}, {views} view{'s' if views > 1 else ''}, folds 0-2 pooled): "
            f"held-out RMSE {pooled:.4f} (per fold {' / '.join(f'{r[col]:.4f}' for r in rows)})")


def cv_plot(runs_dir, out_dir=None):
    """Per task: held-out era RMSE per epoch, one line per fold (the recipe's favourite).
    Writes cv_<task>.png into out_dir (default: runs_dir); returns their paths."""
    plt = pyplot()
    import pandas as pd
    runs_dir = Path(runs_dir)
    out_dir = Path(out_dir or runs_dir)
    written = []
    for task in tasks.NETS:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        drawn = 0
        for fold in common.FOLDS[:-1]:
            path = runs_dir / common.run_name(task, fold) / "eval.csv"
            if path.exists():
                ev = pd.read_csv(path)
                col = "rmse" if ev["rmse"].notna().any() else "loss"
                ax.plot(ev["epoch"], ev[col], "o-", label=f"fold {fold}")
                ax.set_ylabel(f"held-out {'era RMSE' if col == 'rmse' else 'loss'}")
                drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set(xlabel="epoch", title=f"{task}: held-out per epoch")
        ax.legend()
        fig.tight_layout()
        save_figure(fig, out_dir / f"cv_{task}.png")
        written.append(out_dir / f"cv_{task}.png")
    return written


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("status", help="table of the 03 run and every 04 run")
    s.add_argument("--jigsaw", required=True, help="stage 03's directory")
    s.add_argument("--finetune", required=True, help="stage 04's directory")
    s.add_argument("--nets", nargs="+", default=list(tasks.TASKS), choices=tasks.NETS,
                   help="the networks per fold a run will train (make's NETS), listed before they start")
    c = sub.add_parser("cv-plot", help="WORK/04_finetune/cv_<net>.png")
    c.add_argument("--runs", required=True)
    args = p.parse_args()
    if args.command == "status":
        return status(args.jigsaw, args.finetune, args.nets)
    for path in cv_plot(args.runs):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
