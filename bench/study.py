"""The CPU budget study: what buys the most held-out accuracy per CPU minute (make study).

Trains fold 0's networks of the real data under a set of configurations, each through the real
04_finetune.py (and 03_jigsaw.py for the jigsaw rows), and writes OUT/study.csv and study.png:
per configuration the minutes it cost and the held-out era RMSE it reached after its last epoch
(8-view TTA mean, eval.csv's last row), for each of the target, onehot and sortingdate heads.

    python bench/study.py --folds work/01_sgkfold --hvr work/02_hvr --ids work/00_validate/photos.csv \
        --photos DATA/photos --out work/study --python .venv/bin/python

The axes, each against one base (one network with four heads, ResNet18, 48 px, AdamW with a
one-cycle schedule peaking at 2e-3, 12 epochs of one random view per image, random init):
  epochs      6 / 12 / 24; and the cpu profile's network (ce_24 below) for 32 epochs (ce_32:
              what the hour's unspent minutes would buy)
  schedule    the recipe's Adam halved per 8-view-equivalent epoch (every 8 one-view epochs),
              the same halved per one-view epoch, one-cycle
  size        48 / 64 / 96 px at about equal minutes (12 / 7 / 3 epochs)
  arch        ResNet34 for 12 epochs against ResNet18 for 24 (about equal minutes)
  heads       four single-task networks of 6 epochs each against one four-head network of 24
  jigsaw      0 / 2 / 4 jigsaw epochs (about 0 / 3 / 6 minutes) at about equal minutes of the
              whole pipeline, where one jigsaw serves all 4.5 network-equivalents of 04:
              jigsaw minutes + 4.5 x fine-tune minutes ~ 4.5 x the base's.
  init        torchvision's random init against the seed's xavier_normal (gain 0.02).
  ensemble    two networks of 24 epochs (seeds 0 and 1; seed 0 is epochs_24's run), their
              8-view outputs averaged, against one; and 64 px for 24 epochs (about the same
              minutes as two at 48 px).
  precision   24 epochs in bf16 autocast against float32 (the rows above: float32), one seed and
              two (against seeds_2).
  loss        24 epochs with the onehot head a cross-entropy classifier (its era: the softmax's
              expected class), against epochs_24 (MSE on the one-hot, the recipe's).
Two axes lost their study and their options left 04 after it: augment (shifted views, shift_24
and shift_40; mixup, mixup_24 and mixup_36) and inputs (photo inputs beside the pooled features,
shape_24 and stats_24). Those rows were measured at revision 6f8466d (`git show
6f8466d:bench/study.py` trains them), and so was the cosine schedule (row cosine), whose option
left 03 and 04 after revision 4a94b4a; their figures stay in docs/profiles.md and
docs/results.md, and in study.csv a row of a configuration no longer here is kept as it was,
after the others.
Resumable: a finished configuration (its runs' DONE) is not trained again; its minutes come
from the runs' provenance.json. Timings need a quiet machine: every run uses all the cores, and
load_1min (the highest 1-minute load average as its runs ended, kept in each run's load.txt)
shows when it did not have one: ~2 is the run's own two threads.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import common  # noqa: E402  (the repository's shared module; bench/ is optional tooling)
import reporting  # noqa: E402
import tasks  # noqa: E402

# -----------------------------------------------------------------------------
BASE = dict(net="multi", size=48, arch="resnet18", epochs=12, optim="adamw", lr=2e-3,
            betas=(0.9, 0.999), weight_decay=0.01, schedule="onecycle", init="scratch", jigsaw=0,
            seeds=1, precision="fp32", loss="mse")
RECIPE_ADAM = dict(optim="adam", lr=1e-3, betas=(0.5, 0.999), weight_decay=0.0, schedule="halve")
PIPELINE_NETS = 4.5      # 04's work per fold-0 network: folds 0-2, and `all` on 1.5x the rows
CONFIGS = [              # (name, axis, changes to BASE)
    ("base", "base", {}),
    ("epochs_6", "epochs", dict(epochs=6)),
    ("epochs_24", "epochs", dict(epochs=24)),
    ("halve_per_8views", "schedule", dict(RECIPE_ADAM, halve_views=8)),
    ("halve_per_view", "schedule", dict(RECIPE_ADAM, halve_views=1)),
    ("size_64", "size", dict(size=64, epochs=7)),
    ("size_96", "size", dict(size=96, epochs=3)),
    ("resnet34", "arch", dict(arch="resnet34")),
    ("four_networks", "heads", dict(net="tasks", epochs=6)),
    ("jigsaw_2", "jigsaw", dict(init="jigsaw", jigsaw=2, epochs=8)),
    ("jigsaw_4", "jigsaw", dict(init="jigsaw", jigsaw=4, epochs=4)),
    ("xavier_init", "init", dict(init="xavier")),
    ("size_64_24", "size", dict(size=64, epochs=24)),
    ("seeds_2", "ensemble", dict(epochs=24, seeds=2, seed0="epochs_24")),
    ("bf16_24", "precision", dict(epochs=24, precision="bf16")),
    ("bf16_seeds_2", "precision", dict(epochs=24, precision="bf16", seeds=2, seed0="bf16_24")),
    ("ce_24", "loss", dict(epochs=24, loss="ce")),
    ("ce_32", "epochs", dict(epochs=32, loss="ce")),   # the cpu profile's network, 8 more epochs
    ("ce_48", "epochs", dict(epochs=48, loss="ce")),   # the budget's rungs for a fast machine:
    ("resnet34_ce_32", "arch", dict(arch="resnet34", epochs=32, loss="ce")),   # longer, or deeper
]
JIGSAW_EPOCHS = 4        # one jigsaw run; its epoch-2 checkpoint is the 2-epoch jigsaw (the
                         # recipe's per-epoch halving does not depend on the run's length)

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--folds", required=True, help="stage 01's directory")
p.add_argument("--hvr", required=True, help="stage 02's 48 px store (PROFILE=cpu)")
p.add_argument("--ids", required=True, help="00_validate/photos.csv (for the 64 and 96 px stores)")
p.add_argument("--photos", required=True, help="DATA/photos")
p.add_argument("--out", required=True, help="the study's directory")
p.add_argument("--python", default=sys.executable)
p.add_argument("--only", nargs="*", default=None, help="configuration names to run (default: all)")
p.add_argument("--epochs", type=int, default=None,
               help="fine-tune epochs of every configuration instead of its own: a check of the script "
                    "at toy cost (tests/test_bench.py), whose rows then compare nothing")


def sh(cmd):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), check=True, cwd=ROOT)


def store(args, size):
    """The image store at `size` px: 02's own at 48, else one the study builds with 02."""
    if size == 48:
        return Path(args.hvr)
    out = Path(args.out) / f"02_hvr_{size}"
    if not common.is_done(out):
        sh([ROOT / "02_hvr_augment.sh", "--photos", args.photos, "--ids", args.ids, "--out", out,
            "--size", size, "--mode", "stretch", "--python", args.python])
    return out


