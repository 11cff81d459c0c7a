"""What the torch stages (03 jigsaw, 04 fine-tune, 05 features) share besides the images
(pixels.py): the networks, the device and DDP setup, safe checkpoints, one resumable,
deterministic training loop with its optimizers and learning-rate schedules, and inference over
the 8 views. The loop, its checkpoints and its schedules are read together when a resume is in
question: one contract, one file.
"""
import contextlib
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import common
import pixels

PRECISIONS = ("auto", "bf16", "fp32")


def bf16(device, precision):
    """Whether to compute in bfloat16 (torch.autocast): `bf16` always, `fp32` never, `auto` on
    GPUs and on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX; elsewhere autocast would
    emulate it, slower than float32). On a 2-core AVX512-BF16 CPU, ResNet18 at 48 px trained
    1.44x and inferred 1.56x as fast in bf16 (bench/model_throughput.py --arch resnet18 --size 48)."""
    if precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and (
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()))
    return precision == "bf16"


def autocast(device, precision):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16(device, precision))


@torch.inference_mode()
def predict_views(model, px, vidx, device, batch, views=range(8), *, precision, extra=None):
    """(N, V, D) outputs of the given views (default all 8) of every image; px (N, S*S) from
    to_pixels on `device`; extra (N, K): the photo inputs of a network that takes them (the same
    for every view); precision: the calling stage's setting (no default: a forgotten one would
    silently compute in bf16 on a bf16 CPU). channels_last on every device: on this CPU it infers
    ResNets ~1.3x faster (1075 against 822 images/s, ResNet18 at 48 px, batch 256)."""
    model.eval()
    model.to(memory_format=torch.channels_last)
    views = torch.as_tensor(list(views), device=device)
    step = max(batch // len(views), 1)
    outs = []
    for start in range(0, len(px), step):
        chunk = px[start:start + step]
        n = len(chunk)
        x = pixels.to_input(chunk.repeat_interleave(len(views), 0), views.repeat(n), vidx, channels_last=True)
        more = None if extra is None else extra[start:start + n].repeat_interleave(len(views), 0)
        with autocast(device, precision), autotune(n == step):
            outs.append(model(x, more).float().view(n, len(views), -1))
    return torch.cat(outs)


@contextlib.contextmanager
def autotune(allowed):
    """cuDNN's autotuning (Dist turns it on for a GPU) left off where `allowed` is False: for an
    epoch's short last batch, and an inference pass's short last chunk. It times the candidate
    kernels of every new input shape, and a shape seen once per epoch or pass costs more to tune
    than its one batch can gain. The batch's kernels are then cuDNN's heuristic choice, and
    nothing else changes: padding a training batch would change BatchNorm's batch statistics,
    dropping it which samples train. A no-op on a CPU (no benchmark mode)."""
    if allowed or not torch.backends.cudnn.benchmark:
        yield
        return
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = True


HELDOUT_VIEWS = "heldout_views.npz"   # a fold network's held-out side as its last evaluation saw it
OBJECT_IDS = "U20"                    # the .npz files' object_id dtype


def save_views(path, object_ids, outputs, **meta):
    """object_id (N,), outputs (N, 8, D) float32 (and scalar metadata) as one .npz, atomically:
    05's <split>.npz, and the evaluator's HELDOUT_VIEWS."""
    with common.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, object_id=np.asarray(object_ids, dtype=OBJECT_IDS),
                     outputs=np.asarray(outputs, dtype=np.float32), **meta)


def saved_views(run_dir, epoch, object_ids, device, precision):
    """The raw 8-view outputs of these objects that a run's evaluator saved after `epoch`, for 05
    to use instead of a second pass; None where they are not what that pass would compute: another
    epoch, other objects or another order, the other side of bf16."""
    path = Path(run_dir) / HELDOUT_VIEWS
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as saved:
        if (int(saved["epoch"]) != epoch or bool(saved["bf16"]) != bf16(device, precision)
                or not np.array_equal(saved["object_id"], np.asarray(object_ids, dtype=OBJECT_IDS))):
            return None
        return torch.from_numpy(saved["outputs"])


