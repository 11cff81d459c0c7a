"""Stage 05: every view of every object the stacking needs, through one fine-tuned model.

Reads WORK/01_sgkfold, WORK/02_hvr, WORK/04_finetune/<task>_<fold>/ (its last epoch checkpoint).
Writes WORK/05_features/<task>_<fold>/:
  <split>.npz       object_id (N,) and outputs (N, 8, D) float32: the 8 views' raw outputs
  <split>.parquet   object_id + D x {mean, max, min, var} over the 8 views (what 06 reads)
  provenance.json, DONE
Splits: folds 0-2 -> train (the fold's train side), heldout (its test side), test (test.csv,
for out-of-fold stacking); fold all -> train, test.

    python 05_features.py --task onehot --fold 1 --folds work/01_sgkfold --hvr work/02_hvr \
        --runs work/04_finetune --out work/05_features

Outputs are in the task's own units: the era (target), the one-hot scores (onehot; softmax
probabilities when it was trained with --loss ce), the year (sortingdate, de-standardised), the
20 word2vec coordinates. Columns are named <task>_<dim>_<stat>.
"""
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import common
import training

# -----------------------------------------------------------------------------
STATS = ("mean", "max", "min", "var")   # the recipe's reductions over the 8 views

p = common.profile_parser(__doc__.split("\n")[0], "05")
p.add_argument("--task", required=True, choices=common.TASKS)
p.add_argument("--fold", required=True, choices=common.FOLDS)
p.add_argument("--folds", required=True, help="stage 01's directory")
p.add_argument("--hvr", required=True, help="stage 02's image store")
p.add_argument("--runs", required=True, help="stage 04's directory")
p.add_argument("--out", required=True, help="this stage's directory (the run goes in <task>_<fold>/)")
p.add_argument("--batch", type=int, default=None, help="images per forward pass, 8 views each counted (profile)")


def splits(folds_dir, fold):
    """{split: object ids} this fold's model must describe."""
    ids = lambda k, s: pd.read_csv(common.fold_csv(folds_dir, k, s), dtype={"object_id": str})["object_id"]
    out = {"train": ids(fold, "train")}
    if fold != "all":
        out["heldout"] = ids(fold, "test")
    out["test"] = ids("all", "test")
    return out


def reduce_views(task, outputs):
    """(N, 8, D) -> {column: (N,)}: mean, max, min, var over the views, per output dimension."""
    cols = {}
    for d in range(outputs.shape[2]):
        v = outputs[:, :, d]
        for stat, values in zip(STATS, (v.mean(1), v.max(1), v.min(1), v.var(1))):
            cols[f"{task}_{d}_{stat}"] = values
    return cols


def main():
    args = common.parse(p, "05")
    started = time.time()
    training.configure_threads()
    dist = training.Dist()
    run = common.run_name(args.task, args.fold)
    out = common.start_stage(Path(args.out) / run)
    run_dir = Path(args.runs) / run
    ckpts = [c for c in training.list_checkpoints(run_dir) if c[1] is None]
    if not common.is_done(run_dir) or not ckpts:
        common.fail(f"{run_dir}: the fine-tune run is not finished (make fold TASK={args.task} FOLD={args.fold})")
    state = training.load_checkpoint(ckpts[-1][2], dist.device)
    config = state["config"]
    model = training.build_model(config["arch"], config["outputs"]).to(dist.device)
    model.load_state_dict(state["model"])
    if dist.device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    images, ids, meta = training.load_store(args.hvr)
    vidx = training.view_index(meta["size"]).to(dist.device)
    wanted = splits(args.folds, args.fold)
    training.banner("05", args, dist, run=run, epoch=ckpts[-1][0],
                    **{k: len(v) for k, v in wanted.items()})
    for split, oids in wanted.items():
        px = training.to_pixels(images[training.store_rows(ids, oids, args.hvr).numpy()], "cpu")
        chunks = []
        for part in training.progress(px.split(4096), dist, desc=f"{run} {split}"):
            if dist.device.type == "cuda":      # pinned, so the copy overlaps the previous part's work
                part = part.pin_memory().to(dist.device, non_blocking=True)
            chunks.append(predict(model, part, vidx, dist.device, args.batch, config))
        outputs = torch.cat(chunks).numpy()
        with common.atomic_path(out / f"{split}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, object_id=np.array(oids, dtype="U20"), outputs=outputs)
        table = pd.DataFrame({"object_id": oids.to_numpy(), **reduce_views(args.task, outputs)})
        with common.atomic_path(out / f"{split}.parquet") as tmp:
            table.to_parquet(tmp, index=False)
    common.write_provenance(out, dict(vars(args), checkpoint=str(ckpts[-1][2])), started)
    common.mark_done(out)
    print(f"[05] {run}: {', '.join(f'{k} {len(v)}' for k, v in wanted.items())} objects x 8 views "
          f"[{time.time() - started:.1f}s]", flush=True)


@torch.no_grad()
def predict(model, px, vidx, device, batch, config):
    """(N, 8, D) task-unit outputs for the 8 views of each image in px (training.to_pixels)."""
    outputs = training.predict_views(model, px, vidx, device, batch).cpu()
    if config["task"] == "sortingdate":
        outputs = outputs * config["date_std"] + config["date_mean"]
    if config["task"] == "onehot" and config.get("loss") == "ce":
        outputs = outputs.softmax(-1)
    return outputs


if __name__ == "__main__":
    main()
