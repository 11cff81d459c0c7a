"""GPU slots for Make's fan-out: up to len(GPUS) runs at once (make -j), each holding one free
GPU of GPUS while it runs (`devices.py on-gpu` calls on_free_gpu).

A slot is an flock on a file named after the GPU's UUID, in one folder that every WORK, every
user and every container on the host shares (make's GPU_LOCKS, default /tmp/atma11-gpu-locks;
docker-* mounts it): two runs never hold one GPU, whichever WORK they write and however they
number it (nvidia-smi's index on the host, 0.. inside a container, a UUID).
"""
import ctypes
import os
import re
import subprocess
import time
from pathlib import Path

import common


def on_free_gpu(gpus, lock_dir, cmd, poll=0.2):
    """Run `cmd` with CUDA_VISIBLE_DEVICES set to one GPU of `gpus` that no other run holds.

    The hold is an flock on a lock file of the GPU (slot_name), released by the kernel when the
    last process holding its descriptor ends, however it ends: no stale locks after a kill. The
    command inherits the descriptor (its number in $GPU_SLOT_FD) and passes it on to its own
    helpers (04's evaluator), so the GPU stays held while any process of the run lives.
    With no GPUs the command runs as is, on the CPU.
    """
    if not gpus:       # GPUS empty: the CPU, even on a machine that has GPUs
        return subprocess.call(cmd, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    shared_lock_dir(lock_dir)
    names = {gpu: slot_name(gpu, nvml_uuids()) for gpu in gpus}
    said = False
    while True:
        for gpu in gpus:
            path = Path(lock_dir) / names[gpu]
            f = open_lock(path)
            if not common.lock(f, path, wait=False):
                f.close()
                continue
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu), CUDA_DEVICE_ORDER="PCI_BUS_ID",
                       GPU_SLOT_FD=str(f.fileno()))
            print(f"[gpu {gpu}] {' '.join(cmd)}", flush=True)
            try:
                return subprocess.call(cmd, env=env, pass_fds=(f.fileno(),))
            finally:
                f.close()
        if not said:        # once: a run that waits says so, instead of looking hung
            print(f"[gpu] every GPU of {','.join(gpus)} is held by another run ({lock_dir}): waiting for one "
                  f"to be free: {' '.join(cmd)}", flush=True)
            said = True
        time.sleep(poll)


def nvml_uuids():
    """[UUID of each GPU in nvidia-smi's order] as NVML sees them (it ignores CUDA_VISIBLE_DEVICES,
    so an index here is nvidia-smi's), or [] where there is no NVML."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return []
    if nvml.nvmlInit_v2() != 0:
        return []
    count, uuids = ctypes.c_uint(), []
    if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0:
        for i in range(count.value):
            handle, buf = ctypes.c_void_p(), ctypes.create_string_buffer(96)
            ok = (nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) == 0 and
                  nvml.nvmlDeviceGetUUID(handle, buf, 96) == 0)
            uuids.append(buf.value.decode() if ok else "")
    nvml.nvmlShutdown()
    return uuids


def slot_name(gpu, uuids=()):
    """The lock file of a GPU id: an index becomes its GPU's UUID where NVML names it, so an id
    and the UUID of one GPU share a slot; any id (an old-style MIG-GPU-<uuid>/1/0 holds slashes)
    becomes one plain file name."""
    if gpu.isdigit() and int(gpu) < len(uuids) and uuids[int(gpu)]:
        gpu = uuids[int(gpu)]
    return "gpu" + re.sub(r"[^0-9A-Za-z.-]", "_", gpu) + ".lock"


def shared_lock_dir(lock_dir):
    """The slot locks' folder, shared by every WORK and every user on the host: made writable for
    all (sticky, like /tmp)."""
    path = Path(lock_dir)
    if not path.is_dir():
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o1777)
        except OSError as e:
            common.fail(f"GPU_LOCKS={lock_dir}: the GPU slot locks' folder cannot be made ({e.strerror}); "
                        f"set GPU_LOCKS to a folder every run on this host can write")


def open_lock(path):
    """A descriptor to flock: read-only suffices, so a lock file another user made serves too."""
    try:
        return os.fdopen(os.open(path, os.O_RDONLY | os.O_CREAT, 0o666))
    except OSError as e:
        common.fail(f"{path}: the GPU slot lock cannot be opened ({e.strerror}); set GPU_LOCKS to a "
                    f"folder every run on this host can write (a shared one is sticky, mode 1777)")
