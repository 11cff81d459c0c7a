"""What a torch stage computes in and how it reads a network's outputs: the precision (bf16
autocast or float32), inference over the 8 views of every image (04's evaluator, 05's
features), and the .npz those outputs are kept in (05's <split>.npz, the evaluator's
HELDOUT_VIEWS).
"""
from pathlib import Path

import numpy as np
import torch

import common
import distributed
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
def predict_views(model, px, vidx, device, batch, views=range(8), *, precision):
    """(N, V, D) outputs of the given views (default all 8) of every image; px (N, S*S) from
    to_pixels on `device`; precision: the calling stage's setting (no default: a forgotten one
    would silently compute in bf16 on a bf16 CPU). channels_last on every device: on this CPU it infers
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
        with autocast(device, precision), distributed.autotune(n == step):
            outs.append(model(x).float().view(n, len(views), -1))
    return torch.cat(outs)


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
