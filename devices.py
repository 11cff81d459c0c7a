"""The machine a run asks for: whether CUDA is usable on GPUS before any stage starts, where a
fine-tune's evaluator can run, GPU slots for Make's fan-out, and what a profile costs on a CPU.

    python devices.py check --gpus 0,1,2,3           # CUDA usable on those GPUs, or one line why
    python devices.py estimate --profile full --data DATA [--folds DIR]   # its time on this CPU
    python devices.py on-gpu --gpus 0,1 --locks DIR -- CMD ...            # CMD holding a free GPU

The driver is asked directly (libcuda through ctypes, NVML where present), before torch touches
it: torch's own `cuda.is_available()` says only False, and the stages would then train on the
CPU. Nothing here writes except the slot locks of on-gpu (gpu_slots.py).

GPU ids are nvidia-smi's: CUDA_DEVICE_ORDER=PCI_BUS_ID wherever a GPU is used (CUDA's own default
order is fastest first). A CUDA_VISIBLE_DEVICES set before make (a SLURM job, a scheduler, a
container runtime) is the set of GPUs this job was granted: GPUS must name GPUs within it.
"""
import argparse
import ctypes
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import common
import gpu_slots
import tasks

# -----------------------------------------------------------------------------
GPU_ID_RE = re.compile(r"^(\d{1,3}|(GPU|MIG)-[0-9A-Za-z/-]{1,80})$")   # an index or a UUID
COMPUTE_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}
CU_DEVICE_ATTRIBUTE_COMPUTE_MODE = 20
CUDA_ERROR_NO_DEVICE = 100
# cuInit's errors that are no missing GPU, each with its way out (CUresult, cuda.h)
CUINIT_ERRORS = {
    34: "the libcuda.so.1 loaded is the CUDA toolkit's stub, not the driver's: in a container start "
        "it with the NVIDIA runtime (--gpus), and keep .../stubs out of LD_LIBRARY_PATH",
    35: "the driver's user-space library (libcuda) is newer than its kernel module: the driver was "
        "upgraded without a reboot (reboot, or reload the nvidia modules)",
    802: "the system is not ready: on an NVSwitch machine (HGX, DGX) the Fabric Manager must run "
         "(systemctl start nvidia-fabricmanager, of the driver's exact version)",
    803: "the CUDA forward-compatibility library (cuda-compat's libcuda) does not match the kernel "
         "driver: take the compat folder out of LD_LIBRARY_PATH, or install the matching driver",
    804: "CUDA forward compatibility (cuda-compat) is not supported on this GPU (data-centre GPUs "
         "only): update the kernel driver instead, and drop the compat library",
    999: "the driver failed in an unknown way, most often because the nvidia_uvm kernel module is "
         "not loaded (after a suspend, or a driver upgrade without a reboot): sudo modprobe "
         "nvidia_uvm (or nvidia-modprobe -u -c=0); dmesg says more; else reboot",
}
NO_GPU_GRANTED = ("", "-1", "NoDevFiles", "none", "void")   # CUDA_VISIBLE_DEVICES values that grant none
ESTIMATE_SECONDS = 3.0   # estimate: seconds of measured training (and as many of inference)
ESTIMATE_PIXELS = 400_000  # estimate: the most pixels (images x side^2) a measured batch holds