def jigsaw(args, epochs):
    """A finished jigsaw directory whose last checkpoint is epoch `epochs`, and its minutes."""
    full = Path(args.out) / "jigsaw"
    if not common.is_done(full):
        sh([args.python, "03_jigsaw.py", "--hvr", args.hvr, "--out", full, "--profile", "cpu",
            "--arch", "resnet18", "--epochs", JIGSAW_EPOCHS])
    minutes = wall_minutes(full) * epochs / JIGSAW_EPOCHS
    if epochs == JIGSAW_EPOCHS:
        return full, minutes
    part = Path(args.out) / f"jigsaw_e{epochs}"
    if not common.is_done(part):
        part.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(full / common.ckpt_name(epochs), part / common.ckpt_name(epochs))
        common.mark_done(part)
    return part, minutes


def wall_minutes(run_dir):
    return json.loads((Path(run_dir) / "provenance.json").read_text())["wall_seconds"] / 60


def finetune(args, name, cfg, task, hvr, jig, seed=0):
    runs = Path(args.out) / "runs" / name
    run_dir = runs / common.run_name(task, "0", seed)
    if not common.is_done(run_dir):
        sh([args.python, "04_finetune.py", "--task", task, "--fold", "0", "--folds", args.folds,
            "--hvr", hvr, "--jigsaw", jig or Path(args.out) / "no_jigsaw", "--out", runs, "--profile", "cpu",
            "--arch", cfg["arch"], "--epochs", cfg["epochs"], "--batch", 64, "--views", 1,
            "--init", cfg["init"], "--optim", cfg["optim"], "--lr", cfg["lr"],
            "--betas", *cfg["betas"], "--weight-decay", cfg["weight_decay"],
            "--schedule", cfg["schedule"], "--halve-views", cfg.get("halve_views", 8), "--eval-views", 1,
            "--eval-rows", 0, "--seed", seed, "--precision", cfg["precision"], "--loss", cfg["loss"]])
        # the 1-minute load average as the run ended: ~2 on a quiet machine (its own 2 threads)
        (run_dir / "load.txt").write_text(f"{os.getloadavg()[0]:.2f}\n")
    last = pd.read_csv(run_dir / "eval.csv").iloc[-1]
    load = float((run_dir / "load.txt").read_text()) if (run_dir / "load.txt").exists() else float("nan")
    return wall_minutes(run_dir), last, load, run_dir