# -----------------------------------------------------------------------------
# Networks from random init (no pretrained weights: competition rule). The ResNets are built
# here, module for module as torchvision builds them (the same state_dict keys, the same init
# drawn in the same order: bit-identical weights for a seed), so a torch stage does not import
# torchvision (about 2 s of every process's start); EfficientNet-B0 imports it when asked for.
ARCHS = ("resnet34", "resnet18", "efficientnet_b0")
RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
WIDTH = 64             # channels of a ResNet's first stage (the recipe's; doubled at each stage)


class Float32Linear(torch.nn.Linear):
    """A head that computes in float32 under bf16 autocast: the outputs are the features 05
    writes (the 8 views' mean, max, min, var; a year), and bf16 keeps 8 bits of them (a year to
    within about 4). The same parameters and state_dict keys as the Linear it replaces."""

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return torch.nn.functional.linear(x.float(), self.weight.float(), self.bias.float())


class BasicBlock(torch.nn.Module):
    """torchvision's BasicBlock: two 3x3 convolutions and a shortcut (a 1x1 one where the shape
    changes)."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(torch.nn.Module):
    """torchvision's ResNet18/34 at any first-stage width (64: torchvision's own), whose head may
    also take photo inputs (variants.photo_inputs), concatenated to the pooled features."""

    def __init__(self, blocks, outputs, width=WIDTH):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        planes = width
        for i, n in enumerate(blocks):
            stride = 1 if i == 0 else 2
            layer = [BasicBlock(planes // stride, planes, stride)] + [BasicBlock(planes, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            planes *= 2
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes // 2, outputs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x, extra=None):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(with_extra(torch.flatten(self.avgpool(x), 1), extra))


def efficientnet_b0(outputs):
    """torchvision's EfficientNet-B0, its head taking photo inputs as ResNet's."""
    import torchvision

    class EfficientNet(torchvision.models.EfficientNet):
        def forward(self, x, extra=None):
            return self.classifier(with_extra(torch.flatten(self.avgpool(self.features(x)), 1), extra))

    model = torchvision.models.efficientnet_b0(weights=None, num_classes=outputs)
    model.__class__ = EfficientNet
    return model


def with_extra(features, extra):
    return features if extra is None else torch.cat([features, extra.to(features.dtype)], 1)


def build_model(arch, outputs, inputs=0, width=None):
    """A network from random init with `outputs` outputs, its head also taking `inputs` photo
    inputs (0: the pixels only, the recipe); a ResNet's first stage `width` channels wide (None:
    WIDTH, the recipe's)."""
    width = width or WIDTH
    if arch not in ARCHS:
        common.fail(f"--arch {arch}: choose one of {ARCHS}")
    if arch in RESNET_BLOCKS:
        model = ResNet(RESNET_BLOCKS[arch], outputs, width)
    elif width != WIDTH:
        common.fail(f"--width {width}: {arch} has the one width ({WIDTH}); widths are for ResNets")
    else:
        model = efficientnet_b0(outputs)
    if inputs:       # a wider head (drawn after the backbone: a network without inputs is unchanged)
        _, linear = head(model)
        wider = torch.nn.Linear(linear.in_features + inputs, outputs)
        if hasattr(model, "fc"):
            model.fc = wider
        else:
            model.classifier[1] = wider
    head(model)[1].__class__ = Float32Linear      # in place: no new parameters, no RNG drawn
    return model


def xavier_init(model, gain=0.02):
    """The seed's init: xavier_normal (gain 0.02) for every convolution and linear layer, zero
    biases; BatchNorm as torchvision makes it (weight 1, bias 0)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


def head(model):
    """The final linear layer's (name prefix, module): fc for ResNets, classifier.1 otherwise."""
    return ("fc.", model.fc) if hasattr(model, "fc") else ("classifier.1.", model.classifier[1])


