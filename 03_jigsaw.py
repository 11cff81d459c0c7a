"""Stage 03: self-supervised 3x3 jigsaw pretraining of a ResNet from random init, as the recipe.

Reads WORK/02_hvr (every photo, train and test). Writes WORK/03_jigsaw/:
  ckpt_e001.pt ...        each epoch's network (weights, epoch, config); state_e005.pt: the
                          optimizer and RNG to continue from (training.fit: one, the newest)
  loss.csv, holdout.csv   step/epoch/loss/tile accuracy; per epoch on held-out photos
  loss.png, provenance.json, DONE

    python 03_jigsaw.py --hvr work/02_hvr --out work/03_jigsaw --profile cpu
    torchrun --standalone --nproc_per_node=4 03_jigsaw.py ...        # DDP; rank 0 writes

A puzzle: one of the 8 views, its top-left 3t x 3t square (t = S // 3) cut into 9 tiles and
shuffled (pixels.shuffle_tiles); the network sees the shuffled image and predicts, for each of
the 9 positions, which tile is there: a 9x9 one-hot, 81 outputs. Per epoch every image-view
appears with `perms` permutations: the identity and perms-1 random others (the recipe: 8 views x
(7 + 1)). Views and tiles are index operations on the training device; nothing is pre-rendered.
A fixed set of `holdout` photos measures puzzle accuracy (chance: 1/9 per tile) on a random
view and permutation each. They are kept out of training (an honest figure), except where the
profile says `holdout_trains` (full: the recipe pretrained on every photo; the figure is then
one on photos seen in training, though never in that view and permutation together).
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import checkpointing
import common
import distributed
import inference
import models
import pixels
import reporting
import training

# -----------------------------------------------------------------------------
SEED = 0               # model init and the epoch RNGs derive from it
TILES = pixels.JIGSAW_GRID ** 2

p = common.profile_parser(__doc__.split("\n")[0])
p.add_argument("--hvr", required=True, help="the image store (stage 02)")
p.add_argument("--out", required=True, help="this stage's directory")
p.add_argument("--arch", default=None, choices=models.ARCHS, help="network (profile)")
p.add_argument("--width", type=int, default=None, help="a ResNet's first-stage channels (profile; the recipe: 64)")
p.add_argument("--epochs", type=int, default=None, help="passes over the photos (profile; 0: none, the fine-tunes start from random init)")
p.add_argument("--batch", type=int, default=None, help="global batch size (profile)")
p.add_argument("--views", type=int, default=None, choices=range(1, 9), metavar="1-8",
               help="views per image per epoch: 8 = all (recipe), fewer = random ones (profile)")
p.add_argument("--perms", type=int, default=None, help="permutations per image-view, identity included (profile)")
p.add_argument("--holdout", type=int, default=None, help="photos kept out to measure accuracy (profile)")
p.add_argument("--ckpt-every", type=int, default=None, help="on a CPU: steps between mid-epoch checkpoints (profile)")
p.add_argument("--ckpt-minutes", type=float, default=checkpointing.CKPT_MINUTES,
               help="on a GPU: minutes of training between resumable checkpoints")
p.add_argument("--norm", default="sync", choices=["sync", "bn"],
               help="BatchNorm under DDP on GPUs: sync = over the global batch (SyncBatchNorm, the recipe), "
                    "bn = over each GPU's share (no exchange between the GPUs per layer and step)")
training.add_optimizer_options(p)
p.add_argument("--holdout-trains", default=None, action=argparse.BooleanOptionalAction,
               help="the held-out photos are trained on too (profile; the recipe pretrains on every photo)")
p.add_argument("--seed", type=int, default=SEED)
p.add_argument("--compile", action="store_true", help="torch.compile the network (GPU)")
p.add_argument("--precision", default=None, choices=inference.PRECISIONS,
               help="bf16 autocast: auto = on GPUs and CPUs with native bf16 (profile)")


def puzzle_loss(out, perms):
    """Per-sample loss (the recipe's: MSE on the 81-vector against the one-hot tile order), tile
    accuracy and whole-puzzle accuracy; out (B, 81), perms (B, 9)."""
    logits = out.float().view(-1, TILES, TILES)
    loss = ((logits - F.one_hot(perms, TILES).float()) ** 2).mean(dim=(1, 2))
    correct = (logits.argmax(-1) == perms).float()
    return loss, correct.mean(1), correct.all(1).float()


def main():
    args = common.parse(p, "03")
    training.configure_threads()
    dist = distributed.Dist()
    args.input_hvr = checkpointing.input_identity(args.hvr)   # another store is another setup
    stage = common.Stage(args.out) if dist.main else None
    out = Path(args.out)
    if dist.main:      # what this run may continue from; the other ranks wait for it
        done = checkpointing.settle_checkpoints(out, vars(args), ("loss.csv", "holdout.csv", "loss.png", "provenance.json"))
        common.forget_epochs_after(out / "holdout.csv", done)
    dist.barrier()
    images, ids, meta = pixels.load_store(args.hvr)
    device = dist.device
    if args.epochs == 0:     # a profile that fine-tunes from random init (cpu: `make study`)
        if dist.main:
            print(f"[03] profile={args.profile}: 0 jigsaw epochs, the fine-tunes start from random init", flush=True)
            stage.finish(vars(args))
        return dist.close()
    store = pixels.to_pixels(images, device)   # the whole store, resident, packed pixels
    vidx = pixels.view_index(meta["size"]).to(device)

    held = torch.randperm(len(ids), generator=torch.Generator().manual_seed(args.seed))[: args.holdout]
    kept_out = set() if args.holdout_trains else set(held.tolist())
    train_rows = torch.tensor(sorted(set(range(len(ids))) - kept_out), dtype=torch.long)
    training.banner("03", args.profile, dist, photos=len(ids), train=len(train_rows), holdout=len(held),
                    size=meta["size"], samples_per_epoch=len(train_rows) * args.views * args.perms)

    def epoch_plan(epoch, g):
        """Rows (image, view, tile at position 0..8) in the epoch's order."""
        n_views = args.views * args.perms
        img = train_rows.repeat_interleave(n_views)
        if args.views == 8:     # every view of every image, each with `perms` permutations
            view = torch.arange(8).repeat_interleave(args.perms).repeat(len(train_rows))
        else:                   # `views` random views per image, the same for its permutations
            pick = torch.rand(len(train_rows), 8, generator=g).argsort(1)[:, : args.views]
            view = pick.repeat_interleave(args.perms, dim=1).reshape(-1)
        perms = pixels.random_perms(len(img), g, identity_every=args.perms)
        plan = torch.cat([img[:, None], view[:, None], perms], dim=1)
        return plan[torch.randperm(len(plan), generator=g)]

    def forward(net, rows):
        x = pixels.to_input(store[rows[:, 0]], rows[:, 1], vidx, channels_last=True, perms=rows[:, 2:])
        with inference.autocast(device, args.precision):
            return net(x)

    def batch_loss(net, rows):
        loss, tile_acc, puzzle_acc = puzzle_loss(forward(net, rows), rows[:, 2:])
        return loss.sum(), {"tile_acc": tile_acc.sum(), "puzzle_acc": puzzle_acc.sum()}

    g = torch.Generator().manual_seed(args.seed + 1)
    holdout_plan = torch.cat([held[:, None], torch.randint(0, 8, (len(held), 1), generator=g),
                              pixels.random_perms(len(held), g)], dim=1)

    @torch.no_grad()
    def on_epoch_end(epoch, model):
        model.eval()
        sums = torch.zeros(3)
        for chunk in holdout_plan.split(args.batch):
            with distributed.autotune(len(chunk) == args.batch):
                figures = puzzle_loss(forward(model, chunk.to(device)), chunk[:, 2:].to(device))
            sums += torch.stack([f.sum().cpu() for f in figures])
        loss, tile, puzzle = (sums / max(len(held), 1)).tolist()
        rows = common.read_epoch_rows(out / "holdout.csv")
        rows[epoch] = f"{epoch},{loss:.6g},{tile:.6g},{puzzle:.6g}"
        common.write_text(out / "holdout.csv", "epoch,loss,tile_acc,puzzle_acc\n" +
                          "".join(rows[e] + "\n" for e in sorted(rows)))
        print(f"[03] epoch {epoch}: held-out loss {loss:.4f}, tile accuracy {tile:.3f} "
              f"(chance {1 / TILES:.3f}), whole-puzzle accuracy {puzzle:.3f}", flush=True)

    common.seed_everything(args.seed)
    model = models.build_model(args.arch, TILES * TILES, width=args.width)
    network = dict(vars(args), size=meta["size"], outputs=TILES * TILES, ranks=dist.world)
    model = training.fit(model, run_dir=out, dist=dist, settings=training.FitSettings.pick(vars(args)),
                         network=network, epoch_plan=epoch_plan, batch_loss=batch_loss, on_epoch_end=on_epoch_end)
    if dist.main:
        missing = [e for e in range(1, args.epochs + 1) if e not in common.read_epoch_rows(out / "holdout.csv")]
        for epoch in missing:      # killed between a checkpoint and its held-out row
            model.load_state_dict(checkpointing.load_weights(out / common.ckpt_name(epoch))["model"])
            on_epoch_end(epoch, model)
        plot(out)
        stage.finish(network)
    dist.close()


def plot(out):
    plt = reporting.pyplot()
    import pandas as pd
    log, held = pd.read_csv(out / "loss.csv"), pd.read_csv(out / "holdout.csv")
    per_epoch = log.groupby("epoch")["step"].max()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(log["step"], log["loss"], label="train")
    axes[0].plot(per_epoch.loc[held["epoch"]], held["loss"], "o-", label="held-out")
    axes[0].set(xlabel="step", ylabel="loss", title="jigsaw loss")
    axes[1].plot(log["step"], log["tile_acc"], label="train")
    axes[1].plot(per_epoch.loc[held["epoch"]], held["tile_acc"], "o-", label="held-out")
    axes[1].axhline(1 / TILES, ls="--", c="grey", label="chance")
    axes[1].set(xlabel="step", ylabel="tile accuracy", title="puzzle accuracy per tile")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    reporting.save_figure(fig, out / "loss.png")


if __name__ == "__main__":
    main()
