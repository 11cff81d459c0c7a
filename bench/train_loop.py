"""Figure 3, the training loop: images/s of our 03/04 inner loop against a bare torchvision loop
on the same inputs; their ratio is our loop's overhead (1.0: none).

Ours is the real code path: training.fit (Adam with the recipe's betas, the plan sliced into
batches, rows to the device, loss scaling, the per-step statistics, the loss.csv row every
`log_every` steps: every step on CPU, training.LOG_EVERY on CUDA) with the batch_loss that
04_finetune.py uses for the `target` task, line for line: rows of the packed-pixel store gathered, a
view each, normalised by pixels.to_input into channels_last (04's layout on every device), bf16
autocast on CUDA (04's `auto` precision there; float32 on CPU, as PROFILE=cpu), tasks.head_losses
(the target head's per-sample MSE) weighted per head and summed. It is timed from the call of
batch_loss that starts the first timed step to the one that starts the step after the last (whole
steps, fit's own work between them included; on CUDA with a device sync at both marks); `warm`
steps before are left out (allocation, lazy init), and so is the epoch-end checkpoint after.

The bare loop: torchvision resnet34(weights=None), the same Adam, F.mse_loss, and the same inputs
already made (plain float tensors in memory: the same rows and views, normalised once, up
front); the same channels_last layout, and on CUDA the same bf16 autocast, so both do the same
arithmetic. Timed over the same steps after the same warm-up.

Both start from the same seed and run the same steps of the same batch size. On CPU the two run
in lockstep, paired step by step (the wrapper of our batch_loss runs the bare loop's step k
before ours, on its own clock, and that time is taken out of ours): a CPU shared with other jobs
then slows both alike, where rounds of ~30 s each, one after the other, differed by 2x under a
changing load. On CUDA (a machine of its own) they run one after the other, `--rounds` times,
alternating, and each side's best round counts; pairing would need a device sync per step, which
would take away the host/device overlap that ours relies on. Inputs are random pixels: the
arithmetic does not depend on them.

On CUDA it also counts the host syncs of our loop per step, as torch.cuda.set_sync_debug_mode
reports them over the timed steps of one more fit run (the log's .item() calls, one per logged
figure every training.LOG_EVERY steps, are among them; the goal is no other).

    python bench/train_loop.py --sizes 64,224 --batch 32 [--device auto|cpu|cuda]
"""
import argparse
import contextlib
import os
import tempfile
import time

import benchlib
import pixels
import profiles
import tasks

# -----------------------------------------------------------------------------
ARCH = "resnet34"     # the recipe's network
BATCH = 32            # small enough for a few steps at 224 px on 2 cores (~7 img/s there)
ROUNDS = 2            # CUDA: alternating (ours, bare) rounds; each side's best counts
CPU_STEPS = {64: (2, 8), 224: (1, 3)}   # per size on CPU: (warm-up steps, timed steps)
CUDA_STEPS = (10, 40)                   # on CUDA: 1 and 4 log intervals of training.LOG_EVERY

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--sizes", default="64,224", help="comma-separated input sizes")
p.add_argument("--batch", type=int, default=BATCH)
p.add_argument("--rounds", type=int, default=ROUNDS, help="CUDA only: rounds per side (CPU: one lockstep run)")
p.add_argument("--steps", default=None, help="WARM,TIMED steps for every size (default: per size, above)")
p.add_argument("--arch", default=ARCH)
p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
p.add_argument("--tmp", default=None, help="scratch directory for fit's run (default: temporary)")


def clocks(device):
    """(wall, this process's CPU time), after the device's queued work (CUDA) has run."""
    if device.type == "cuda":
        import torch
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def ours(arch, data, device, batch, warm, steps, log_every, run_dir, paired=None, count_syncs=False):
    """(wall s, CPU s) of `steps` steps of training.fit with 04's batch_loss after `warm`. With
    `paired` (a bare step function): run paired(k) before our step k, and return ((wall, CPU) of
    ours, (wall, CPU) of the paired steps) over the same steps. With count_syncs instead: host
    syncs per step over those steps, as CUDA's sync debug mode says."""
    import torch
    import distributed
    import models
    import training
    store, pos, plan, y, w, vidx = data
    cuda = device.type == "cuda"

    def batch_loss(net, rows):            # 04_finetune.py train().batch_loss, task target
        x = pixels.to_input(store[pos[rows[:, 0]]], rows[:, 1], vidx, channels_last=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out = net(x).float()
        return (tasks.head_losses("target", "mse", out, y[rows[:, 0]]) * w[rows[:, 0]]).sum(), {}

    marks, calls, caught, other = {}, [], [], [0.0, 0.0]

    def marked(net, rows):                # call k starts our step k: marks at warm and warm+steps
        k = len(calls)
        calls.append(sum("synchroniz" in str(c.message) for c in caught) if count_syncs else 0)
        if k in (warm, warm + steps) and not count_syncs:    # a sync of its own: not counted
            marks[k] = clocks(device)
        if paired and k < warm + steps:
            t0 = clocks(device)
            paired(k)
            t1 = clocks(device)
            if k >= warm:
                other[0] += t1[0] - t0[0]
                other[1] += t1[1] - t0[1]
        return batch_loss(net, rows)

    torch.manual_seed(0)
    model = models.build_model(arch, 1)
    config = dict(profiles.RECIPE_OPTIM, epochs=1, batch=batch, views=8, seed=0, log_every=log_every,
                  ckpt_every=10 ** 9, channels_last=True)
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null), \
            contextlib.ExitStack() as stack:                    # tqdm's bar to /dev/null
        if count_syncs:
            import warnings
            caught = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            stack.callback(torch.cuda.set_sync_debug_mode, "default")
        training.fit(model, run_dir=run_dir, dist=distributed.Dist(), settings=training.FitSettings.pick(config),
                     epoch_plan=lambda epoch, g: plan[: (warm + steps + 1) * batch], batch_loss=marked)
    if count_syncs:
        return (calls[warm + steps] - calls[warm]) / steps
    (w0, c0), (w1, c1) = marks[warm], marks[warm + steps]
    mine = (w1 - w0 - other[0], c1 - c0 - other[1])
    return (mine, tuple(other)) if paired else mine


