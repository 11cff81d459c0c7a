"""Stage 04's evaluation: the Evaluator that scores a network each epoch on the fold's held-out side
and keeps eval.csv; the evaluator process's loop (evaluate, 04 --role evaluate) and the inline
scoring of epochs it left (evaluate_missing); and Evaluation, which supervises the evaluator
process from the trainer and hands over to inline scoring should it die or stall. Also what the
trainer and its evaluator share: the fold's data (task_data) and the task's targets (targets).
What they read of the run is a Run, not the stage's options.
"""
import dataclasses
import os
import subprocess
import sys
import time

import numpy as np
import torch

import checkpointing
import common
import inference
import models
import pixels
import tasks

EVAL_POLL = 0.2        # seconds between the evaluator's looks for a new checkpoint (a stat: free)
EVAL_GIVE_UP = 120.0   # seconds a checkpoint may stay unreadable before the evaluator fails
EVAL_LOG = "evaluator.log"   # the evaluator process's stderr


@dataclasses.dataclass(frozen=True)
class Run:
    """What 04's evaluation reads of its run: the fold's data, the network, how each epoch is
    scored, and `setup`, the run's options and inputs, which a checkpoint must match
    (checkpointing.check_network)."""
    task: str
    fold: str
    folds: str
    hvr: str
    arch: str
    width: int
    epochs: int
    batch: int
    eval_views: int
    eval_rows: int
    precision: str
    loss: str
    eval_stall: float
    setup: dict

    @classmethod
    def of(cls, options):
        """The run that 04's resolved options (a dict) describe."""
        names = {f.name for f in dataclasses.fields(cls)} - {"setup"}
        return cls(**{k: options[k] for k in names}, setup=dict(options))


def task_data(folds, fold):
    """(train frame, evaluation frame, its split name: heldout, or train for fold all) of stage
    01's `folds` directory."""
    train = common.read_fold(folds, fold, "train")
    if fold == "all":
        held, split = train.iloc[:common.EVAL_TRAIN_ROWS], "train"
    else:
        held, split = common.read_fold(folds, fold, "test"), "heldout"
    return train, held, split


def targets(task, df, folds_dir, date_stats):
    """(y (N, D) float32, w (N, heads) float32 loss weights) for every head of the network."""
    parts = [tasks.head_targets(t, df, folds_dir, date_stats) for t, _ in tasks.heads(task)]
    return (torch.from_numpy(np.concatenate([y for y, _ in parts], 1)),
            torch.from_numpy(np.stack([w for _, w in parts], 1)))


