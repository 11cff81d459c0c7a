"""SyncBatchNorm as 03 runs it on several GPUs, checked and timed on one GPU.

torch's SyncBatchNorm function against F.batch_norm on channels_last input (bf16 and fp32,
forward and backward), the host syncs it adds to a training step, and ResNet34's training
images/s with it against plain BatchNorm.

One rank: a process group of one (NCCL on a GPU, gloo on a CPU). torch's own module then never
syncs: SyncBatchNorm.forward takes F.batch_norm when the group has one rank (the pinned torch's
torch/nn/modules/batchnorm.py, `need_sync = world_size > 1`). So every SyncBatchNorm here calls
the function the module calls on two or more ranks, torch.nn.modules._functions.SyncBatchNorm:
its statistics gathered over the group (all_gather, here of one rank's), the empty-rank mask,
the count-weighted combination, the gradient all_reduce, and its CUDA kernels (batch_norm_stats,
batch_norm_gather_stats_with_counts, batch_norm_elemt, batch_norm_backward_reduce,
batch_norm_backward_elemt). The networks are converted by SyncBatchNorm.convert_sync_batchnorm,
as distributed.sync_batchnorm does under NCCL.

Printed (stdout; notes on stderr start with `# `):
  syncbn_<dtype>_max_abs_diff_<what>: d (tolerance t)   for out, grad_input, grad_weight,
      grad_bias, running_mean, running_var: max |function - F.batch_norm|; t is TOLERANCE[dtype]
      times the largest |F.batch_norm| value of that quantity
  check_syncbn_<dtype>: ok|FAILED    ok: every d within its t, both sides' dtypes the same
  syncbn_host_syncs_per_step / batchnorm_host_syncs_per_step: N (L BatchNorm layers)   (GPU) the
      synchronising operations set_sync_debug_mode("warn") reports in one training step, after warm-up
  syncbn_train_images_per_s / batchnorm_train_images_per_s, syncbn_slowdown: x (batchnorm's
      rate over syncbn's) for ResNet34 training steps (Adam, MSE on random targets), bf16 autocast
      and channels_last on a GPU, fp32 on a CPU
The exit status is 1 when a check failed.

The CPU dry run (what `make test` runs, at toy size) has no CUDA kernels for the five ops above:
it registers stand-ins written from their CUDA semantics with plain tensor ops, so torch's
function runs on a CPU, its Python and gloo collectives included. It checks the script and the
function's plumbing, not CUDA's kernels; it counts no host syncs and its images/s time stand-ins.
A GPU adds CUDA's kernels in bf16 and channels_last, NCCL, the host syncs and the cost.
Only a host with several GPUs shows the real cross-GPU reduction (statistics of several ranks
combined over NCCL, the gradient all_reduce across ranks, the collectives' latency between
GPUs) and how 03 scales: run 03 itself there (make jigsaw GPUS=0,1,2,3).

    python bench/syncbn_check.py --device cuda
    python bench/syncbn_check.py --device cpu --batch 4 --size 32 --width 8 --warm 1 --steps 1
"""
import argparse
import sys
import tempfile
import warnings

import torch
import torch.nn.functional as F
from torch.nn.modules._functions import SyncBatchNorm as sync_batch_norm

import benchlib
import common      # importable once benchlib has put the repository on the path
import models
import profiles
import training