def bare_stepper(arch, x_all, y_all, device, batch):
    """step(i): one step of a plain torchvision loop on batch i of inputs already in memory."""
    import torch
    import torch.nn.functional as F
    import torchvision
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=1)
    model = model.to(device, memory_format=torch.channels_last)
    recipe = profiles.RECIPE_OPTIM
    opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"], betas=recipe["betas"])
    model.train()

    def step(i):
        x, y = x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out = model(x).float()
        loss = F.mse_loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bare(step, device, warm, steps):
    """(wall s, CPU s) of `steps` bare steps after `warm`, one after the other."""
    for i in range(warm):
        step(i)
    w0, c0 = clocks(device)
    for i in range(warm, warm + steps):
        step(i)
    w1, c1 = clocks(device)
    return w1 - w0, c1 - c0


def main():
    args = p.parse_args()
    import torch
    import training
    training.configure_threads()
    device = benchlib.pick_device(args.device)
    cuda = device.type == "cuda"
    benchlib.note(f"train loop: {args.arch}, batch {args.batch}; " + benchlib.threads_note(device))
    for size in map(int, args.sizes.split(",")):
        if args.steps:
            warm, steps = map(int, args.steps.split(","))
        else:
            warm, steps = CUDA_STEPS if cuda else CPU_STEPS.get(size, (1, 3))
        log_every = training.LOG_EVERY if cuda else 1
        n = args.batch * (warm + steps + 1)          # ours runs one step more: its end mark
        g = torch.Generator().manual_seed(size)
        store = pixels.to_pixels(torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g), device)
        pos = torch.arange(n, device=device)
        plan = torch.stack([torch.arange(n), torch.randint(0, 8, (n,), generator=g)], 1)
        y = torch.rand(n, 1, generator=g).mul(3).to(device)
        w = torch.ones(n, 1, device=device)         # (N, heads), as 04's targets()
        vidx = pixels.view_index(size).to(device)
        data = (store, pos, plan, y, w, vidx)
        with torch.no_grad():               # the bare loop's inputs: made once, kept in memory
            x_all = torch.cat([pixels.to_input(store[pos[r[:, 0]]], r[:, 1], vidx, channels_last=True)
                               for r in plan.to(device).split(256)])
        timed_ours, timed_bare = [], []
        for _ in range(1 if not cuda else args.rounds):
            step = bare_stepper(args.arch, x_all, y, device, args.batch)
            with tempfile.TemporaryDirectory(dir=args.tmp) as run_dir:
                if cuda:
                    timed_ours.append(ours(args.arch, data, device, args.batch, warm, steps, log_every, run_dir))
                    timed_bare.append(bare(step, device, warm, steps))
                else:                       # lockstep: bare step k, then our step k
                    mine, theirs = ours(args.arch, data, device, args.batch, warm, steps, log_every,
                                        run_dir, paired=step)
                    timed_ours.append(mine)
                    timed_bare.append(theirs)
        images = steps * args.batch
        rate_ours = images / min(t[0] for t in timed_ours)
        rate_bare = images / min(t[0] for t in timed_bare)
        tag = f"train_loop_{size}px"
        benchlib.emit(f"{tag}_ours", rate_ours, "images/s")
        benchlib.emit(f"{tag}_bare", rate_bare, "images/s")
        benchlib.emit_ratio(tag, rate_ours / rate_bare)
        if cuda:
            with tempfile.TemporaryDirectory(dir=args.tmp) as run_dir:
                syncs = ours(args.arch, data, device, args.batch, warm, steps, log_every, run_dir,
                             count_syncs=True)
            benchlib.emit(f"{tag}_host_syncs_per_step", syncs, "syncs")
        del store, x_all, data


if __name__ == "__main__":
    main()