def ensemble_rmse(args, run_dirs, hvr):
    """{head: held-out era RMSE} of the runs' last checkpoints, their 8-view means averaged."""
    import torch
    import checkpointing
    import inference
    import models
    import pixels
    held = common.read_fold(args.folds, "0", "test")
    images, ids, meta = pixels.load_store(hvr)
    px = pixels.to_pixels(images[pixels.store_rows(ids, held["object_id"], hvr).numpy()], torch.device("cpu"))
    vidx = pixels.view_index(meta["size"])
    outs, config = [], None
    for run_dir in run_dirs:
        state = checkpointing.load_checkpoint(checkpointing.list_checkpoints(run_dir)[-1][2])
        config = state["config"]
        model = models.build_model(config["arch"], config["outputs"])
        model.load_state_dict(state["model"])
        views = inference.predict_views(model, px, vidx, torch.device("cpu"), 256,
                                        precision=config.get("precision", "fp32"))
        outs.append(tasks.in_units("multi", views, config).mean(1).numpy())    # as 05 writes them
    mean = sum(outs) / len(outs)
    names = [tasks.column(t, d) for t in tasks.TASKS for d in range(tasks.TASK_DIMS[t])]   # 05's columns
    table = pd.DataFrame(mean, columns=names)
    y = held["target"].to_numpy()
    return {h: float(((e - y) ** 2).mean() ** 0.5) for h, e in tasks.head_eras(table).items()}


def run_config(args, name, axis, changes):
    cfg = dict(BASE, **changes)
    if args.epochs:
        cfg["epochs"] = args.epochs
    hvr = store(args, cfg["size"])
    jig, jig_minutes = jigsaw(args, cfg["jigsaw"]) if cfg["jigsaw"] else (None, 0.0)
    row = dict(name=name, axis=axis, **{k: v for k, v in cfg.items() if k not in ("betas", "seed0")})
    rmse, minutes, loads = {}, 0.0, []
    for task in (tasks.TASKS if cfg["net"] == "tasks" else ("multi",)):
        run_dirs = []
        for seed in range(cfg["seeds"]):
            runs_name = cfg.get("seed0", name) if seed == 0 else f"{name}_seed{seed}"
            m, last, load, run_dir = finetune(args, runs_name, cfg, task, hvr, jig, seed)
            minutes += m
            loads.append(load)
            run_dirs.append(run_dir)
        for head in ("target", "onehot", "sortingdate"):
            col = tasks.eval_column(head)
            if col in last and pd.notna(last[col]):
                rmse[head] = float(last[col])
        if cfg["seeds"] > 1:
            rmse = ensemble_rmse(args, run_dirs, hvr)
    row.update(fine_tune_minutes=round(minutes, 2), jigsaw_minutes=round(jig_minutes, 2),
               pipeline_minutes=round(jig_minutes + PIPELINE_NETS * minutes, 1),
               **{tasks.eval_column(h): round(v, 4) for h, v in rmse.items()})
    row["rmse_best"] = min(rmse.values())
    row["load_1min"] = max(loads)
    return row


def plot(df, path):
    plt = reporting.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for axis, part in df.groupby("axis"):
        ax.scatter(part["pipeline_minutes"], part[tasks.eval_column("target")], label=axis, s=40)
        for _, r in part.iterrows():
            ax.annotate(r["name"], (r["pipeline_minutes"], r[tasks.eval_column("target")]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="04's minutes for the whole pipeline (4.5 x fold 0's) + jigsaw minutes",
           ylabel="fold 0 held-out era RMSE, target head (8-view TTA)",
           title="What a CPU minute buys (make study)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    reporting.save_figure(fig, path, dpi=100)


def main():
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((Path(args.hvr) / "meta.json").read_text())
    if meta["size"] != 48:
        common.fail(f"{args.hvr}: a {meta['size']} px store; the study's base is 48 px (PROFILE=cpu)")
    started = time.time()
    # --only runs a few configurations; the others keep the rows an earlier pass wrote
    before = pd.read_csv(out / "study.csv") if (out / "study.csv").exists() else pd.DataFrame({"name": []})
    # rows written before a setting existed ran with the base's value of it
    before = before.fillna({k: v for k, v in BASE.items() if k in before and not isinstance(v, tuple)})
    kept = {r["name"]: r for r in before.to_dict("records")}
    rows = {name: kept[name] for name, _, _ in CONFIGS if args.only and name not in args.only and name in kept}
    retired = [r for name, r in kept.items() if name not in {n for n, _, _ in CONFIGS}]   # measured at 6f8466d

    def table():
        """Every row so far, in CONFIGS' order, then the retired ones, written out (a kill loses
        no finished row)."""
        df = pd.DataFrame([rows[n] for n, _, _ in CONFIGS if n in rows] + retired)
        common.write_csv(out / "study.csv", df)
        return df

    for name, axis, changes in CONFIGS:
        if not args.only or name in args.only:
            rows[name] = run_config(args, name, axis, changes)
            print(table().drop(columns=["optim", "betas"], errors="ignore").to_string(index=False), flush=True)
    plot(table(), out / "study.png")
    common.write_provenance(out, vars(args), started)
    print(f"wrote {out / 'study.csv'} and {out / 'study.png'} [{(time.time() - started) / 60:.1f} min]")


if __name__ == "__main__":
    main()
