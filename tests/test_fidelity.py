"""The recipe, exactly where a CPU can show it: ten fine-tune epochs in `full`, float32 outputs
under bf16 autocast, the logged loss of the whole DDP batch, the optimizer's state on the host after a resume, SyncBatchNorm
under NCCL, and ResNets that are torchvision's."""
import os
import socket

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

import checkpointing
import common
import distributed
import models
import profiles
import training


def test_full_profile_is_the_recipe():
    full = common.PROFILES["full"]
    assert full["04"]["epochs"] == 10 and full["03"]["epochs"] == 5       # the seed's final networks
    for stage in ("03", "04"):
        assert full[stage]["arch"] == "resnet34" and full[stage]["batch"] == 256 and full[stage]["views"] == 8
        assert (full[stage]["optim"], full[stage]["lr"], tuple(full[stage]["betas"])) == ("adam", 1e-3, (0.5, 0.999))
        assert full[stage]["schedule"] == "halve" and full[stage]["halve_views"] == 8
    assert full["02"]["size"] == 224 and full["04"]["init"] == "jigsaw" and full["03"]["holdout_trains"]


def test_outputs_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = models.build_model("resnet18", 1).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        feats = torch.flatten(model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(x))))))))), 1)
    assert out.dtype == torch.float32
    exact = feats.float() @ model.fc.weight.T + model.fc.bias
    torch.testing.assert_close(out, exact, rtol=1e-6, atol=1e-6)
    # a year regressed in bf16 would be off by up to 4; in float32 it is not rounded at all
    year = torch.tensor([1733.0])
    assert year.bfloat16().float().item() != 1733.0
    assert set(model.state_dict()) == set(torchvision_keys())


def torchvision_keys():
    import torchvision
    return torchvision.models.resnet18(weights=None, num_classes=1).state_dict().keys()


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_our_resnets_are_torchvisions_bit_for_bit(arch):
    """models.py builds the ResNets itself (no torchvision import in a stage): the same modules,
    keys and init drawn in the same order as torchvision's, so the same seed gives the same
    network; a narrower one (the rehearsal's) has the same keys."""
    import torchvision
    torch.manual_seed(7)
    theirs = getattr(torchvision.models, arch)(weights=None, num_classes=3).eval()
    torch.manual_seed(7)
    ours = models.build_model(arch, 3).eval()
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 40, 40)
    with torch.inference_mode():
        assert torch.equal(theirs(x), ours(x))
    narrow = models.build_model(arch, 3, width=16)
    assert list(narrow.state_dict()) == list(b) and narrow.fc.in_features == 8 * 16


def test_syncbatchnorm_under_nccl_only():
    model = models.build_model("resnet18", 4)
    weight = model.bn1.weight
    assert distributed.sync_batchnorm(model, "gloo") is model and type(model.bn1) is torch.nn.BatchNorm2d
    synced = distributed.sync_batchnorm(model, "nccl")                      # conversion needs no GPU
    kinds = {type(m) for m in synced.modules()}
    assert torch.nn.SyncBatchNorm in kinds and torch.nn.BatchNorm2d not in kinds
    assert synced.bn1.weight is weight                                       # same parameters: the optimizer's
    assert set(synced.state_dict()) == set(models.build_model("resnet18", 4).state_dict())


# -----------------------------------------------------------------------------
# The logged loss of the global batch: a "network" whose loss is the row's own number, so the
# log of every interval is the mean of the plan's numbers in it, whatever the ranks.
ROWS, BATCH, LOG_EVERY = 48, 8, 2


def plan(epoch, g):
    return torch.randperm(ROWS, generator=g)[:, None].float()


def row_loss(net, rows):
    return (net(torch.zeros(len(rows), 1)).sum() * 0 + rows[:, 0]).sum(), {}


def fit_rank(rank, world, port, run_dir):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(1)
    run_dir.mkdir(parents=True, exist_ok=True)
    dist = distributed.Dist()
    config = dict(profiles.RECIPE_OPTIM, epochs=1, batch=BATCH, views=1, seed=0, log_every=LOG_EVERY,
                  ckpt_every=10 ** 9)
    training.fit(torch.nn.Linear(1, 1), run_dir=run_dir, dist=dist, settings=training.FitSettings.pick(config), epoch_plan=plan,
                 batch_loss=row_loss)
    dist.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_logged_loss_is_the_whole_batch_across_two_gloo_ranks(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    mp.spawn(fit_rank, args=(1, free_port(), one), nprocs=1, join=True)    # a process of its own too
    mp.spawn(fit_rank, args=(2, free_port(), two), nprocs=2, join=True)
    log1, log2 = pd.read_csv(one / "loss.csv"), pd.read_csv(two / "loss.csv")
    expect = plan(1, training.epoch_generator(0, 1))[:, 0].view(-1, BATCH * LOG_EVERY).mean(1).numpy()
    assert np.allclose(log1["loss"], expect) and np.allclose(log2["loss"], expect)
    assert list(log2["step"]) == list(log1["step"])


def test_resume_keeps_the_optimizer_state_on_the_host(tmp_path, monkeypatch):
    """fit reads the checkpoint onto the host: load_state_dict puts the weights on the model's
    device and leaves Adam's step counters where Adam wants them (the host), not on a GPU."""
    config = dict(profiles.RECIPE_OPTIM, epochs=1, batch=BATCH, views=1, seed=0, log_every=LOG_EVERY,
                  ckpt_every=10 ** 9)
    training.fit(torch.nn.Linear(1, 1), run_dir=tmp_path, dist=distributed.Dist(), settings=training.FitSettings.pick(config),
                 epoch_plan=plan, batch_loss=row_loss)
    seen = []
    load = checkpointing.load_checkpoint
    monkeypatch.setattr(checkpointing, "load_checkpoint", lambda path, device="cpu": seen.append(str(device)) or load(path, device))
    optims = []
    make = training.make_optimizer
    monkeypatch.setattr(training, "make_optimizer", lambda m, c: optims.append(make(m, c)) or optims[-1])
    training.fit(torch.nn.Linear(1, 1), run_dir=tmp_path, dist=distributed.Dist(), settings=training.FitSettings.pick(config, epochs=2),
                 epoch_plan=plan, batch_loss=row_loss)
    assert seen[0] == "cpu"
    steps = [s["step"] for s in optims[0].state.values()]
    assert steps and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in steps)
    assert all(t.item() == 2 * ROWS // BATCH for t in steps)        # resumed, then one more epoch
