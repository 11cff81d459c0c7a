"""Reading runs while they go and after: loss curves, the status table of the 03/04 runs, the
CV line and the held-out-per-epoch plots, and 07's run report (report.md). No torch: 07 and
`make status` start fast.

    python reporting.py status --jigsaw WORK/03_jigsaw --finetune WORK/04_finetune   # the runs, CV per head
    python reporting.py cv-plot --runs WORK/04_finetune     # cv_<net>.png
"""
import argparse
import json
import shutil
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
    others = sorted((parsed[2], d) for d in Path(finetune).glob(common.run_name(net, fold) + "_s*")
                    if (parsed := common.parse_run_name(d.name)) and parsed[2] > 0)
    return [(0, Path(finetune) / common.run_name(net, fold))] + others


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


def stack_plots(out, shown, y, final):
    """06's pictures: importance.png, the submitted model's top 25 features (`shown`: a booster's
    gain or a blend's weight per input); confusion.png, the true era against `final` rounded."""
    import pandas as pd

    plt = pyplot()
    gain = shown.sort_values()[-25:]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.barh(gain.index, gain.to_numpy())
    ax.set(title="The submission's model: LightGBM gain or blend weight, top 25", xlabel="importance")
    fig.tight_layout()
    save_figure(fig, out / "importance.png")
    cm = pd.crosstab(pd.Series(y, name="true era"), pd.Series(np.rint(final).astype(int), name="predicted (rounded)"))
    classes = range(tasks.N_CLASSES)
    cm = cm.reindex(index=classes, columns=classes, fill_value=0)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm.to_numpy(), cmap="Blues")
    for (i, j), v in np.ndenumerate(cm.to_numpy()):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set(xticks=classes, yticks=classes, xlabel="predicted (rounded)", ylabel="true era",
           title="out-of-fold confusion")
    fig.tight_layout()
    save_figure(fig, out / "confusion.png")


def blend_weights(params):
    """{blend: {input: weight}} of 06's params.json (a run before blend_steps kept one blend's, flat)."""
    weights = params.get("blend_weights", {})
    return {"blend": weights} if "intercept" in weights else weights


def stage_times(stage_dirs):
    """(stage or stage/run, wall seconds, revision) of every provenance.json in the directories
    and their run directories."""
    import pandas as pd

    rows = []
    for stage in map(Path, stage_dirs):
        for prov in sorted(stage.glob("provenance.json")) + sorted(stage.glob("*/provenance.json")):
            info = json.loads(prov.read_text())
            rows.append((str(prov.parent.relative_to(stage.parent)), info.get("wall_seconds", float("nan")),
                         info.get("git_revision", "")))
    return pd.DataFrame(rows, columns=["stage", "wall_s", "revision"])


def stage_minutes(times):
    """Minutes per stage: its runs' wall times summed (run one after another on a CPU)."""
    import pandas as pd

    per = times.assign(stage=times["stage"].str.split("/").str[0]).groupby("stage", sort=True)["wall_s"].sum() / 60
    total = pd.DataFrame({"stage": ["total"], "minutes": [float(per.sum())]})
    return pd.concat([per.rename("minutes").reset_index(), total], ignore_index=True)


def budget_lines(finetune, minutes):
    """The report's budget section: the plan budget.py wrote (04's budget.json), its predicted
    minutes against the stages' actual ones, and whether the run went over; none unplanned."""
    path = Path(finetune) / "budget.json"
    if not path.exists():
        return []
    plan = json.loads(path.read_text())
    actual = float(minutes["minutes"].iloc[-1])
    over = actual - plan["budget_minutes"]
    verdict = (f"**over the budget by {over:.1f} min**" if over > 0 else
               f"within the budget ({-over:.1f} min to spare)")
    predicted = ("nothing predicted (the rung of runs already finished)" if plan.get("predicted_minutes") is None
                 else f"predicted {plan['predicted_minutes']:.1f} min")
    return ["## The budget\n",
            f"- plan: {plan['why']}",
            f"- {predicted}, actual {actual:.1f} min (the stages' minutes above): {verdict}\n"]