def parse_gpus(text):
    """GPUS as a list of ids; a malformed list is an error naming the bad id."""
    ids = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in ids if not GPU_ID_RE.match(g)]
    if bad or not ids:
        common.fail(f"GPUS={text}: GPU ids are numbers or GPU-/MIG- UUIDs, comma-separated (0,1,2,3)")
    if len(set(ids)) < len(ids):
        common.fail(f"GPUS={text} names a GPU twice: each id once (the runs would share it)")
    outside = outside_grant(ids, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if outside:
        common.fail(outside)
    return ids


def outside_grant(gpus, preset):
    """Why `gpus` may not be used under a preset CUDA_VISIBLE_DEVICES (None: it is unset, or every
    id is within it). Composed, not replaced: on a node without cgroup device isolation a job
    granted GPUs 4-7 would otherwise train on its neighbours' 0-3."""
    if preset is None:
        return None
    granted = [g.strip() for g in preset.split(",") if g.strip()]
    label = f"GPUS={','.join(gpus)}"
    if preset.strip() in NO_GPU_GRANTED or not all(GPU_ID_RE.match(g) for g in granted):
        return (f"{label}, but CUDA_VISIBLE_DEVICES={preset!r} (set before make: a scheduler, a container) "
                f"grants this job no GPU; ask the scheduler for GPUs, or leave GPUS empty for the CPU")
    outside = [g for g in gpus if g not in granted]
    if outside:
        return (f"{label} names GPU {','.join(outside)}, outside the GPUs this job was granted "
                f"(CUDA_VISIBLE_DEVICES={preset}, set before make): use ids from that list, e.g. "
                f"GPUS={preset} for all of them")
    return None


# -----------------------------------------------------------------------------
# What the driver says: facts first (cuda_facts), the verdict from them alone (diagnose).
def cuda_version(number):
    """The driver API's integer (13000) as 13.0."""
    return f"{number // 1000}.{number % 1000 // 10}"


def nvml_facts():
    """{driver: "580.65.06", gpus_total: N} from NVML (it sees every GPU, whatever CUDA_VISIBLE_DEVICES
    says), or {} where libnvidia-ml is absent."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return {}
        buf, count = ctypes.create_string_buffer(96), ctypes.c_uint()
        facts = {}
        if nvml.nvmlSystemGetDriverVersion(buf, 96) == 0:
            facts["driver"] = buf.value.decode()
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0:
            facts["gpus_total"] = count.value
        nvml.nvmlShutdown()
        return facts
    except (OSError, AttributeError):
        return {}


def load_libcuda():
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


def compute_modes(cuda=None):
    """[compute mode name] of every device this process sees (CUDA_VISIBLE_DEVICES applied), in
    CUDA's order; [] when the driver cannot tell."""
    cuda = cuda or load_libcuda()
    if cuda is None or cuda.cuInit(0) != 0:
        return []
    count, modes = ctypes.c_int(), []
    cuda.cuDeviceGetCount(ctypes.byref(count))
    for i in range(count.value):
        dev, mode = ctypes.c_int(), ctypes.c_int()
        if cuda.cuDeviceGet(ctypes.byref(dev), i) != 0 or \
                cuda.cuDeviceGetAttribute(ctypes.byref(mode), CU_DEVICE_ATTRIBUTE_COMPUTE_MODE, dev) != 0:
            return []
        modes.append(COMPUTE_MODES.get(mode.value, str(mode.value)))
    return modes


def cuda_facts(gpus):
    """What the driver and torch say about these GPU ids. Run in a process of its own: the
    driver reads CUDA_VISIBLE_DEVICES once, at cuInit."""
    os.environ.update(CUDA_VISIBLE_DEVICES=",".join(gpus), CUDA_DEVICE_ORDER="PCI_BUS_ID")
    import torch
    facts = dict(gpus=gpus, torch=torch.__version__, torch_cuda=torch.version.cuda, **nvml_facts())
    cuda = load_libcuda()
    facts["libcuda"] = cuda is not None
    if cuda is None:
        return facts
    version = ctypes.c_int()
    if cuda.cuDriverGetVersion(ctypes.byref(version)) == 0:
        facts["driver_cuda"] = version.value
    facts["init"] = cuda.cuInit(0)
    if facts["init"] == 0:
        facts["modes"] = compute_modes(cuda)
    return facts


def diagnose(facts):
    """(error: one line naming the cause, or None; what to report when it is usable)."""
    gpus, label = facts["gpus"], "GPUS=" + ",".join(facts["gpus"])
    if not facts.get("torch_cuda"):
        return (f"{label}: torch {facts['torch']} in .venv is built without CUDA; install a CUDA "
                f"build (requirements.txt pins the default one, built for CUDA 13.0), or leave GPUS "
                f"empty to run on the CPU"), None
    if not facts.get("libcuda"):
        return (f"{label}: no NVIDIA driver here (libcuda.so.1 cannot be loaded); install the driver, "
                f"or in a container start it with --gpus (make docker-all GPUS=... does)"), None
    need = tuple(int(x) for x in facts["torch_cuda"].split(".")[:2])
    found = facts.get("driver_cuda", 0)
    driver = f" {facts['driver']}" if facts.get("driver") else ""
    if found and (found // 1000, 0) < (need[0], 0):
        return (f"{label}: the NVIDIA driver{driver} is too old: it supports CUDA {cuda_version(found)}, "
                f"and torch {facts['torch']} needs a driver for CUDA {need[0]}.0 or newer (built for "
                f"CUDA {facts['torch_cuda']}); update the driver"), None
    seen = f"this machine shows {facts['gpus_total']} GPU(s)" if "gpus_total" in facts else ""
    if facts.get("init") in CUINIT_ERRORS:
        return f"{label}: CUDA cannot start (cuInit error {facts['init']}): {CUINIT_ERRORS[facts['init']]}", None
    modes = facts.get("modes", [])
    if facts.get("init") not in (0, None) or len(modes) < len(gpus):
        first = gpus[len(modes)] if len(modes) < len(gpus) else gpus[0]
        why = f"cuInit error {facts['init']}" if facts.get("init") not in (0, CUDA_ERROR_NO_DEVICE) else ""
        detail = "; ".join(x for x in (seen, why) if x)
        return (f"{label}: GPU {first} is not visible{f' ({detail})' if detail else ''}; use the ids "
                f"nvidia-smi lists, and in a container pass them with --gpus"), None
    prohibited = [g for g, m in zip(gpus, modes) if m == "Prohibited"]
    if prohibited:
        return (f"{label}: GPU {prohibited[0]} is in compute mode Prohibited: no process may use it "
                f"(nvidia-smi -c DEFAULT, or other GPUS)"), None
    exclusive = [g for g, m in zip(gpus, modes) if m in ("Exclusive_Process", "Exclusive_Thread")]
    report = (f"{label}: CUDA {cuda_version(found)} driver{driver}, torch {facts['torch']}; compute mode "
              + ", ".join(f"{g} {m}" for g, m in zip(gpus, modes))
              + (f"; GPU {','.join(exclusive)} takes one process at a time: the fine-tunes' evaluators "
                 f"run inline there" if exclusive else ""))
    return None, report


def cmd_check(args):
    gpus = parse_gpus(args.gpus)
    if len(gpus) > 1 and any(g.startswith("MIG-") for g in gpus):
        # CUDA shows a process one MIG slice: each is checked in a process of its own, as each
        # 04/05 run uses one (03 trains on the first: make sets RANKS=1 for MIG slices)
        failed = 0
        for gpu in gpus:
            failed |= subprocess.call([sys.executable, __file__, "check", "--gpus", gpu])
        sys.exit(2 if failed else 0)
    facts = cuda_facts(gpus)
    error, report = diagnose(facts)
    if error:
        common.fail(error)
    import torch
    try:          # a context on each: what the driver allows is what a stage will get
        names = [torch.cuda.get_device_name(torch.zeros(1, device=f"cuda:{i}").device) for i in range(len(gpus))]
    except RuntimeError as e:
        common.fail(f"GPUS={args.gpus}: CUDA fails on first use: {str(e).strip().splitlines()[0]}")
    print(f"{report}; {', '.join(names)}", flush=True)


def evaluator_placement(device, asked):
    """(process | inline, why) for a fine-tune's evaluator: `asked` (process, inline, auto).
    auto: a process on a GPU (the recipe: training never waits for it), inline on a CPU (a second
    process would take one of its cores for the whole run) and on a GPU that takes one process
    at a time (compute mode Exclusive_Process: the second could not start)."""
    if asked != "auto":
        return asked, "asked for"
    if device.type != "cuda":
        return "inline", "on a CPU"
    modes = compute_modes()
    mode = modes[device.index] if device.index is not None and device.index < len(modes) else "Default"
    if mode != "Default":
        return "inline", f"the GPU is in compute mode {mode}: a second process cannot use it"
    return "process", "on a GPU"


# -----------------------------------------------------------------------------
# What a profile costs: images trained and inferred per stage, and its time at measured rates.
def profile_images(profile, photos, fold_rows, nets=len(tasks.TASKS), seeds=1, epochs=None):
    """{stage: (images trained, images inferred)} of a whole run: `photos` (train.csv's and
    test.csv's), fold_rows {fold: train rows} (fold all's: every labelled row). 03 trains on every
    photo where the profile says holdout_trains, else on all but the held-out ones; a fold's
    evaluator scores its held-out side (fold all: common.EVAL_TRAIN_ROWS of its own rows); 05
    describes the labelled rows, and test.csv with fold all's networks (every fold's with
    fold_test). epochs: 04's, in place of the profile's (budget.py's rungs)."""
    c3, c4, c5 = (common.PROFILES[profile][s] for s in ("03", "04", "05"))
    c4 = dict(c4, epochs=epochs or c4["epochs"])
    trained03 = photos if c3["holdout_trains"] else photos - c3["holdout"]
    runs, labelled = nets * seeds, fold_rows["all"]
    train4 = runs * sum(rows * c4["views"] * c4["epochs"] for rows in fold_rows.values())
    scored = {f: labelled - rows if f != "all" else min(rows, common.EVAL_TRAIN_ROWS) for f, rows in fold_rows.items()}
    eval4 = runs * sum((c4["epochs"] - 1) * c4["eval_views"] * min(c4["eval_rows"] or n, n) + 8 * n
                       for n in scored.values())
    infer5 = runs * 8 * sum(photos if (f == "all" or c5["fold_test"] == "yes") else labelled for f in fold_rows)
    return {"03": (c3["epochs"] * trained03 * c3["views"] * c3["perms"], 0), "04": (train4, eval4),
            "05": (0, infer5)}


def measure_rates(profile, seconds=ESTIMATE_SECONDS):
    """(training, inference) images/s of the profile's 04 network at its size on this CPU,
    measured for about `seconds` each after one step of warm-up."""
    import torch
    import inference
    import models
    import training
    training.configure_threads()
    c2, c4, c5 = (common.PROFILES[profile][s] for s in ("02", "04", "05"))
    model = models.build_model(c4["arch"], 1, width=c4.get("width", models.WIDTH)).to(memory_format=torch.channels_last)
    # the profile's own batches (a CPU's images/s depend on them), cut to keep a step to a second or so
    fits = max(1, ESTIMATE_PIXELS // c2["size"] ** 2)
    batch, infer_batch = min(c4["batch"], fits), min(c5["batch"], fits)
    x = torch.randn(max(batch, infer_batch), 3, c2["size"], c2["size"]).contiguous(memory_format=torch.channels_last)
    optim = torch.optim.Adam(model.parameters())
    device = torch.device("cpu")

    def timed(step, size):
        step()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 1:
            step()
            n += 1
        return n * size / (time.perf_counter() - t0)

    def train_step():
        with inference.autocast(device, c4["precision"]):
            loss = model(x[:batch]).float().square().mean()
        optim.zero_grad()
        loss.backward()
        optim.step()

    def infer_step():
        with torch.inference_mode(), inference.autocast(device, c4["precision"]):
            model(x[:infer_batch])

    train_rate = timed(train_step, batch)
    model.eval()
    return train_rate, timed(infer_step, infer_batch)


def photo_counts(data, folds=None):
    """(photos, {fold: train rows}, where) of a run: train.csv's and test.csv's rows (the
    competition's counts when DATA holds no train.csv yet) and 01's folds where it ran."""
    train, test = csv_rows(data / "train.csv"), csv_rows(data / "test.csv")
    if train is not None:
        test = test or 0
        where = f"{train} train + {test} test photos in {data}"
    else:
        train, test = 3937, 5919
        where = "the competition's 3937 train + 5919 test photos (DATA holds no train.csv yet)"
    if folds and all(common.fold_csv(folds, f, "train").exists() for f in common.FOLDS):
        fold_rows = {f: len(common.read_fold(folds, f, "train")) for f in common.FOLDS}
    else:
        fold_rows = {f: (train if f == "all" else train * 2 // 3) for f in common.FOLDS}
    return train + test, fold_rows, where


def cmd_estimate(args):
    photos, fold_rows, where = photo_counts(Path(args.data), Path(args.folds) if args.folds else None)
    images = profile_images(args.profile, photos, fold_rows, args.nets, args.seeds)
    rate_train, rate_infer = measure_rates(args.profile)
    seconds = {s: t / rate_train + i / rate_infer for s, (t, i) in images.items()}
    total = sum(seconds.values())
    c2, c4 = common.PROFILES[args.profile]["02"], common.PROFILES[args.profile]["04"]
    print(f"PROFILE={args.profile} on this CPU: about {human(total)} of training and inference "
          f"({', '.join(f'{s} {human(v)}' for s, v in seconds.items())}) for {where}, at the "
          f"{rate_train:.1f} images/s training and {rate_infer:.1f} inference measured here just now "
          f"({c4['arch']} at {c2['size']} px, {os.cpu_count()} cores); the network's steps alone: the "
          f"run also moves and scores its data, so count on more", flush=True)


def csv_rows(path):
    """Rows of a raw CSV for an estimate (its lines after the header), None when it is no
    readable regular file: the estimate runs before validation, which judges the files."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            return max(sum(1 for _ in f) - 1, 0)
    except OSError:
        return None


def human(seconds):
    for unit, size in (("days", 86400), ("hours", 3600), ("min", 60)):
        if seconds >= 2 * size or unit == "min":
            return f"{seconds / size:.1f} {unit}" if unit != "min" else f"{seconds / size:.0f} min"


def cmd_on_gpu(args):
    gpus = parse_gpus(args.gpus) if args.gpus.strip() else []
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    sys.exit(gpu_slots.on_free_gpu(gpus, args.locks, cmd))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="CUDA usable on every GPU of --gpus, or one line naming the cause")
    c.add_argument("--gpus", required=True)
    e = sub.add_parser("estimate", help="a profile's training and inference time on this CPU, measured")
    e.add_argument("--profile", required=True, choices=sorted(common.PROFILES))
    e.add_argument("--data", required=True, help="the raw data (its train.csv and test.csv are counted)")
    e.add_argument("--folds", default=None, help="stage 01's directory, when it ran")
    e.add_argument("--nets", type=int, default=len(tasks.TASKS), help="networks per fold")
    e.add_argument("--seeds", type=int, default=1, help="seeds per network")
    g = sub.add_parser("on-gpu", help="run a command on a free GPU of --gpus")
    g.add_argument("--gpus", default="")
    g.add_argument("--locks", required=True)
    g.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args()
    {"check": cmd_check, "estimate": cmd_estimate, "on-gpu": cmd_on_gpu}[args.command](args)


if __name__ == "__main__":
    main()