class Evaluator:
    """Scores a model on the fold's held-out side (fold all: its first train rows) and keeps
    eval.csv: one row per epoch, the loss and each era head's RMSE."""

    def __init__(self, run, run_dir, device):
        images, ids, meta = pixels.load_store(run.hvr)
        train_df, self.held, self.split = task_data(run.folds, run.fold)
        self.date_stats = (float(train_df["sorting_date"].mean()), float(train_df["sorting_date"].std()))
        self.px = pixels.to_pixels(images[pixels.store_rows(ids, self.held["object_id"], run.hvr).numpy()], device)
        self.vidx = pixels.view_index(meta["size"]).to(device)
        self.y, self.w = targets(run.task, self.held, run.folds, self.date_stats)
        self.era = torch.tensor(self.held["target"].to_numpy(), dtype=torch.float32)
        n = len(self.held)     # the rows of an epoch's score: a fixed random subset, or all
        self.subset = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: run.eval_rows or n].sort().values
        self.run, self.device, self.path = run, device, run_dir / "eval.csv"
        self.eras = [t for t, _ in tasks.heads(run.task) if t in tasks.ERA_HEADS]
        self.columns = ["epoch", "split", "n", "views", "loss", "rmse", *map(tasks.eval_column, self.eras), "seconds"]

    def done(self):
        return common.read_epoch_rows(self.path)

    def score(self, epoch, model):
        started = time.time()
        run = self.run
        last = epoch == run.epochs      # all 8 views of every row: the run's figure
        views = range(8 if last else run.eval_views)
        rows = torch.arange(len(self.held)) if last else self.subset
        outputs = inference.predict_views(model, self.px[rows.to(self.px.device)], self.vidx, self.device,
                                          run.batch * 4, views, precision=run.precision).cpu()
        if last and self.split == "heldout":      # 05 describes this side with them, no second pass
            inference.save_views(self.path.parent / inference.HELDOUT_VIEWS, self.held["object_id"], outputs,
                                epoch=epoch, bf16=inference.bf16(self.device, run.precision))
        mean_out = outputs.mean(1)
        y, w, era = self.y[rows], self.w[rows], self.era[rows]
        losses = tasks.head_losses(run.task, run.loss, mean_out, y)
        loss = ((losses * w).sum(0) / w.sum(0).clamp(min=1)).sum().item()
        rmse = {}
        for t, cols in tasks.heads(run.task):
            pred = tasks.era_prediction(t, run.loss, mean_out[:, cols], self.date_stats)
            if pred is not None:
                rmse[t] = ((pred - era) ** 2).mean().sqrt().item()
        first = rmse[self.eras[0]] if self.eras else None
        values = [epoch, self.split, len(rows), len(views), f"{loss:.6g}", "" if first is None else f"{first:.6g}",
                  *(f"{rmse[t]:.6g}" for t in self.eras), f"{time.time() - started:.2f}"]
        done = self.done()
        done[epoch] = ",".join(map(str, values))
        common.write_text(self.path, ",".join(self.columns) + "\n" + "".join(done[e] + "\n" for e in sorted(done)))
        shown = ", ".join(f"{t} era RMSE {v:.4f}" for t, v in rmse.items())
        print(f"[04 eval] {self.path.parent.name} epoch {epoch}: {self.split} ({len(rows)} rows, {len(views)} view"
              f"{'s' if len(views) > 1 else ''}) loss {loss:.4f}" + (f", {shown}" if shown else ""), flush=True)


def network(run, device):
    """The run's network, its weights still to load."""
    return models.build_model(run.arch, tasks.TASK_DIMS[run.task], width=run.width).to(device)


def evaluate(run, run_dir, dist):
    """The evaluator process (GPU): score each complete epoch checkpoint once, in order, then
    stop; stop too when the trainer that started it has died."""
    # the trainer's pid, handed down: read at start-up, getppid() could already be init's
    parent = int(os.environ.get("ATMA11_TRAINER_PID") or os.getppid())
    ev = Evaluator(run, run_dir, dist.device)
    model = network(run, dist.device)
    unreadable, waiting = {}, None
    while True:
        todo = [e for e in range(1, run.epochs + 1) if e not in ev.done()]
        if not todo:
            return
        ckpt = run_dir / common.ckpt_name(todo[0])
        if not ckpt.exists():        # complete checkpoints only: a write in progress has a temp name
            if os.getppid() != parent:
                common.fail(f"{run_dir}: the trainer died; the evaluator stops with it")
            if waiting != ckpt:
                print(f"[04 eval] {run_dir.name}: waiting for {ckpt.name}", flush=True)
                waiting = ckpt
            time.sleep(EVAL_POLL)
            continue
        try:
            state = checkpointing.load_weights(ckpt)
        except checkpointing.UnreadableCheckpoint as e:   # a writer that skipped the atomic rename
            unreadable[ckpt] = unreadable.get(ckpt, 0) + 1
            if unreadable[ckpt] == 1:
                print(f"[04 eval] {run_dir.name}: {ckpt.name} is not readable yet ({e}); looking again "
                      f"every {EVAL_POLL}s for {EVAL_GIVE_UP:.0f}s", flush=True)
            if unreadable[ckpt] * EVAL_POLL > EVAL_GIVE_UP:
                common.fail(f"{ckpt}: unreadable for {EVAL_GIVE_UP:.0f}s ({e})")
            time.sleep(EVAL_POLL)
            continue
        checkpointing.check_network(ckpt, state, run.setup, "04's evaluator")
        model.load_state_dict(state["model"])
        ev.score(todo[0], model)


