"""Write docs/results.md from a finished WORK (and a study): the measured results, regenerated.

    python bench/results_doc.py --work work-real --time work-real/time.txt \
        --study work-study/study --out docs/results.md --command "make all DATA=... PROFILE=cpu"

Reads WORK/06_stack/cv.csv and params.json, WORK/04_finetune/*/eval.csv, every provenance.json,
the `/usr/bin/time -v` output of the run (wall time, peak memory), and the study's study.csv
and study.png (copied beside the page). Every figure on the page comes from those files.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import reporting  # noqa: E402
import tasks  # noqa: E402

# cv.csv's columns, in the page's words
MODELS = {
    "const_mean": "constant train mean",
    "meta_only": "LightGBM on 02's per-photo statistics and the photos' k-means features, 5 seeds (`meta_only`)",
    "stats_only": "LightGBM on 02's per-photo statistics alone, 5 seeds (`stats_only`)",
    "photo_ridge": "ridge on the statistics and k-means features, quantile-normalised (`photo_ridge`)",
    "target_model": "`target` head/network, 8-view TTA mean",
    "onehot_model": "`onehot` head/network, expected class",
    "sortingdate_model": "`sortingdate` head/network, year mapped to the era",
    "stack_seed": "the recipe's stack: seed mode, its 104 columns (`stack_seed`)",
    "stack_oof": "the same columns, oof mode (`stack_oof`)",
    "stack_seed_meta": "seed stack with the per-photo statistics (`stack_seed_meta`)",
    "stack_oof_meta": "oof stack with the statistics (`stack_oof_meta`)",
    "blend": "non-negative linear blend of the three heads and the three per-photo models, nested (`blend`)",
    "blend_steps": "the same with onehot's P(era >= 1, 2, 3) for its expected class (`blend_steps`)",
    "recipe": "the recipe's own submission: `stack_seed` + 0.5 / 0.94 (`SUBMIT=recipe`)",
    "final": "**the submission** (`SUBMIT=best`: stack and post-processing chosen nested)",
}

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--work", required=True)
p.add_argument("--time", help="the run's `/usr/bin/time -v` output")
p.add_argument("--study", help="make study's directory")
p.add_argument("--command", default="", help="the command that made WORK, as the page shows it")
p.add_argument("--readme", default=None,
               help="also set the CPU hour's CV in this README's headline table (its row `| this project's CPU hour`)")
p.add_argument("--note", default="", help="what the files cannot say about the run (a machine shared, a stage redone)")
p.add_argument("--out", required=True)


def time_figures(path):
    """(wall minutes, peak resident GB) from `/usr/bin/time -v`."""
    text = Path(path).read_text()
    wall = next(l.split("): ")[-1] for l in text.splitlines() if "Elapsed (wall clock)" in l)
    parts = [float(x) for x in wall.split(":")]
    seconds = sum(v * 60 ** k for k, v in enumerate(reversed(parts)))
    rss = next(int(l.split(":")[-1]) for l in text.splitlines() if "Maximum resident set size" in l)
    return seconds / 60, rss / 1024 ** 2      # kB -> GiB


def stage_minutes(work):
    """Minutes per stage of WORK, from every unit's provenance.json (07's table)."""
    return reporting.stage_minutes(reporting.stage_times(sorted(d for d in Path(work).iterdir() if d.is_dir())))


def per_epoch(work):
    cols = {}
    for ev in sorted(Path(work).glob("04_finetune/*/eval.csv")):
        df = pd.read_csv(ev).set_index("epoch")
        for head in ("target", "onehot", "sortingdate"):
            col = tasks.eval_column(head) if tasks.eval_column(head) in df else ("rmse" if ev.parent.name.startswith(head) else None)
            if col:
                name = ev.parent.name if col == "rmse" else f"{ev.parent.name}/{head}"
                cols[name] = df[col]
    table = pd.DataFrame(cols).rename_axis("epoch").reset_index()
    return table


def seed_table(work):
    """Per fold and head: each seed's network alone (its eval.csv, last epoch) and the seeds'
    average (05's heldout.parquet, the features 06 reads), on the same held-out rows; None
    for a WORK of one seed per fold."""
    import numpy as np
    rows = []
    for feat in sorted(Path(work).glob("05_features/*_[012]/heldout.parquet")):
        net, fold, _seed = common.parse_run_name(feat.parent.name)
        seeds = [d for _k, d in reporting.seed_runs(Path(work) / "04_finetune", net, fold)]
        if len(seeds) < 2:
            continue
        held = common.read_fold(Path(work) / "01_sgkfold", fold, "test").set_index("object_id")
        f = pd.read_parquet(feat).set_index("object_id")
        y = held["target"].loc[f.index].to_numpy()
        for head, era in tasks.head_eras(f).items():
            alone = [float(pd.read_csv(d / "eval.csv").iloc[-1][tasks.eval_column(head)]) for d in seeds]
            rows.append({"fold": fold, "head": head, **{f"seed {k}": v for k, v in enumerate(alone)},
                         "mean of the seeds alone": sum(alone) / len(alone),
                         "seeds averaged (05)": float(np.sqrt(np.mean((era - y) ** 2)))})
    return pd.DataFrame(rows) if rows else None


def seed_lines(work):
    seeds = seed_table(work)
    if seeds is None:
        return []
    return ["## Seeds: each fold's networks alone and averaged\n",
            "Held-out era RMSE (8-view TTA) of each seed's network after its last epoch, and of "
            "their outputs averaged as 05 writes them (what 06 stacks), on the same rows (the "
            "fold's whole held-out side).\n", reporting.markdown(seeds)]


def main():
    args = p.parse_args()
    work, out = Path(args.work), Path(args.out)
    cv = pd.read_csv(work / "06_stack" / "cv.csv", dtype={"fold": str})
    params = json.loads((work / "06_stack" / "params.json").read_text())
    profile = (work / "profile.txt").read_text().strip()
    revision = json.loads((work / "07_submit" / "provenance.json").read_text())["git_revision"]   # the run's
    lines = ["# Results on the real data\n",
             f"Generated by `bench/results_doc.py` on {time.strftime('%Y-%m-%d')} from the run of",
             f"\n    {args.command}\n" if args.command else "",
             f"(profile `{profile}`, revision `{revision}`). Out-of-fold RMSE on the era, "
             "3 grouped folds of the labelled rows:\n"]
    table = pd.DataFrame([{"model": MODELS.get(c, c),
                           **{k if k == "overall" else f"fold {k}": cv.loc[i, c] for i, k in enumerate(cv["fold"])}}
                          for c in MODELS if c in cv])
    lines += [reporting.markdown(table),
              f"Submitted: `{params['stack']}`, post-processing `{params['post']}` (ratio {params['ratio']}, "
              f"threshold {params['threshold']})."
              + "".join(f" `{name}` weights: {', '.join(f'{k} {v:.3f}' for k, v in weights.items())}."
                        for name, weights in reporting.blend_weights(params).items()) + "\n"]
    if args.time:
        wall, rss = time_figures(args.time)
        lines.append(f"Wall time {wall:.1f} min, peak resident memory {rss:.2f} GiB (`/usr/bin/time -v`).\n")
    budget = work / "04_finetune" / "budget.json"
    if budget.exists():
        plan = json.loads(budget.read_text())
        lines.append(f"The budget's plan (`04_finetune/budget.json`): {plan['why']}.\n")
    if args.note:
        lines.append(args.note + "\n")
    lines += ["## Minutes per stage (from each unit's provenance.json)\n",
              reporting.markdown(stage_minutes(work), "{:.1f}"),
              *seed_lines(work),
              "## Held-out era RMSE per epoch (folds 0-2: held-out side; fold all: its own train rows)\n",
              "Each epoch scores a fixed subset of the rows with the views the profile says "
              "(eval.csv's `n`, `views`); the last epoch all rows with all 8 views.\n",
              reporting.markdown(per_epoch(work))]
    if args.study:
        study = Path(args.study)
        df = pd.read_csv(study / "study.csv")
        # shift, mixup, photo_inputs: settings of the study's retired rows only (measured at 6f8466d)
        keep = ["name", "axis", "net", "size", "arch", "epochs", "optim", "lr", "schedule", "halve_views", "init", "jigsaw",
                "shift", "mixup", "precision", "photo_inputs", "seeds",
                "fine_tune_minutes", "pipeline_minutes", *map(tasks.eval_column, tasks.ERA_HEADS), "load_1min"]
        lines += ["## The budget study (`make study`)\n",
                  "Fold 0 of the same folds, each configuration trained through `04_finetune.py` "
                  "(and `03_jigsaw.py`); held-out era RMSE after the last epoch, 8-view TTA mean. "
                  "`pipeline_minutes`: 04's minutes for the whole pipeline (4.5 x fold 0's: folds 0-2 "
                  "and `all` on 1.5x the rows) plus the jigsaw's. `halve_views` matters only for the "
                  "`halve` schedule (views per image between halvings). `load_1min` is the load "
                  "average as the configuration's runs ended: ~2 is their own two threads; where it is "
                  "well above, the machine was shared and the minutes are upper bounds.\n",
                  reporting.markdown(df[[c for c in keep if c in df]], "{:g}")]
        if (study / "study.png").exists():
            shutil.copyfile(study / "study.png", out.parent / "study.png")
            lines.append("![held-out RMSE against minutes](study.png)\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    common.write_text(out, "\n".join(lines))
    print(f"wrote {out}")
    if args.readme:
        headline(Path(args.readme), float(cv.iloc[-1]["final"]))


HEADLINE = "| this project's CPU hour"


def headline(readme, cv):
    """The README's headline row of the CPU hour: its CV cell (the second) set to this run's."""
    lines = readme.read_text().split("\n")
    rows = [i for i, line in enumerate(lines) if line.startswith(HEADLINE)]
    if len(rows) != 1:
        common.fail(f"{readme}: no one row starting {HEADLINE!r} to set the CV in")
    cells = lines[rows[0]].split(" | ")
    cells[1] = f"{cv:.4f}"
    lines[rows[0]] = " | ".join(cells)
    common.write_text(readme, "\n".join(lines))
    print(f"set {readme}'s headline CV to {cv:.4f}")


if __name__ == "__main__":
    main()
