"""Stage 05: every view of every object the stacking needs, through one fine-tuned network.

Reads WORK/01_sgkfold, WORK/02_hvr, WORK/04_finetune/<task>_<fold>/ (its last epoch checkpoint;
with --seeds N also <task>_<fold>_s1/ ... _s<N-1>/, whose outputs are averaged view by view:
the fold's network is then the mean of N networks of different seeds).
Writes WORK/05_features/<task>_<fold>/:
  <split>.npz       object_id (N,) and outputs (N, 8, D) float32: the 8 views' raw outputs
  <split>.parquet   object_id + D x {mean, max, min, var} over the 8 views (what 06 reads)
  provenance.json, DONE
Splits: folds 0-2 -> train (the fold's train side), heldout (its test side), and with
--fold-test yes test (test.csv: the test side of 06's oof stacks, half of the stage's images);
fold all -> train, test. With --fold-test no (the cpu profile) 06 scores the oof stacks but
cannot submit them; a fold's test.* from an earlier --fold-test yes run is removed.

    python 05_features.py --task onehot --fold 1 --folds work/01_sgkfold --hvr work/02_hvr \
        --runs work/04_finetune --out work/05_features [--seeds 2]

Outputs are in the task's own units: the era (target), the one-hot scores (onehot; softmax
probabilities when it was trained with --loss ce), the year (sortingdate, de-standardised), the
20 word2vec coordinates. Columns are named <task>_<dim>_<stat>; a `multi` network's four heads
give the same columns as the four single-task networks. Every object of every split goes
through the network in one pass (inference mode, channels_last, 8 views per image; bf16
autocast where --precision says: the full profile's `auto` on GPUs), but a fold's held-out
side: 04's evaluator described it with the same network after its last epoch
(heldout_views.npz), and those outputs are used where they match (the epoch, the objects,
bf16 or not; provenance.json's heldout_from_evaluator lists the networks).
"""
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import checkpointing
import common
import distributed
import inference
import models
import pixels
import tasks
import training

# -----------------------------------------------------------------------------
CHUNK = 4096                            # images per progress step

p = common.profile_parser(__doc__.split("\n")[0])
p.add_argument("--task", required=True, choices=tasks.NETS, help="one task, or multi: all four heads")
p.add_argument("--fold", required=True, choices=common.FOLDS)
p.add_argument("--folds", required=True, help="stage 01's directory")
p.add_argument("--hvr", required=True, help="stage 02's image store")
p.add_argument("--runs", required=True, help="stage 04's directory")
p.add_argument("--out", required=True, help="this stage's directory (the run goes in <task>_<fold>/)")
p.add_argument("--batch", type=int, default=None, help="images per forward pass, 8 views each counted (profile)")
p.add_argument("--seeds", type=int, default=1, choices=range(1, 11), metavar="1-10",
               help="networks of seeds 0..N-1 to average (make SEEDS)")
p.add_argument("--fold-test", default=None, choices=["yes", "no"],
               help="folds 0-2: describe test.csv too (06's oof stacks' test side; the profile: "
                    "full, smoke yes, cpu no)")
p.add_argument("--precision", default=None, choices=inference.PRECISIONS,
               help="bf16 autocast: auto = on GPUs and CPUs with native bf16 (profile)")


def splits(folds_dir, fold, fold_test):
    """{split: object ids} this fold's model must describe."""
    ids = lambda k, s: common.read_fold(folds_dir, k, s)["object_id"]
    out = {"train": ids(fold, "train")}
    if fold != "all":
        out["heldout"] = ids(fold, "test")
    if fold == "all" or fold_test == "yes":
        out["test"] = ids("all", "test")
    return out


def to_device(chunk, device):
    """A host chunk on the device: on a GPU through pinned memory, asynchronously (a pageable copy
    is staged by the driver and holds the host until it is done; this one lets the host prepare
    the next chunk while the GPU works). As it is on a CPU."""
    if device.type == "cuda":
        return chunk.pin_memory().to(device, non_blocking=True)
    return chunk.to(device)