# -----------------------------------------------------------------------------
ARCH = "resnet34"     # 03's network
OUTPUTS = 81          # 03's head (TILES * TILES)
BATCH = 64            # images per GPU of the recipe's 256 on four GPUs
SIZE = 224            # the recipe's input size; the check's input is layer1's, SIZE / 4 a side
WARM, STEPS = 5, 20   # warm-up and timed steps (cuDNN picks its algorithms in the warm-up)
EPS, MOMENTUM = 1e-5, 0.1     # BatchNorm2d's defaults, the networks' own
# Of the reference's largest |value|: fp32 leaves summation order; bf16 rounds the output and the
# input gradient once, a unit in the last place being at most 2^-7 of the largest: about 2.5 allowed.
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
QUANTITIES = ("out", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var")

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: the dry run (stand-in kernels)")
p.add_argument("--batch", type=int, default=BATCH)
p.add_argument("--size", type=int, default=SIZE, help="the networks' input size; the check's is a quarter")
p.add_argument("--width", type=int, default=models.WIDTH, help="ResNet34's first-stage channels")
p.add_argument("--warm", type=int, default=WARM)
p.add_argument("--steps", type=int, default=STEPS)
p.add_argument("--perturb", type=float, default=0.0,
               help="for the tests: the function's weight scaled by 1 + this, so the check must fail")


# -----------------------------------------------------------------------------
class SyncPathBatchNorm(torch.nn.SyncBatchNorm):
    """torch's SyncBatchNorm whose training forward always calls the sync function, as the
    module does on two or more ranks (on one it takes F.batch_norm). Momentum is never None."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        group = torch.distributed.group.WORLD
        return sync_batch_norm.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                     self.eps, self.momentum, group, torch.distributed.get_world_size(group))


def cpu_stand_ins():
    """CPU kernels for the five CUDA-only ops the function calls, from their CUDA semantics
    (statistics in float32, outputs in the input's dtype), for affine NCHW BatchNorm only.
    Returns the registration, which lasts as long as it is referenced."""
    dims = (0, 2, 3)

    def c(t):                       # a per-channel vector against an NCHW tensor
        return t.view(1, -1, 1, 1)

    def stats(x, eps):
        x = x.float()
        return x.mean(dims), (x.var(dims, correction=0) + eps).rsqrt()

    def gather_stats_with_counts(x, mean_all, invstd_all, running_mean, running_var, momentum, eps, counts):
        n = counts.sum()
        mean = (mean_all * counts[:, None]).sum(0) / n
        var = ((invstd_all ** -2 - eps + (mean_all - mean) ** 2) * counts[:, None]).sum(0) / n
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1))
        return mean, (var + eps).rsqrt()

    def elemt(x, weight, bias, mean, invstd, eps):
        return ((x.float() - c(mean)) * c(invstd * weight) + c(bias)).to(x.dtype)

    def backward_reduce(dy, x, mean, invstd, weight, input_g, weight_g, bias_g):
        dy = dy.float()
        sum_dy, sum_dy_xmu = dy.sum(dims), (dy * (x.float() - c(mean))).sum(dims)
        return sum_dy, sum_dy_xmu, (sum_dy_xmu * invstd).to(weight.dtype), sum_dy.to(weight.dtype)

    def backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, count):
        n = count.sum()
        g = dy.float() - c(sum_dy / n) - (x.float() - c(mean)) * c(invstd ** 2 * sum_dy_xmu / n)
        return (g * c(invstd * weight)).to(x.dtype)

    lib = torch.library.Library("aten", "IMPL")
    for name, fn in [("batch_norm_stats", stats), ("batch_norm_gather_stats_with_counts", gather_stats_with_counts),
                     ("batch_norm_elemt", elemt), ("batch_norm_backward_reduce", backward_reduce),
                     ("batch_norm_backward_elemt", backward_elemt)]:
        lib.impl(name, fn, "CPU")
    return lib


def compare(shape, dtype, device, perturb):
    """{quantity: (max |function - F.batch_norm|, max |F.batch_norm|)} for one BatchNorm of input
    `shape` in `dtype`, channels_last, training mode, forward and backward; and whether both
    sides' output and input gradient have the same dtype."""
    g = torch.Generator().manual_seed(0)
    channels = shape[1]

    def draw(scale=1.0, shift=0.0):
        return (torch.randn(shape, generator=g) * scale + shift).to(device, dtype).contiguous(
            memory_format=torch.channels_last)

    x, dy = draw(2.0, 0.5), draw()       # an input off zero mean and unit variance: the stats matter
    weight = torch.rand(channels, generator=g) + 0.5
    bias = torch.randn(channels, generator=g) * 0.1
    sides = {}
    for side in ("function", "reference"):
        xi = x.clone().requires_grad_()
        w, b = (t.to(device, copy=True).requires_grad_() for t in (weight, bias))    # one pair per side
        mean, var = torch.zeros(channels, device=device), torch.ones(channels, device=device)
        if side == "function":
            group = torch.distributed.group.WORLD
            out = sync_batch_norm.apply(xi, w * (1 + perturb), b, mean, var, EPS, MOMENTUM, group,
                                        torch.distributed.get_world_size(group))
        else:
            out = F.batch_norm(xi, mean, var, w, b, True, MOMENTUM, EPS)
        out.backward(dy)
        sides[side] = dict(zip(QUANTITIES, (out, xi.grad, w.grad, b.grad, mean, var)))
    fn, ref = sides["function"], sides["reference"]
    diffs = {q: ((fn[q].double() - ref[q].double()).abs().max().item(), ref[q].double().abs().max().item())
             for q in QUANTITIES}
    same_dtypes = all(fn[q].dtype == ref[q].dtype for q in ("out", "grad_input"))
    return diffs, same_dtypes


def sync_path_model(args, device, sync):
    """03's ResNet34, its BatchNorms through the sync function (sync) or plain, channels_last."""
    torch.manual_seed(0)
    model = models.build_model(ARCH, OUTPUTS, width=args.width)
    if sync:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        for m in model.modules():
            if isinstance(m, torch.nn.SyncBatchNorm):
                m.__class__ = SyncPathBatchNorm        # in place: the same parameters and buffers
    return model.to(device, memory_format=torch.channels_last).train()


def train_step(model, x, y, device):
    recipe = profiles.RECIPE_OPTIM                                              # 03's optimizer
    opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"], betas=recipe["betas"])
    bf16 = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x).float()
        loss = F.mse_loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def host_syncs(step):
    """Synchronising CUDA operations in one call of step(), as set_sync_debug_mode reports them
    (.item(), nonzero and boolean-mask indexing, stream syncs; not torch.distributed's own)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")            # every occurrence, not the first per line
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchronizing" in str(w.message) for w in seen)


def check_function(args, device):
    """The function against F.batch_norm in each dtype; the names of the dtypes that failed."""
    failed = []
    shape = (args.batch, args.width, args.size // 4, args.size // 4)
    benchlib.note(f"check: one BatchNorm, input {tuple(shape)} channels_last (layer1's at {args.size} px), "
                  f"training mode, torch's SyncBatchNorm function against F.batch_norm")
    for name, dtype in DTYPES.items():
        diffs, same_dtypes = compare(shape, dtype, device, args.perturb)
        ok = same_dtypes
        for q, (diff, scale) in diffs.items():
            tol = TOLERANCE[name] * scale
            ok = ok and diff <= tol
            benchlib.emit(f"syncbn_{name}_max_abs_diff_{q}", diff, f"(tolerance {benchlib.fmt(tol)})")
        if not same_dtypes:
            benchlib.note(f"{name}: the function's output or input gradient has another dtype than F.batch_norm's")
        print(f"check_syncbn_{name}: {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            failed.append(name)
    return failed


def time_networks(args, device):
    cuda = device.type == "cuda"
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.rand(args.batch, OUTPUTS, device=device)
    rates = {}
    for label, sync in (("syncbn", True), ("batchnorm", False)):
        model = sync_path_model(args, device, sync)
        step = train_step(model, x, y, device)
        for _ in range(args.warm):
            step()
        if cuda:
            layers = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
            benchlib.emit(f"{label}_host_syncs_per_step", str(host_syncs(step)), f"({layers} BatchNorm layers)")
        with benchlib.Timer(device) as t:
            for _ in range(args.steps):
                step()
        rates[label] = args.steps * args.batch / t.seconds
        del model, step
        if cuda:
            torch.cuda.empty_cache()
    if not cuda:
        benchlib.note("host syncs per step: needs a GPU (torch.cuda.set_sync_debug_mode); not counted on a CPU")
    for label, rate in rates.items():
        benchlib.emit(f"{label}_train_images_per_s", rate, "images/s")
    benchlib.emit("syncbn_slowdown", rates["batchnorm"] / rates["syncbn"], "x")


def main():
    args = p.parse_args()
    training.configure_threads()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        common.fail("--device cuda: no GPU visible to torch; --device cpu is the dry run")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True          # as distributed.Dist: fixed shapes
        name = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
        benchlib.note(f"syncbn_check on {name}: NCCL group of one rank; bf16 autocast, channels_last")
    else:
        stand_ins = cpu_stand_ins()    # noqa: F841  (registered while referenced)
        benchlib.note("syncbn_check dry run on the CPU: gloo group of one rank; torch's SyncBatchNorm function "
                      "runs with stand-in CPU kernels for its five CUDA-only ops, so the check and the images/s "
                      "say nothing of CUDA's kernels, NCCL or the host syncs; fp32 networks")
    benchlib.note(f"{ARCH} at {args.size} px, batch {args.batch}, width {args.width}; "
                  f"SyncBatchNorm through its sync function (torch's module skips it on one rank)")
    with tempfile.TemporaryDirectory() as tmp:
        torch.distributed.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{tmp}/group",
                                             rank=0, world_size=1)
        try:
            failed = check_function(args, device)
            time_networks(args, device)
        finally:
            torch.distributed.destroy_process_group()
    if failed:
        benchlib.note(f"FAILED: SyncBatchNorm's function differs from F.batch_norm in {', '.join(failed)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