def evaluate_missing(run, run_dir, dist, ev):
    """Score the epochs whose checkpoint is there but not their eval.csv row (a kill between
    the two): before training resumes, since a profile may delete old epochs' checkpoints."""
    have = {e for e, step, _ in checkpointing.list_checkpoints(run_dir) if step is None}
    missing = [e for e in range(1, run.epochs + 1) if e not in ev.done() and e in have]
    if missing:
        model = network(run, dist.device)
        for epoch in missing:
            path = run_dir / common.ckpt_name(epoch)
            state = checkpointing.load_weights(path)
            checkpointing.check_network(path, state, run.setup, "04's evaluator")
            model.load_state_dict(state["model"])
            ev.score(epoch, model)


def gpu_slot_fd():
    """[the descriptor of the GPU slot lock that devices.py on-gpu handed down], or []."""
    try:
        fd = int(os.environ.get("GPU_SLOT_FD", ""))
        os.fstat(fd)
        return [fd]
    except (ValueError, OSError):
        return []


class Evaluation:
    """A run's evaluation: a process of its own (the recipe's watcher of checkpoints), or inline
    at each epoch end. A process that dies, or stalls once training has ended, hands over to
    inline scoring of what it left, and the run says why: the trainer never waits without bound."""

    def __init__(self, run, run_dir, dist, placement, script):
        """script: stage 04's file, which the evaluator process runs with --role evaluate."""
        self.run, self.run_dir, self.dist = run, run_dir, dist
        self.proc, self.inline, self.story = None, None, placement
        if placement == "process":
            argv = [a for a in sys.argv[1:] if a not in ("--role", "run")]
            env = dict(os.environ, TORCH_THREADS="1", WORLD_SIZE="1", RANK="0", LOCAL_RANK="0",
                       LOCAL_WORLD_SIZE="1", ATMA11_TRAINER_PID=str(os.getpid()))
            self.log = run_dir / EVAL_LOG
            with open(self.log, "a") as err:     # its last line says why, should it die
                self.proc = subprocess.Popen([sys.executable, script, *argv, "--role", "evaluate"], env=env,
                                             stderr=err, pass_fds=gpu_slot_fd())   # the GPU stays held while it lives
            print(f"[04] evaluator: a process of its own (pid {self.proc.pid}), stderr in {self.log}", flush=True)
        else:
            self.go_inline()

    def go_inline(self, why=None):
        if why:
            print(f"[04] {why}: the held-out side is scored inline from here on", flush=True)
            self.story = f"process, then inline: {why}"
        self.proc, self.inline = None, Evaluator(self.run, self.run_dir, self.dist.device)
        evaluate_missing(self.run, self.run_dir, self.dist, self.inline)   # a kill between a checkpoint and its row

    def died(self):
        """Why the evaluator process ended before its work, or None while it lives (or succeeded)."""
        code = self.proc.poll()
        if code in (None, 0):
            return None
        tail = [l for l in self.log.read_text(errors="replace").splitlines() if l.strip()][-1:] if self.log.exists() else []
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        return f"the evaluator process {how}" + (f" ({tail[0].strip()[:200]})" if tail else "")

    def epoch_end(self, epoch, model):
        if self.proc is not None and (why := self.died()):
            return self.go_inline(why)          # scores this epoch too: its checkpoint is written
        if self.inline is not None:
            self.inline.score(epoch, model)

    def finish(self):
        """Every epoch scored: the process's rows awaited (the clock restarts at each new one),
        then whatever is missing scored inline."""
        if self.proc is not None:
            rows, since = len(common.read_epoch_rows(self.run_dir / "eval.csv")), time.time()
            while self.proc.poll() is None and time.time() - since < self.run.eval_stall:
                time.sleep(EVAL_POLL)
                now = len(common.read_epoch_rows(self.run_dir / "eval.csv"))
                rows, since = now, (time.time() if now > rows else since)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                self.go_inline(f"the evaluator process scored no epoch for {self.run.eval_stall:.0f}s and was stopped")
            elif why := self.died():
                self.go_inline(why)
        if self.inline is not None:
            evaluate_missing(self.run, self.run_dir, self.dist, self.inline)
        missing = [e for e in range(1, self.run.epochs + 1) if e not in common.read_epoch_rows(self.run_dir / "eval.csv")]
        if missing:
            common.fail(f"{self.run_dir}: epochs {missing} were not evaluated and their checkpoints are gone; "
                        f"rerun to train and evaluate them")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()