def main():
    args = common.parse(p, "05")
    training.configure_threads()
    dist = distributed.Dist()
    run = common.run_name(args.task, args.fold)
    stage = common.Stage(Path(args.out) / run)
    out = stage.dir
    unfinished = f"make finetune, or make fold TASK={args.task} FOLD={args.fold}"
    # each network is read for its own run, trained on the folds and the store 05 reads now
    inputs = dict(input_folds=checkpointing.input_identity(args.folds), input_hvr=checkpointing.input_identity(args.hvr))
    checkpoints = [checkpointing.finished_checkpoint(Path(args.runs) / common.run_name(args.task, args.fold, seed),
                                                     "05", unfinished, setup=dict(inputs, task=args.task,
                                                                                  fold=args.fold, seed=seed))
                   for seed in range(args.seeds)]

    images, ids, meta = pixels.load_store(args.hvr)
    wanted = splits(args.folds, args.fold, args.fold_test)
    if "test" not in wanted:             # an earlier run's, of --fold-test yes
        for suffix in (".npz", ".parquet"):
            (out / f"test{suffix}").unlink(missing_ok=True)
    training.banner("05", args.profile, dist, run=run, checkpoints=" ".join(str(c) for _, c in checkpoints),
                    **{k: len(v) for k, v in wanted.items()})
    every = pd.concat(wanted.values(), ignore_index=True)
    ends = np.cumsum([0, *map(len, wanted.values())]).tolist()
    span = {split: slice(a, b) for split, a, b in zip(wanted, ends[:-1], ends[1:])}   # rows of `every`
    px = pixels.to_pixels(images[pixels.store_rows(ids, every, args.hvr).numpy()], "cpu")
    vidx = pixels.view_index(meta["size"]).to(dist.device)
    seeds, reused = [], []
    for epoch, ckpt in checkpoints:       # one pass per network; the seeds' outputs averaged
        state = checkpointing.load_weights(ckpt)
        config = state["config"]
        model = models.build_model(config["arch"], config["outputs"],
                                   width=config.get("width", models.WIDTH)).to(dist.device)
        model.load_state_dict(state["model"])
        parts = []
        for split, rows in span.items():
            known = (inference.saved_views(ckpt.parent, epoch, wanted[split], dist.device, args.precision)
                     if split == "heldout" else None)    # the evaluator's pass over the held-out side
            if known is not None:
                reused.append(ckpt.parent.name)
                parts.append(known)
                continue
            desc = f"{ckpt.parent.name} {split}"
            outs = []           # copied back once per split, not once per chunk
            for start in training.progress(range(rows.start, rows.stop, CHUNK), dist, desc=desc):
                chunk = slice(start, min(start + CHUNK, rows.stop))
                outs.append(inference.predict_views(model, to_device(px[chunk], dist.device), vidx, dist.device,
                                                    args.batch, precision=args.precision))
            parts += [torch.cat(outs).cpu()] if outs else []
        seeds.append(tasks.in_units(args.task, torch.cat(parts), config).numpy())
    outputs = seeds[0] if len(seeds) == 1 else sum(seeds) / np.float32(len(seeds))
    for split, oids in wanted.items():
        part = outputs[span[split]]
        inference.save_views(out / f"{split}.npz", oids, part)
        table = pd.DataFrame({"object_id": oids.to_numpy(), **tasks.reduce_views(args.task, part)})
        with common.atomic_path(out / f"{split}.parquet") as tmp:
            table.to_parquet(tmp, index=False)
    stage.finish(dict(vars(args), checkpoints=[str(c) for _, c in checkpoints], heldout_from_evaluator=reused))
    print(f"[05] {run}: {', '.join(f'{k} {len(v)}' for k, v in wanted.items())} objects x 8 views"
          f"{f' (heldout: the evaluator of {len(reused)} of {len(checkpoints)} networks)' if reused else ''} "
          f"[{time.time() - stage.started:.1f}s]", flush=True)


if __name__ == "__main__":
    main()
