"""The network alone: training and inference images/s of ResNet34 at 224 px, fp32 and bf16, both
channels_last (bench/gpu.sh (a); a ceiling for the pipeline's own loops).

Training: one Adam step (the recipe's betas) on an MSE loss per batch of random inputs already on
the device; inference: eval mode, no_grad. fp32 means no autocast (PyTorch's defaults: cuDNN may
use TF32 for convolutions; the line says whether it does); bf16 means torch.autocast(bfloat16),
as 03/04/05 do on CUDA. Each figure: warm-up steps, then timed steps between two device syncs.
`--compile` adds bf16 training under torch.compile and reports its compile time.

    python bench/model_throughput.py --size 224 --train-batch 256 --infer-batch 512
"""
import argparse
import time

import benchlib

# -----------------------------------------------------------------------------
ARCH = "resnet34"     # the recipe's network
SIZE = 224            # the recipe's input size
TRAIN_BATCH = 256     # the recipe's batch size
INFER_BATCH = 512     # 05's batch (full profile)
WARM, STEPS = 5, 20   # warm-up and timed steps (cuDNN picks its algorithms in the warm-up)

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--arch", default=ARCH)
p.add_argument("--size", type=int, default=SIZE)
p.add_argument("--train-batch", type=int, default=TRAIN_BATCH)
p.add_argument("--infer-batch", type=int, default=INFER_BATCH)
p.add_argument("--warm", type=int, default=WARM)
p.add_argument("--steps", type=int, default=STEPS)
p.add_argument("--compile", action="store_true", help="also bf16 training under torch.compile")
p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
p.add_argument("--prefix", default="model")


def rate(device, fn, warm, steps, batch):
    for _ in range(warm):
        fn()
    with benchlib.Timer(device) as t:
        for _ in range(steps):
            fn()
    return steps * batch / t.seconds


def main():
    args = p.parse_args()
    import torch
    import torch.nn.functional as F
    import torchvision
    import training
    training.configure_threads()
    device = benchlib.pick_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    benchlib.note(f"{args.prefix}: {args.arch} at {args.size} px on {name}; cuDNN TF32 for fp32 convolutions: "
                  f"{torch.backends.cudnn.allow_tf32 if cuda else 'n/a'}; " + benchlib.threads_note(device))
    fmt = torch.channels_last

    def model_for(outputs=81):
        torch.manual_seed(0)
        return getattr(torchvision.models, args.arch)(weights=None, num_classes=outputs).to(device, memory_format=fmt)

    x_train = torch.randn(args.train_batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    y_train = torch.rand(args.train_batch, 81, device=device)
    x_infer = torch.randn(args.infer_batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    tag = f"{args.prefix}_{args.arch}_{args.size}px"
    variants = [("fp32", False, False), ("bf16", True, False)] + ([("bf16_compiled", True, True)] if args.compile else [])
    for label, bf16, compiled in variants:
        model = model_for()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
        net = model
        if compiled:
            net = torch.compile(model)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

        def train_step():
            with autocast:
                out = net(x_train).float()
            loss = F.mse_loss(out, y_train)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        if compiled:
            t0 = time.perf_counter()
            model.train()
            train_step()
            if cuda:
                torch.cuda.synchronize()           # the compiled kernels have run once
            benchlib.emit(f"{tag}_{label}_compile", time.perf_counter() - t0, "s")
        model.train()
        benchlib.emit(f"{tag}_train_{label}", rate(device, train_step, args.warm, args.steps, args.train_batch), "images/s")
        if compiled:
            continue
        model.eval()

        @torch.no_grad()
        def infer_step():
            with autocast:
                return net(x_infer)

        benchlib.emit(f"{tag}_infer_{label}", rate(device, infer_step, args.warm, args.steps, args.infer_batch), "images/s")
        del model, opt, net
        if cuda:
            torch.cuda.empty_cache()
    if cuda:
        benchlib.emit(f"{tag}_peak_gpu_memory", torch.cuda.max_memory_allocated(device) / 2 ** 30, "GiB")


if __name__ == "__main__":
    main()