def markdown(df, floatfmt="{:.4f}"):
    cells = [[floatfmt.format(v) if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "".join("| " + " | ".join(r) + " |\n" for r in cells)


def write_report(out, sub, *, data, jigsaw, finetune, stack, timed):
    """07's report.md in `out`, with its pictures beside it: what was submitted (sub: the
    submission) and the recipe's own beside it, every model's CV (06's `stack` directory), each
    fine-tune run's held-out RMSE per epoch (04's `finetune`), 03's loss (`jigsaw`), and the
    minutes of every unit of the `timed` stage directories."""
    import pandas as pd

    jigsaw, finetune, stack = Path(jigsaw), Path(finetune), Path(stack)
    pictures = []
    if (jigsaw / "loss.png").exists():
        shutil.copyfile(jigsaw / "loss.png", out / "jigsaw_loss.png")
        pictures.append(("Jigsaw pretraining: loss and tile accuracy (train, held-out photos)", "jigsaw_loss.png"))
    for path in cv_plot(finetune, out):
        pictures.append((f"Fine-tune: held-out per epoch, {path.stem[3:]}", path.name))
    for name, title in (("importance.png", "Stacking: feature importance"), ("confusion.png", "Out-of-fold confusion")):
        if (stack / name).exists():
            shutil.copyfile(stack / name, out / name)
            pictures.append((title, name))

    cv = pd.read_csv(stack / "cv.csv", dtype={"fold": str})
    params = json.loads((stack / "params.json").read_text())
    runs, per_epoch = [], {}
    for net in tasks.NETS:
        for fold, seed, run_dir in ((f, seed, d) for f in common.FOLDS for seed, d in seed_runs(finetune, net, f)):
            ev = run_dir / "eval.csv"
            if ev.exists():
                df = pd.read_csv(ev)
                last = df.iloc[-1]
                prov = ev.parent / "provenance.json"
                wall = json.loads(prov.read_text())["wall_seconds"] if prov.exists() else float("nan")
                runs.append({"network": net, "fold": fold, "seed": seed, "epoch": int(last["epoch"]), "split": last["split"],
                             "views": int(last.get("views", 8)), "loss": float(last["loss"]),
                             "era_rmse": float(last["rmse"]), "minutes": wall / 60,
                             # evaluation's share of the run (inside the trainer on a CPU)
                             "eval_share": float(df["seconds"].sum()) / wall if "seconds" in df else float("nan")})
                per_epoch[run_dir.name] = df.set_index("epoch")["rmse"]
    epochs = pd.DataFrame(per_epoch).rename_axis("epoch").reset_index() if per_epoch else None
    minutes = stage_minutes(stage_times(timed))
    profile = json.loads((jigsaw / "provenance.json").read_text())["config"].get("profile", "?") \
        if (jigsaw / "provenance.json").exists() else "?"
    text = ["# Run report\n",
            f"- data: `{data}`; profile: `{profile}`; revision: `{common.started_revision()}`",
            f"- submission: `submission.csv`, {len(sub)} rows, mean {sub['target'].mean():.3f}, "
            f"min {sub['target'].min():.3f}, max {sub['target'].max():.3f}",
            f"- submitted (`SUBMIT={params['submit']}`): stack `{params['stack']}`, post-processing "
            f"`{params['post']}` (ratio {params['ratio']}, threshold {params['threshold']}): "
            f"CV **{params['cv_overall']['final']:.4f}**",
            f"- the recipe's own submission (seed stack of its 104 columns, 0.5 / 0.94): CV "
            f"**{params['cv_overall']['recipe']:.4f}**; the per-photo features alone (statistics and k-means): "
            f"{params['cv_overall']['meta_only']:.4f}; best iterations {params['best_iterations']}",
            *(f"- `{name}`'s weights (fitted on every row): " + ", ".join(f"{k} {v:.3f}" for k, v in weights.items())
              for name, weights in blend_weights(params).items()),
            "\n## Cross-validation (RMSE on the era, out-of-fold)\n",
            "Columns: constant train mean; LightGBM on the per-photo features alone (02's statistics and the "
            "photos' k-means features: meta_only; the statistics alone: stats_only); each network's TTA "
            "mean; the LightGBM stack in both modes, without and with the statistics (_meta); the linear "
            "blends of the heads and the statistics (`blend`; `blend_steps`: onehot's class probabilities "
            "as P(era >= c)); the recipe's own submission (`recipe`); the submitted prediction (`final`, "
            "its stack and post-processing chosen nested); the submitted stack with the recipe's 0.5/0.94.\n",
            markdown(cv), "## Fine-tune runs, last epoch\n",
            markdown(pd.DataFrame(runs)) if runs else "(none)\n",
            "## Held-out era RMSE per epoch (fold all: its own train rows)\n",
            "The views scored per epoch are in the table above; a `multi` network's column is its "
            "`target` head (eval.csv has every head).\n",
            markdown(epochs) if epochs is not None else "(none)\n",
            "## Minutes per stage\n", markdown(minutes, "{:.1f}"), *budget_lines(finetune, minutes),
            "## Wall time of every unit\n", markdown(stage_times(timed), "{:.1f}"), "## Pictures\n"]
    text += [f"### {title}\n\n![{title}]({name})\n" for title, name in pictures]
    common.write_text(out / "report.md", "\n".join(text))


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
