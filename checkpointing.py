"""Checkpoints and resume: the files a run writes (list, save, load, prune), when a resumable state
is due, what a rerun may continue from (settle_checkpoints), and whose network a checkpoint holds
(input_identity, setup_differences, check_network, finished_checkpoint). training.fit writes and
reads them; 03, 04's evaluator and 05 read the networks.
"""
import hashlib
import json
import math
import re
from pathlib import Path

import torch

import common

# Self-describing, written atomically, read back with weights_only=True. Two kinds,
# named by common.ckpt_name: a network's weights (ckpt_e003.pt: the model, its epoch, step and
# config; every epoch's end, what the evaluator, 05 and 04 --init read) and the state a run
# continues from (state_e003.pt: the optimizer, RNG and global step at the same point; one at a
# time, the newest, written before its weights). A checkpoint written before states had files of
# their own holds both (its "optim"): a run continues from it as well.
CKPT_RE = re.compile(r"^(ckpt|state)_e(\d{3})(?:_s(\d{8}))?\.pt$")
CKPT_MINUTES = 10.0    # on a GPU, minutes of training between resumable states (a CPU counts steps)


def list_checkpoints(run_dir, state=False):
    """[(epoch, step, path)] of complete checkpoints (the weights; with state, the states),
    oldest first; step None = epoch end.

    Only final names count: a checkpoint being written has a temporary name until os.replace."""
    found = []
    for p in Path(run_dir).glob("*.pt"):
        m = CKPT_RE.match(p.name)
        if m and (m[1] == "state") == state:
            found.append((int(m[2]), None if m[3] is None else int(m[3]), p))
    # an epoch-end checkpoint of epoch e comes after every mid-epoch one of e
    return sorted(found, key=lambda t: (t[0], math.inf if t[1] is None else t[1]))


def state_due(on_gpu, settings, epoch, step, seconds):
    """Whether rank 0 writes a resumable state (optimizer, RNG) at (epoch, step): `step` steps of
    the epoch done, None at its end (where the epoch's weights are written in any case);
    `seconds` since the last state was written (or the run started).

    On a CPU at every epoch end and every ckpt_every steps (settings: training.FitSettings): the
    points where the tests kill and resume bit-identically. On a GPU by the clock, ckpt_minutes
    after the last one (a step count paced for a CPU would stop a GPU every few seconds to write
    the model and Adam's moments), at an epoch end or a log step, right after the host sync the
    log makes anyway. Only rank 0 saves and no collective takes part, so the other ranks need not know.
    The run's last epoch always has one: a later run of more epochs continues from it."""
    if step is None and epoch == settings.epochs:
        return True
    if not on_gpu:
        return step is None or step % settings.ckpt_every == 0
    synced = step is None or step % settings.log_every == 0
    return synced and seconds >= 60 * settings.ckpt_minutes


def prune_checkpoints(run_dir, state_at, keep_epochs="all"):
    """After a save: kept are the newest epoch's weights, older epochs' too with keep_epochs `all`
    (the evaluator process reads them; `last`: 60 epochs of 4 networks would keep GBs that
    nothing reads), and the weights and state at `state_at`, the point a rerun continues from;
    every other mid-epoch checkpoint and state goes. Nothing is read or written again: the
    weights were written without the optimizer."""
    weights = list_checkpoints(run_dir)
    newest = max((e for e, step, _ in weights if step is None), default=None)
    for epoch, step, path in weights:
        if (epoch, step) != state_at and (step is not None or keep_epochs != "all" and epoch != newest):
            path.unlink(missing_ok=True)
    for epoch, step, path in list_checkpoints(run_dir, state=True):
        if (epoch, step) != state_at:
            path.unlink(missing_ok=True)


def save_checkpoint(path, state):
    try:
        with common.atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as e:    # torch's writer reports a full disk as RuntimeError
        common.fail(f"{path}: could not write the checkpoint ({str(e).strip()[:200]}); is the disk "
                    f"full or WORK read-only? The checkpoints already written are intact: free "
                    f"space, then run the same command again to continue from them")


def load_checkpoint(path, device="cpu", mmap=False):
    """A checkpoint's state; one that cannot be read (truncated, overwritten) is an error that
    names it, not a traceback from deep inside torch. mmap: the tensors stay on disk until read
    (a check of its config and keys costs no decode)."""
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as e:      # torch's zip reader, its unpickler, a short read: all mean unreadable
        raise UnreadableCheckpoint(f"{path}: unreadable checkpoint ({str(e).strip().splitlines()[0][:160]})") from e


