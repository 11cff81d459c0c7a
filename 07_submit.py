"""Stage 07: the validated submission and the report a user opens first after a run.

Reads DATA/test.csv (and the sample submission when present), stage 06's directory, and for the
report stages 03's and 04's and every stage's provenance.json. Writes WORK/07_submit/:
  submission.csv    one column `target`, one row per test.csv row, in test.csv order
  report.md         what ran, how long, how well; with the pictures below beside it
  jigsaw_loss.png, cv_<task>.png, importance.png, confusion.png, provenance.json, DONE

    python 07_submit.py --data DATA --stack work/06_stack --finetune work/04_finetune \
        --jigsaw work/03_jigsaw --timed work/00_validate work/01_sgkfold ... --out work/07_submit

The submission is checked before it is written (every test id present once, every value finite
and within [0, 3], the sample submission's columns and length when there is one): a malformed
result is an error, never a file.
"""
import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

import common
import rawdata
import reporting
import tasks

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--data", required=True, help="raw-data directory (test.csv, sample submission)")
p.add_argument("--stack", required=True, help="stage 06's directory: the submission, its CV")
p.add_argument("--finetune", required=True, help="stage 04's directory: the runs' per-epoch RMSE")
p.add_argument("--jigsaw", required=True, help="stage 03's directory: its loss plot, the profile")
p.add_argument("--timed", nargs="*", default=[], help="stage directories whose provenance.json "
               "(and their runs') the report's minutes come from")
p.add_argument("--out", required=True, help="this stage's directory")


def submission(data, stack_dir):
    test = rawdata.load_test(data)
    pred = pd.read_csv(Path(stack_dir) / "test.csv", dtype={"object_id": str}).set_index("object_id")["final"]
    missing = test.loc[~test["object_id"].isin(pred.index), "object_id"]
    if len(missing):
        raise common.DataError(f"{stack_dir}/test.csv: no prediction for {common.show_ids(missing)}")
    values = pred.loc[test["object_id"]].to_numpy(dtype=float)
    bad = test.loc[~np.isfinite(values) | (values < 0) | (values > 3), "object_id"]
    if len(bad):
        raise common.DataError(f"{stack_dir}/test.csv: predictions not finite or outside [0, 3] for {common.show_ids(bad)}")
    sub = pd.DataFrame({"target": values})
    for name in rawdata.SAMPLE_SUBMISSIONS:
        sample = Path(data) / name
        if sample.exists():
            ref = rawdata.read_raw_csv(sample)
            if list(ref.columns) != list(sub.columns) or len(ref) != len(sub):
                raise common.DataError(f"{sample}: the submission has {list(sub.columns)} x {len(sub)}, "
                                       f"the sample {list(ref.columns)} x {len(ref)}")
    return sub


def stage_times(stage_dirs):
    """(stage or stage/run, wall seconds, revision) of every provenance.json in the directories
    and their run directories."""
    rows = []
    for stage in map(Path, stage_dirs):
        for prov in sorted(stage.glob("provenance.json")) + sorted(stage.glob("*/provenance.json")):
            info = json.loads(prov.read_text())
            rows.append((str(prov.parent.relative_to(stage.parent)), info.get("wall_seconds", float("nan")),
                         info.get("git_revision", "")))
    return pd.DataFrame(rows, columns=["stage", "wall_s", "revision"])


def stage_minutes(times):
    """Minutes per stage: its runs' wall times summed (run one after another on a CPU)."""
    per = times.assign(stage=times["stage"].str.split("/").str[0]).groupby("stage", sort=True)["wall_s"].sum() / 60
    total = pd.DataFrame({"stage": ["total"], "minutes": [float(per.sum())]})
    return pd.concat([per.rename("minutes").reset_index(), total], ignore_index=True)


