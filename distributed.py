"""This process's device and rank: the same script runs alone or under torchrun, and only rank 0
logs and saves (Dist); BatchNorm over the global batch under NCCL (sync_batchnorm); why CUDA is
unusable where GPUs were asked for (no_cuda_reason); and cuDNN's autotuning, which Dist turns on
for a GPU and a short batch turns off (autotune).
"""
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import torch

import common


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
        """The end of a run that succeeded on every rank. Alone, nothing to do. Under torchrun
        the ranks wait for each other (rank 0 still writes its plots and DONE), and then the
        process ends here, exit 0, without tearing gloo down: gloo's teardown (in
        destroy_process_group or the interpreter's exit) rarely aborted a rank whose work was
        done and DONE written (`terminate called without an active exception`, exit -6, about
        one run in a hundred under load), and torchrun then failed the stage. NCCL's
        communicators are destroyed first, as NCCL asks."""
        if self.world == 1:
            return
        torch.distributed.barrier()
        if self.backend == "nccl":
            torch.distributed.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


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