class UnreadableCheckpoint(Exception):
    pass


def load_weights(path):
    """A checkpoint's network ("model", "config", "epoch", ...) without its optimizer state (which
    a checkpoint of the earlier layout still holds): mmap'ed on the host, so only the bytes of the
    weights are read, and load_state_dict copies them onto the model's device. What the
    evaluator, 05 and 04 --init read: never Adam's moments onto a GPU."""
    state = load_checkpoint(path, "cpu", mmap=True)
    return {k: v for k, v in state.items() if k not in ("optim", "torch_rng")}


def beside(path, epoch, step):
    """The state file that continues from weights `path` at (epoch, step)."""
    return Path(path).with_name(common.ckpt_name(epoch, step, state=True))


def finished_checkpoint(run_dir, what, unfinished="make all runs it first", setup=None):
    """(epoch, path) of the network a finished run (03, 04: DONE written) ended with: its last
    epoch as its provenance.json records it, never an earlier one, trained as that provenance
    says and for `setup` (what the reader reads it for: the run's task, fold and seed, the
    input_identity of the stages the reader shares with it; check_network); a clear error (naming
    the file and how to redo it) when the run is not finished or that checkpoint is gone,
    unreadable or another's. `what`: the stage, for the message (e.g. "05"); `unfinished`: how to
    finish the run."""
    run_dir = Path(run_dir)
    if not common.is_done(run_dir):
        common.fail(f"{run_dir}: the run is not finished (no DONE); {what} needs it: {unfinished}")
    try:
        recorded = json.loads((run_dir / "provenance.json").read_text())["config"]
        epochs = int(recorded["epochs"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        common.fail(f"{run_dir / 'provenance.json'}: cannot tell which epoch the run ended with ({e}); "
                    f"redo the run: rm {run_dir / 'DONE'}, then the same make command")
    path = run_dir / common.ckpt_name(epochs)
    redo = (f"{what} uses the network of the run's last epoch, {epochs}, and no other. To redo it: "
            f"rm {run_dir / 'DONE'}, then the same make command (the run continues from its newest "
            f"good checkpoint, or starts again)")
    if not path.exists():
        common.fail(f"{path} is missing: {redo}")
    try:
        state = load_checkpoint(path, mmap=True)
    except UnreadableCheckpoint as e:
        common.fail(f"{e}: {redo}")
    check_network(path, state, {**recorded, **(setup or {})}, what)
    return epochs, path


# What a checkpoint may be resumed by: a run of the same setup. Options that change only where a
# run reads and writes, how it is watched or how often it saves are not part of it.
SETUP_NEUTRAL = frozenset({"profile", "role", "eval", "eval_stall", "compile", "out", "hvr", "folds", "jigsaw",
                           "ckpt_every", "ckpt_minutes", "keep_epochs", "ranks"})


def input_identity(stage_dir):
    """A short hash of a finished input stage's provenance.json (its options, revision and start
    time): it changes whenever that stage is rebuilt, and travels with it (sync-down)."""
    path = Path(stage_dir) / "provenance.json"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "none"


def setup_differences(saved, setup):
    """[(key, saved value, this run's value)] where a checkpoint's config and this run's setup
    disagree, on the keys both have (a key new to this code is not held against old checkpoints).
    The number of epochs is the schedule's only under onecycle: halving continues."""
    def plain(v):
        return json.loads(json.dumps(list(v) if isinstance(v, tuple) else v))
    both = set(saved) & set(setup) - SETUP_NEUTRAL
    if saved.get("schedule") == setup.get("schedule") == "halve":
        both.discard("epochs")
    return sorted((k, saved[k], setup[k]) for k in both if plain(saved[k]) != plain(setup[k]))


# What names a fine-tune run's folder (common.run_name): a network that differs here is another
# run's (a file moved or copied), never an older setup of this one to start over from.
RUN_KEYS = ("task", "fold", "seed")


def owner(config, path):
    """Whose network a config describes, for a message: `run multi_1`, or the folder of a run
    without a task (03's)."""
    if "task" in config and "fold" in config:
        return f"run {common.run_name(config['task'], config['fold'], config.get('seed', 0))}"
    return Path(path).parent.name


def check_network(path, state, setup, reader):
    """Stop, naming both, when the checkpoint `state` read from `path` (load_weights or
    load_checkpoint) does not belong to the run and the setup `reader` reads it for (`setup`: the
    run's config as its provenance.json or command line says, with the input_identity of each
    input stage; setup_differences). Another run's network (RUN_KEYS differ: moved or copied
    between runs; only those keys are shown, the rest follows) is to be put back; a network of
    another setup of this run means the run is to be redone."""
    saved = state.get("config", {})
    differ = setup_differences(saved, setup)
    if not differ:
        return
    another = [d for d in differ if d[0] in RUN_KEYS]
    shown = (another or differ)[:4]
    more = f" and {len(differ) - 4} more" if not another and len(differ) > 4 else ""
    if another:
        way = (f"it was moved or copied here: put it back in {owner(saved, path).removeprefix('run ')}'s "
               f"folder (or delete it), then the same command")
    else:
        run_dir = Path(path).parent
        way = (f"it was trained for another setup or on other inputs: redo {run_dir.name}: rm "
               f"{run_dir / 'DONE'}, then the same command")
    common.fail(f"{path} is the network of {owner(saved, path)} with {', '.join(f'{k} {a!r}' for k, a, _ in shown)}"
                f"{more}, and {reader} reads it for {owner(setup, path)} with "
                f"{', '.join(f'{k} {b!r}' for k, _, b in shown)}{more}; {way}")


def settle_checkpoints(run_dir, setup, outputs=()):
    """Before a (re)run, leave in run_dir only what it may continue from; returns the epochs the
    kept checkpoint completed (0: it starts over). Rank 0 only, before any other process reads
    the directory.

    A run continues from the newest weights that have their state (fit writes a state before its
    weights; a GPU writes states by the clock, weights at every epoch end). Removed, and said:
    temporary files a kill left; checkpoints that cannot be read (a newer one unreadable: the run
    continues from an older one and redoes the rest); weights newer than the newest state, and
    states without their weights (a kill between the two writes); and, when those weights were
    trained with another setup (other options, or an input stage rebuilt since: `setup` holds
    their input_identity), ran past this run's epochs, or no weights have a state, every
    checkpoint and state and the run's `outputs` (its logs and results). Weights of another run
    (RUN_KEYS: a file moved or copied here) are not this run's to remove: it stops, naming both
    (check_network).
    """
    run_dir = Path(run_dir)
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)

    def readable(path):
        try:
            return load_checkpoint(path, mmap=True)
        except UnreadableCheckpoint as e:
            print(f"{e}: removed; the run redoes it", flush=True)
            path.unlink()
            return None

    why, newer = None, []
    for epoch, step, path in reversed(list_checkpoints(run_dir)):
        weights = readable(path)
        if weights is None:
            continue
        state = path if "optim" in weights else beside(path, epoch, step)    # "optim": the earlier layout
        if state != path and (not state.exists() or readable(state) is None):
            newer.append(path)
            continue
        differ = setup_differences(weights.get("config", {}), setup)
        if any(k in RUN_KEYS for k, *_ in differ):      # another run's: it is not ours to remove
            check_network(path, weights, setup, "04 (continuing the run)")
        if differ:
            why = "trained with another setup: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in differ[:4])
        elif epoch > setup.get("epochs", epoch):
            why = f"{path.name} is past this run's {setup['epochs']} epochs"
        else:
            if newer:
                print(f"{run_dir}: {', '.join(p.name for p in newer)} removed (no state to continue from; "
                      f"the run redoes them)", flush=True)
            for other in newer + [p for _, _, p in list_checkpoints(run_dir, state=True) if p != state]:
                other.unlink()
            return epoch if step is None else epoch - 1
        break
    else:
        if newer:
            why = f"{newer[0].name} keeps no optimizer state to continue from"
    stale = [p for kind in (False, True) for _, _, p in list_checkpoints(run_dir, state=kind)]
    stale += [run_dir / o for o in outputs if (run_dir / o).exists()]
    if stale:
        print(f"{run_dir}: starting over{f' ({why})' if why else ''}; removed {len(stale)} files of the "
              f"earlier run", flush=True)
        for path in stale:
            path.unlink()
    return 0


