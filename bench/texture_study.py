"""The statistics' booster (06's meta_only) with and without each texture group of photo_stats.py
(TEXTURE_GROUPS: the full-resolution descriptors and the JPEG's encoding facts), on a WORK whose
stages 01 and 02 are done (the real data: `make folds hvr DATA=... PROFILE=cpu WORK=...`).

Variants: `base`, the columns of stats.csv that are in no texture group; `base+G` for each group G
in this WORK's stats.csv; `base+all`; then, from the best single group, base plus the groups added
one at a time, each step the group that lowers the pooled CV most, while one does (groups that
each help alone can overlap). Each is scored as 06 scores meta_only (cross_validate with
META_PARAMS, each fold early-stopped on its held-out side), pooled over the out-of-fold rows and
per fold (the rows whose out-of-fold fold it is, as cv.csv). Where the WORK holds a finished 06
(06_stack/oof.csv), also the blend's CV: 06's blend of oof.csv's network eras with each variant's
meta_only. Adopted: the groups that forward selection added.

    python bench/texture_study.py --work work-real [--write docs/texture.md]
"""
import argparse
import sys
from pathlib import Path

import pandas as pd

import benchlib
import common
import photo_stats
import stacking as stack

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--work", required=True, help="a WORK with 01_sgkfold and 02_hvr done (and perhaps 06_stack)")
p.add_argument("--write", default=None, help="also write the table as a markdown page here")


def groups_present(meta):
    """(base columns, {group: its columns}) of meta (06's meta_table, prefixed meta_): the texture
    groups this WORK's stats.csv holds, and every column in none of them."""
    groups = {g: [f"meta_{c}" for c in cols] for g, cols in photo_stats.TEXTURE_GROUPS.items()
              if all(f"meta_{c}" in meta for c in cols)}
    texture = {f"meta_{c}" for c in photo_stats.NATIVE_ONLY}
    return [c for c in meta.columns if c not in texture], groups


def forward(groups, score):
    """The groups forward selection adds: from none, each step the group whose addition gives the
    lowest pooled CV, while that is lower than the current one. score(groups) -> its row."""
    chosen, best = [], score(())["pooled"]
    while len(chosen) < len(groups):
        trials = {g: score((*chosen, g))["pooled"] for g in groups if g not in chosen}
        g = min(trials, key=trials.get)
        if trials[g] >= best:
            break
        chosen, best = [*chosen, g], trials[g]
    return chosen


def table(rows, blended):
    """The markdown table of the variants' rows."""
    head = ["variant", "columns", "meta_only pooled", *(f"fold {k}" for k in stack.K), "rounds"]
    head += ["blend pooled"] if blended else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], str(r["columns"]), f"{r['pooled']:.4f}", *(f"{v:.4f}" for v in r["folds"]),
                 "/".join(map(str, r["rounds"]))]
        cells += [f"{r['blend']:.4f}"] if blended else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def page(command, rows, blended, adopted):
    """docs/texture.md: the command, what was measured, the table and the rule's verdict."""
    return "\n".join([
        "# Texture descriptors for the statistics' booster", "",
        "```", command, "```", "",
        "06's meta_only booster (META_PARAMS, 06's folds) on 02's per-photo statistics: `base` is the "
        "columns that predate the texture groups of photo_stats.py; `base+G` adds group G. Pooled: RMSE "
        "over every out-of-fold row; fold k: over the rows whose out-of-fold fold is k; rounds: each "
        "fold's early-stopped round count." + (" Blend: 06's blend of a finished run's network eras "
                                                "with that meta_only." if blended else ""), "",
        table(rows, blended), "",
        "Adopted (forward selection on the pooled CV): " + (", ".join(adopted) if adopted else "none") + ".", ""])


def main():
    args = p.parse_args()
    folds, oof_fold, meta, y = benchlib.statistics_inputs(args.work)
    run = Path(args.work) / "06_stack" / "oof.csv"
    nets = None
    if run.exists():
        oof = pd.read_csv(run, dtype={"object_id": str}).set_index("object_id").loc[oof_fold.index]
        nets = oof[[c for c in oof.columns if c.endswith("_model")]]
        benchlib.emit("blend_as_run_rmse", f"{stack.rmse(oof['blend'], y):.4f}", "")
    base, groups = groups_present(meta)
    rows = {}

    def score(chosen):
        """The row of base + these groups (scored once; printed as it is)."""
        name = "+".join(["base", *chosen]) if len(chosen) < len(groups) or len(groups) < 2 else "base+all"
        key = frozenset(chosen)
        if key in rows:
            return rows[key]
        columns = base + [c for g in groups if g in chosen for c in groups[g]]
        pred, _test, rounds, _model = stack.cross_validate(meta[columns], None, folds, oof_fold,
                                                           params=stack.META_PARAMS, patience=stack.META_EARLY_STOP)
        pred = stack.out_of_fold(pred, oof_fold)
        pooled, per_fold = benchlib.oof_scores(pred, y, oof_fold)
        row = {"name": name, "columns": len(columns), "pooled": pooled, "folds": per_fold, "rounds": rounds}
        tag = name.replace("+", "_")
        benchlib.emit(f"meta_only_{tag}_rmse", f"{pooled:.4f}", "")
        for k, value in zip(stack.K, per_fold):
            benchlib.emit(f"meta_only_{tag}_fold{k}_rmse", f"{value:.4f}", "")
        if nets is not None:
            inputs = nets.assign(meta_only=pred.loc[nets.index])
            blend_pred, *_rest = stack.blend(inputs, inputs, y.to_numpy(), oof_fold)
            row["blend"], _ = benchlib.oof_scores(stack.out_of_fold(blend_pred, oof_fold), y, oof_fold)
            benchlib.emit(f"blend_{tag}_rmse", f"{row['blend']:.4f}", "")
        rows[key] = row
        return row

    for chosen in ((), *((g,) for g in groups), tuple(groups)):
        score(chosen)
    adopted = forward(list(groups), score)
    print()
    print(table(rows.values(), nets is not None))
    if args.write:
        command = " ".join(["python", "bench/texture_study.py", *sys.argv[1:]])
        common.write_text(Path(args.write), page(command, rows.values(), nets is not None, adopted))


if __name__ == "__main__":
    main()