def load_backbone(model, state):
    """Copy every weight but the head's (the pretext head has 81 outputs, a task's 1-20)."""
    prefix, _ = head(model)
    body = {k: v for k, v in state.items() if not k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(body, strict=False)
    left = [k for k in missing if not k.startswith(prefix)]
    if left or unexpected:
        common.fail(f"backbone does not fit: missing {left[:3]}, unexpected {unexpected[:3]}")


# -----------------------------------------------------------------------------
# Device and DDP: the same script runs alone or under torchrun; only rank 0 logs and saves.
class Dist:
    """This process's device and rank. GPUs asked for (a CUDA_VISIBLE_DEVICES that names any)
    and none usable is an error, never a quiet fall-back to the CPU. Ranks outnumbering the
    visible GPUs share them round-robin, over gloo (NCCL refuses two ranks on one GPU)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        asked = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        self.backend = "gloo"
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            self.device = torch.device("cuda", local % count)
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True      # fixed input shapes: pick the fastest kernels once
            self.backend = "nccl" if local_world <= count else "gloo"
        elif asked and asked != "-1":
            common.fail(no_cuda_reason(asked))
        else:
            self.device = torch.device("cpu")
        if self.world > 1:
            torch.distributed.init_process_group(self.backend)
        self.main = self.rank == 0

    def wrap(self, model, norm="sync"):
        """DDP over the ranks; norm `sync`: BatchNorm over the global batch (sync_batchnorm), `bn`:
        each rank's BatchNorm over its own share (03 --norm)."""
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        if norm == "sync":
            model = sync_batchnorm(model, self.backend)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def reduce_sum(self, values):
        """values (a 1-d float tensor) summed over the ranks; as is in one process."""
        if self.world > 1:
            values = values.to(self.device if self.device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(values)
        return values

    def describe(self):
        if self.device.type == "cuda":
            return f"{self.world} x {torch.cuda.get_device_name(self.device)}"
        return f"{self.world} x cpu ({torch.get_num_threads()} threads)"

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()

    def close(self):
        """The end of a run that succeeded on every rank: the ranks wait for each other (rank 0
        still writes its plots and stamp), then leave the group together. A rank that tore its
        gloo connections down while rank 0 still held them open was, rarely, aborted by gloo
        (`terminate called without an active exception`, exit -6) after its work was done."""
        if self.world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def sync_batchnorm(model, backend):
    """Under NCCL, BatchNorm over the whole global batch (SyncBatchNorm, in place: the same
    parameters and keys), so N GPUs train the function one GPU trains on the same batch. Under
    gloo (CPU ranks, or ranks sharing a GPU) each BatchNorm sees its rank's share of the batch."""
    if backend == "nccl":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def no_cuda_reason(gpus):
    """Why CUDA is unusable on these GPU ids, in one line (devices.py check, in a process of its
    own: the driver reads CUDA_VISIBLE_DEVICES once)."""
    p = subprocess.run([sys.executable, str(Path(__file__).with_name("devices.py")), "check", "--gpus", gpus],
                       capture_output=True, text=True, env=dict(os.environ, WORLD_SIZE="1"))
    lines = [l.removeprefix("error: ") for l in p.stderr.splitlines() if l.strip()]
    return (lines[-1] if p.returncode and lines else
            f"CUDA_VISIBLE_DEVICES={gpus} asks for GPUs, and torch finds none usable")


# -----------------------------------------------------------------------------
# Checkpoints: self-describing, written atomically, read back with weights_only=True. Two kinds,
# named by common.ckpt_name: a network's weights (ckpt_e003.pt: the model, its epoch, step and
# config; every epoch's end, what the evaluator, 05 and 04 --init read) and the state a run
# continues from (state_e003.pt: the optimizer, RNG and global step at the same point; one at a
# time, the newest, written before its weights). A checkpoint written before states had files of
# their own holds both (its "optim"): a run continues from it as well.
CKPT_RE = re.compile(r"^(ckpt|state)_e(\d{3})(?:_s(\d{8}))?\.pt$")
LOG_EVERY = 10         # steps between loss.csv rows of 03 and 04: the only host syncs of a step
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


def state_due(on_gpu, config, epoch, step, seconds):
    """Whether rank 0 writes a resumable state (optimizer, RNG) at (epoch, step): `step` steps of
    the epoch done, None at its end (where the epoch's weights are written in any case);
    `seconds` since the last state was written (or the run started).

    On a CPU at every epoch end and every config ckpt_every steps: the points where the tests
    kill and resume bit-identically. On a GPU by the clock, config ckpt_minutes after the last
    one (a step count paced for a CPU would stop a GPU every few seconds to write the model and
    Adam's moments), at an epoch end or a log step, right after the host sync the log makes
    anyway. Only rank 0 saves and no collective takes part, so the other ranks need not know.
    The run's last epoch always has one: a later run of more epochs continues from it."""
    if step is None and epoch == config["epochs"]:
        return True
    if not on_gpu:
        return step is None or step % config["ckpt_every"] == 0
    synced = step is None or step % config["log_every"] == 0
    return synced and seconds >= 60 * config.get("ckpt_minutes", CKPT_MINUTES)


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
    The number of epochs is the schedule's only under onecycle and cosine: halving continues."""
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


def epoch_generator(seed, epoch):
    """The RNG of epoch e: its own instance, seeded with (seed, e); global RNGs untouched."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def fit(model, *, run_dir, dist, config, epoch_plan, batch_loss, log_extra=None, on_epoch_end=None):
    """Train `model` for config['epochs'] epochs, resumable and deterministic.

    epoch_plan(epoch, generator) -> a tensor whose rows describe the epoch's samples in order
    batch_loss(net, rows) -> (loss summed over the rows, stats dict of summed tensors)
    on_epoch_end(epoch, net) runs on rank 0 after the epoch's checkpoint is written.

    The optimizer and the learning-rate schedule come from the config (make_optimizer, lr_at):
    the recipe's Adam with lr halved after every epoch, or AdamW with a one-cycle or cosine
    schedule. The weights at every epoch end (config keep_epochs: all kept, or the last: the
    evaluator and 05 read them); a resumable state (optimizer, RNG) as state_due says: on a CPU
    at every epoch end and every config ckpt_every steps, on a GPU every config ckpt_minutes,
    with the weights of that point (prune_checkpoints keeps only the newest state). A rerun
    continues from the newest weights with their state (settle_checkpoints) and sees exactly the
    batches it would have seen: a global batch is split across ranks, and each rank's summed loss
    is divided by the global batch size, so DDP's gradient average equals the full batch's.
    """
    run_dir = Path(run_dir)
    device, world, rank = dist.device, dist.world, dist.rank
    model.to(device)
    if config.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    optim = make_optimizer(model, config)
    start_epoch, start_step, gstep, state_at = 1, 0, 0, None
    ckpts = list_checkpoints(run_dir)
    if ckpts:
        epoch, step, path = ckpts[-1]
        # on the host: load_state_dict copies the weights onto the model's device, and the
        # optimizer's state where the optimizer keeps it (Adam's `step` counters: the host,
        # where each costs no sync; the device, for the fused kernel that reads them there)
        weights = load_checkpoint(path, "cpu")
        if "optim" in weights:          # a checkpoint of the earlier layout: weights and state in one
            state = weights
        elif beside(path, epoch, step).exists():
            state = load_checkpoint(beside(path, epoch, step), "cpu")
        else:
            common.fail(f"{path}: no {beside(path, epoch, step).name} beside it to continue from; run the "
                        f"stage again (it continues from the newest weights that have their state)")
        model.load_state_dict(weights["model"])
        optim.load_state_dict(state["optim"])
        torch.set_rng_state(state["torch_rng"].cpu())
        gstep, state_at = state["global_step"], (epoch, step)
        start_epoch, start_step = (epoch + 1, 0) if step is None else (epoch, step)
        if dist.main:
            print(f"resuming from {path.name} (epoch {epoch}, step {step or 'end'})", flush=True)
    net = dist.wrap(model, config.get("norm", "sync"))
    compiling = None
    if config.get("compile"):
        missing = compile_needs(device)
        if missing:
            common.fail(f"--compile: torch.compile builds its kernels with {' and '.join(missing)}, and "
                        f"this machine has none (the CUDA runtime image ships no compiler); run "
                        f"without --compile, or install them")
        net = torch.compile(net)
        compiling = time.time()     # the kernels compile during the first step: its time is reported
    log_path = run_dir / "loss.csv"
    if dist.main:
        keep_log_until(log_path, gstep)

    described = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool, list))}
    on_gpu, last_state = device.type == "cuda", time.monotonic()

    def save(epoch, step, with_state):
        """The weights at (epoch, step), step None at the epoch's end; with_state, first the state
        to continue from there: weights whose state was due are never without it, and a kill
        between the two leaves a state without weights, which settle_checkpoints removes."""
        nonlocal state_at, last_state
        where = {"epoch": epoch, "step": step, "global_step": gstep}
        if with_state:
            save_checkpoint(run_dir / common.ckpt_name(epoch, step, state=True),
                            {"optim": optim.state_dict(), "torch_rng": torch.get_rng_state(), **where})
            state_at, last_state = (epoch, step), time.monotonic()
        save_checkpoint(run_dir / common.ckpt_name(epoch, step), {"model": model.state_dict(), **where, "config": described})
        prune_checkpoints(run_dir, state_at, config.get("keep_epochs", "all"))

    for epoch in range(start_epoch, config["epochs"] + 1):
        plan = epoch_plan(epoch, epoch_generator(config["seed"], epoch)).to(device)   # one copy per epoch
        batches = math.ceil(len(plan) / config["batch"])
        net.train()
        first = start_step if epoch == start_epoch else 0
        bar = progress(range(first, batches), dist, desc=f"{run_dir.name} e{epoch}", total=batches,
                       initial=first)
        acc, seen, n_local, t_log = {}, 0, 0, time.time()
        for step in bar:
            rows = plan[step * config["batch"]:(step + 1) * config["batch"]]
            global_n = len(rows)
            rows = rows[rank::world]
            lr = lr_at(config, epoch, step, batches)
            for group in optim.param_groups:
                group["lr"] = lr
            optim.zero_grad(set_to_none=True)
            with autotune(global_n == config["batch"]):
                loss_sum, stats = batch_loss(net, rows)
                (loss_sum * world / global_n).backward()
            optim.step()
            gstep += 1
            if compiling is not None:
                if device.type == "cuda":
                    torch.cuda.synchronize()        # once per run, so the figure is the compile's
                if dist.main:
                    print(f"torch.compile: the first step, which compiles the kernels, took "
                          f"{time.time() - compiling:.1f}s", flush=True)
                compiling = None
            seen += global_n
            n_local += len(rows)
            for k, v in {"loss": loss_sum, **stats}.items():      # summed on the device: no sync
                acc[k] = acc.get(k, 0) + v.detach().float()
            last = step + 1 == batches
            if (step + 1) % config["log_every"] == 0 or last:
                # the only host sync: log interval; summed over the ranks, so the log is the global batch's
                keys = list(acc)
                totals = dist.reduce_sum(torch.stack([acc[k] for k in keys] + [torch.tensor(float(n_local), device=device)]))
                figures = dict(zip(keys, totals[:-1].tolist()))
                n = max(totals[-1].item(), 1)
                rate = seen / max(time.time() - t_log, 1e-9)
                row = {"step": gstep, "epoch": epoch, "loss": figures.pop("loss") / n,
                       **{k: v / n for k, v in figures.items()}, "images_per_s": rate * 1.0, "lr": lr}
                if dist.main:
                    append_log(log_path, row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{rate:.0f}", refresh=False)
                acc, seen, n_local, t_log = {}, 0, 0, time.time()
            if dist.main and not last and state_due(on_gpu, config, epoch, step + 1, time.monotonic() - last_state):
                save(epoch, step + 1, with_state=True)
        if dist.main:
            save(epoch, None, state_due(on_gpu, config, epoch, None, time.monotonic() - last_state))
            if on_epoch_end:
                on_epoch_end(epoch, model)
    return model


def compile_needs(device):
    """What torch.compile lacks here to build kernels ([] when nothing): Inductor compiles C++
    for a CPU, and Triton builds a C launcher, against Python's headers, for a GPU."""
    import shutil
    import sysconfig
    if device.type == "cpu":
        compilers, what = (os.environ.get("CXX"), "c++", "g++", "clang++"), "a C++ compiler (g++, clang++ or $CXX)"
    else:
        compilers, what = (os.environ.get("CC"), "cc", "gcc", "clang"), "a C compiler (cc, gcc, clang or $CC)"
    missing = [] if any(c and shutil.which(c) for c in compilers) else [what]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if device.type == "cuda" and not headers.exists():
        missing.append(f"Python's headers ({headers})")
    return missing


def add_optimizer_options(p):
    """The optimizer and learning-rate schedule options of a training stage (03, 04); the profile
    supplies what the command line leaves out (make_optimizer, lr_at)."""
    p.add_argument("--optim", default=None, choices=["adam", "adamw"], help="optimizer (profile; the recipe: adam)")
    p.add_argument("--lr", type=float, default=None, help="learning rate, the peak for onecycle (profile)")
    p.add_argument("--betas", type=float, nargs=2, default=None, help="Adam betas (profile; the recipe: 0.5 0.999)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (profile)")
    p.add_argument("--schedule", default=None, choices=SCHEDULES, help="lr schedule (profile; the recipe: halve)")
    p.add_argument("--halve-views", type=int, default=None,
                   help="halve: views per image between halvings (profile; the recipe: 8, once per 8-view epoch)")


def make_optimizer(model, config):
    """The recipe's Adam (config betas, no weight decay), or AdamW with config weight_decay; on a
    GPU torch's fused kernel (fused_adam), elsewhere its default, whose CPU results the resume
    tests compare bit for bit."""
    params, betas = list(model.parameters()), tuple(config["betas"])
    fused = {"fused": True} if fused_adam(params) else {}
    if config.get("optim", "adam") == "adam":
        return torch.optim.Adam(params, lr=config["lr"], betas=betas, **fused)
    return torch.optim.AdamW(params, lr=config["lr"], betas=betas, weight_decay=config["weight_decay"], **fused)


def fused_adam(params):
    """Whether Adam runs fused: every parameter a floating-point tensor on a GPU. One kernel
    launch for all the parameters instead of several per tensor (ResNet34: 110 tensors per
    step); the same update up to rounding."""
    return bool(params) and all(p.device.type == "cuda" and p.is_floating_point() for p in params)


SCHEDULES = ("halve", "onecycle", "cosine")


def lr_at(config, epoch, step, batches):
    """The learning rate of step `step` (0-based) of epoch `epoch` (1-based), `batches` steps per
    epoch: a function of the position only, so a resumed run follows the same schedule.

    halve:    the recipe: config lr halved after every `halve_views` views per image (the recipe
              trains 8 views per epoch and halves per epoch: halve_views = 8 = views).
    onecycle: from lr/25 up to lr over the first `warmup` of the run, then down to lr/25e4,
              both on a cosine (torch's OneCycleLR shape, without its momentum cycling).
    cosine:   from lr down to 0 on a cosine.
    """
    lr, kind = config["lr"], config.get("schedule", "halve")
    if kind == "halve":
        seen = (epoch - 1) * config["views"]               # views per image before this epoch
        return lr * 0.5 ** (seen // config.get("halve_views", config["views"]))
    t = ((epoch - 1) * batches + step) / (config["epochs"] * batches)     # progress, 0 .. 1
    if kind == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * t))
    warm, low = config.get("warmup", 0.25), lr / 25
    if t < warm:
        return low + (lr - low) * 0.5 * (1 - math.cos(math.pi * t / warm))
    end = low / 1e4
    return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm)))


def append_log(path, row):
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write(",".join(row) + "\n")
        f.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.values()) + "\n")


def keep_log_until(path, gstep):
    """On resume, drop log rows written after the checkpoint (they will be logged again)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [lines[0]] + [l for l in lines[1:] if l.count(",") == lines[0].count(",") and
                         l.split(",")[0].isdigit() and int(l.split(",")[0]) <= gstep]
    common.write_text(path, "\n".join(kept) + "\n")


def progress(iterable, dist, **kw):
    from tqdm import tqdm
    return tqdm(iterable, disable=not dist.main, mininterval=1 if sys.stderr.isatty() else 30,
                dynamic_ncols=True, **kw)


def configure_threads():
    """Same thread count on every run of a stage: CPU results are bit-identical only then."""
    threads = int(os.environ.get("TORCH_THREADS", "0")) or min(os.cpu_count() or 1, 8)
    torch.set_num_threads(threads)


def banner(stage, args, dist, **sizes):
    if dist.main:
        extra = " ".join(f"{k}={v}" for k, v in sizes.items())
        print(f"[{stage}] profile={args.profile} device={dist.describe()} {extra}", flush=True)