def markdown(df, floatfmt="{:.4f}"):
    cells = [[floatfmt.format(v) if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "".join("| " + " | ".join(r) + " |\n" for r in cells)


def report(args, out, sub):
    jigsaw, finetune, stack = Path(args.jigsaw), Path(args.finetune), Path(args.stack)
    pictures = []
    if (jigsaw / "loss.png").exists():
        shutil.copyfile(jigsaw / "loss.png", out / "jigsaw_loss.png")
        pictures.append(("Jigsaw pretraining: loss and tile accuracy (train, held-out photos)", "jigsaw_loss.png"))
    for path in reporting.cv_plot(finetune, out):
        pictures.append((f"Fine-tune: held-out per epoch, {path.stem[3:]}", path.name))
    for name, title in (("importance.png", "Stacking: feature importance"), ("confusion.png", "Out-of-fold confusion")):
        if (stack / name).exists():
            shutil.copyfile(stack / name, out / name)
            pictures.append((title, name))

    cv = pd.read_csv(stack / "cv.csv", dtype={"fold": str})
    params = json.loads((stack / "params.json").read_text())
    runs, per_epoch = [], {}
    for net in tasks.NETS:
        for fold, seed, run_dir in ((f, seed, d) for f in common.FOLDS for seed, d in reporting.seed_runs(finetune, net, f)):
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
    profile = json.loads((jigsaw / "provenance.json").read_text())["config"].get("profile", "?") \
        if (jigsaw / "provenance.json").exists() else "?"
    text = ["# Run report\n",
            f"- data: `{args.data}`; profile: `{profile}`; revision: `{common.git_revision()}`",
            f"- submission: `submission.csv`, {len(sub)} rows, mean {sub['target'].mean():.3f}, "
            f"min {sub['target'].min():.3f}, max {sub['target'].max():.3f}",
            f"- submitted (`SUBMIT={params['submit']}`): stack `{params['stack']}`, post-processing "
            f"`{params['post']}` (ratio {params['ratio']}, threshold {params['threshold']}): "
            f"CV **{params['cv_overall']['final']:.4f}**",
            f"- the recipe's own submission (seed stack of its 104 columns, 0.5 / 0.94): CV "
            f"**{params['cv_overall']['recipe']:.4f}**; the per-photo statistics alone: "
            f"{params['cv_overall']['meta_only']:.4f}; best iterations {params['best_iterations']}\n",
            "## Cross-validation (RMSE on the era, out-of-fold)\n",
            "Columns: constant train mean; LightGBM on 02's per-photo statistics alone; each network's TTA "
            "mean; the LightGBM stack in both modes, without and with the statistics (_meta); "
            "the recipe's own submission (`recipe`); the submitted prediction (`final`, its stack and "
            "post-processing chosen nested); the submitted stack with the recipe's 0.5/0.94.\n",
            markdown(cv), "## Fine-tune runs, last epoch\n",
            markdown(pd.DataFrame(runs)) if runs else "(none)\n",
            "## Held-out era RMSE per epoch (fold all: its own train rows)\n",
            "The views scored per epoch are in the table above; a `multi` network's column is its "
            "`target` head (eval.csv has every head).\n",
            markdown(epochs) if epochs is not None else "(none)\n",
            "## Minutes per stage\n", markdown(stage_minutes(stage_times(args.timed)), "{:.1f}"),
            "## Wall time of every unit\n", markdown(stage_times(args.timed), "{:.1f}"), "## Pictures\n"]
    text += [f"### {title}\n\n![{title}]({name})\n" for title, name in pictures]
    common.write_text(out / "report.md", "\n".join(text))


def main():
    args = p.parse_args()
    started = time.time()
    out = common.start_stage(args.out)
    try:
        sub = submission(args.data, args.stack)
    except common.DataError as e:
        common.fail(str(e))
    common.write_csv(out / "submission.csv", sub, float_format="%.6f")
    report(args, out, sub)
    common.write_provenance(out, vars(args), started)
    common.mark_done(out)
    print(f"[07] {out / 'submission.csv'}: {len(sub)} rows; report {out / 'report.md'} "
          f"[{time.time() - started:.1f}s]", flush=True)


if __name__ == "__main__":
    main()
