"""The profiles: one table of every stage's settings and make's, for each size the pipeline runs at.

    full       the published recipe, on GPUs (the default with GPUS)
    cpu        the same pipeline made to learn what it can in an hour on 2 cores (the default
               without GPUS); each departure from the recipe was measured by `make study`
               (docs/profiles.md has the figures, row by row)
    smoke      every stage in seconds: the tests and the demo data (the default there)
    rehearsal  full's own path at toy size on a CPU (the settings in REHEARSAL differ)

A stage reads its table (`common.parse`: the command line over the profile); make reads the
"make" entry (NETS, SEEDS) and the names, with the command line below. Every setting is an option
of its stage or a make variable (tests/test_structure.py). Nothing here imports beyond the
standard library: make runs it with any python3, before .venv exists.

    python3 profiles.py make cpu                       # names=... nets=multi seeds=1
    python3 profiles.py setting --profile cpu --stage 02 size      # 48 (02_hvr_augment.sh)
"""
import argparse
import sys

TASKS = ("target", "onehot", "sortingdate", "word2vec")
RECIPE_OPTIM = dict(optim="adam", lr=1e-3, betas=(0.5, 0.999), weight_decay=0.0,
                    schedule="halve", halve_views=8)     # Adam, lr halved per 8-view epoch
CPU_OPTIM = dict(optim="adamw", lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01,
                 schedule="onecycle", halve_views=8)
PROFILES = {
    "full": {
        "make": dict(nets=TASKS, seeds=1),                     # four single-task networks per fold
        "02": dict(size=224),                                   # the recipe's 224 x 224 input
        "03": dict(arch="resnet34", width=64, epochs=5, batch=256, views=8, perms=8, holdout=512,
                   holdout_trains=True, ckpt_every=200, precision="auto", **RECIPE_OPTIM),   # every photo
        "04": dict(arch="resnet34", width=64, epochs=10, batch=256, views=8, ckpt_every=200, init="jigsaw",
                   eval_views=8, eval_rows=0, keep_epochs="all",   # 10: the seed's final networks
                   precision="auto", loss="mse", average_tail=0.0, **RECIPE_OPTIM),
        "05": dict(batch=512, precision="auto", fold_test="yes"),   # every network on every object
    },
    "cpu": {
        "make": dict(nets=("multi",), seeds=1),                # one four-head network; a second seed
                                                               # (SEEDS=2) fits on a machine twice as fast
        "02": dict(size=48),
        "03": dict(arch="resnet18", width=64, epochs=0, batch=64, views=1, perms=2, holdout=256,
                   holdout_trains=False, ckpt_every=50, precision="fp32", **RECIPE_OPTIM),   # no jigsaw
        "04": dict(arch="resnet18", width=64, epochs=24, batch=64,
                   views=1,                # one random view per image per epoch (the 8 are TTA)
                   ckpt_every=100, init="scratch", keep_epochs="last",
                   eval_views=1, eval_rows=384,    # per epoch: 1 view of 384 rows; the last: 8 of all
                   precision="fp32",
                   loss="ce",              # onehot a classifier: its probabilities for blend_steps
                   average_tail=0.375,     # the last 3/8 of the epochs' weights averaged (bench/weight_average.py)
                   **CPU_OPTIM),
        "05": dict(batch=256,              # ResNet18 at 48 px infers fastest at 128-256
                   fold_test="no",         # test.csv through fold all's networks only
                   precision="fp32"),
    },
    "smoke": {
        "make": dict(nets=("multi",), seeds=1),
        "02": dict(size=24),
        "03": dict(arch="resnet18", width=16, epochs=2, batch=32, views=1, perms=2, holdout=16,
                   holdout_trains=False, ckpt_every=4, precision="fp32", **dict(RECIPE_OPTIM, halve_views=1)),
        "04": dict(arch="resnet18", width=16, epochs=2, batch=16, views=1, ckpt_every=1000, init="jigsaw",
                   eval_views=8, eval_rows=0, keep_epochs="all",   # ckpt_every 1000: epoch ends only
                   precision="fp32", loss="mse", average_tail=0.0,
                   **dict(RECIPE_OPTIM, halve_views=1)),   # halved per (1-view) epoch: 8 steps at
                                                           # one rate diverge (held-out RMSE 3.1 vs 1.5)
        "05": dict(batch=64, precision="fp32", fold_test="yes"),
    },
}
# The rehearsal: `full` at toy scale on a CPU (make test): the recipe's own path (four single-task
# networks per fold, 8-view epochs halved per epoch, the evaluator a process of its own, 03 under
# torchrun; make PROFILE=rehearsal) that differs from `full` in these settings only:
REHEARSAL = {
    "02": dict(size=24),                                    # image size (full: 224)
    "03": dict(width=8, epochs=1, perms=2, holdout=16, ckpt_every=8),  # width (64), epochs (5), tile
                                                            # orders per view (8), held-out photos (512),
                                                            # steps per checkpoint (200)
    "04": dict(width=8, epochs=2, ckpt_every=5),            # width (64), epochs (10), steps per
                                                            # checkpoint (200): a mid-epoch one too
}
PROFILES["rehearsal"] = {stage: dict(settings, **REHEARSAL.get(stage, {}))
                         for stage, settings in PROFILES["full"].items()}


def cmd_make(args):
    """One line of words for the Makefile: names=a,b,... and, for a known profile, its make
    entry (nets=x,y seeds=N)."""
    words = [f"names={','.join(PROFILES)}"]
    if args.profile in PROFILES:
        words += [f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in PROFILES[args.profile]["make"].items()]
    print(" ".join(words))


def cmd_setting(args):
    table = PROFILES[args.profile].get(args.stage, {})
    if args.key not in table:
        sys.exit(f"error: profile {args.profile} has no setting {args.key!r} for stage {args.stage}")
    print(table[args.key])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="the profile names and one profile's make settings, as words")
    m.add_argument("profile")
    s = sub.add_parser("setting", help="print one setting of a stage's profile (02_hvr_augment.sh's size)")
    s.add_argument("--profile", required=True, choices=sorted(PROFILES))
    s.add_argument("--stage", required=True)
    s.add_argument("key")
    args = p.parse_args()
    {"make": cmd_make, "setting": cmd_setting}[args.command](args)


if __name__ == "__main__":
    main()
