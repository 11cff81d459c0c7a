"""The checkpoint layout (training.fit): each epoch's weights in a file of their own, without the
optimizer; one resumable state beside the newest of them; a kill between the two writes, or a
checkpoint of the earlier layout (weights and optimizer in one file), still resumes bit-identically.
And the GPU-only choices, tested as functions: states paced by the clock, fused Adam, cuDNN
autotuning off for a short batch, pinned chunks in 05, 03's BatchNorm under DDP; the evaluator, 05
and 04 --init read weights only."""
import ast
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, load_script

import checkpointing
import common
import distributed
import profiles
import training

N, BATCH = 96, 8                  # 12 steps an epoch
CONFIG = dict(profiles.RECIPE_OPTIM, epochs=2, batch=BATCH, views=1, seed=0, log_every=4, ckpt_every=5)
WEIGHT_KEYS = {"model", "epoch", "step", "global_step", "config"}
STATE_KEYS = {"optim", "torch_rng", "epoch", "step", "global_step"}


class Killed(Exception):
    pass


def train(run_dir, config=CONFIG, kill_at=None):
    """A small network with BatchNorm and dropout (the global RNG matters) trained by fit, as a
    stage does (settle_checkpoints, then fit); kill_at: the step (counted from 0 in this call)
    that raises before it trains, as a kill -9 would stop it."""
    torch.manual_seed(0)
    x, y = torch.randn(N, 64), torch.randn(N, 1)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.BatchNorm1d(256), torch.nn.ReLU(),
                                torch.nn.Dropout(0.2), torch.nn.Linear(256, 1))
    calls = []

    def batch_loss(net, rows):
        if len(calls) == kill_at:
            raise Killed
        calls.append(1)
        return ((net(x[rows]) - y[rows]) ** 2).sum(), {}

    checkpointing.settle_checkpoints(run_dir, config)
    training.fit(model, run_dir=run_dir, dist=distributed.Dist(), settings=training.FitSettings.pick(config),
                 epoch_plan=lambda epoch, g: torch.randperm(N, generator=g), batch_loss=batch_loss)
    return len(calls)


def names(run_dir):
    return sorted(p.name for p in run_dir.iterdir())


def same(a, b):
    """Two checkpoint files hold equal tensors under the same keys (nested dicts walked)."""
    def walk(u, v):
        if isinstance(u, torch.Tensor):
            return torch.equal(u, v)
        if isinstance(u, dict):
            return u.keys() == v.keys() and all(walk(u[k], v[k]) for k in u)
        if isinstance(u, (list, tuple)):
            return len(u) == len(v) and all(walk(i, j) for i, j in zip(u, v))
        return u == v
    return walk(checkpointing.load_checkpoint(a), checkpointing.load_checkpoint(b))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (read-only)."""
    run = tmp_path_factory.mktemp("reference")
    assert train(run) == 2 * N // BATCH
    return run


def test_epoch_weights_hold_no_optimizer_and_one_state_remains(reference, tmp_path):
    assert names(reference) == ["ckpt_e001.pt", "ckpt_e002.pt", "loss.csv", "state_e002.pt"]
    for name in ("ckpt_e001.pt", "ckpt_e002.pt"):
        weights = checkpointing.load_checkpoint(reference / name)
        assert set(weights) == WEIGHT_KEYS and weights["step"] is None
    state = checkpointing.load_checkpoint(reference / "state_e002.pt")
    assert set(state) == STATE_KEYS and (state["epoch"], state["step"], state["global_step"]) == (2, None, 24)
    # Adam keeps two moments per parameter: the state is about twice the weights (BatchNorm's
    # running statistics are weights only), and nothing was written twice
    weights, state = (reference / "ckpt_e002.pt").stat().st_size, (reference / "state_e002.pt").stat().st_size
    assert 1.8 * weights < state < 2.2 * weights, (weights, state)
    assert (reference / "ckpt_e001.pt").stat().st_size == weights

    train(tmp_path, dict(CONFIG, keep_epochs="last"))
    assert names(tmp_path) == ["ckpt_e002.pt", "loss.csv", "state_e002.pt"]
    ours, theirs = (checkpointing.load_checkpoint(d / "ckpt_e002.pt")["model"] for d in (tmp_path, reference))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_kill_mid_epoch_resumes_bit_identical(reference, tmp_path):
    with pytest.raises(Killed):
        train(tmp_path, kill_at=19)          # epoch 2, after its mid-epoch checkpoint at step 5
    assert names(tmp_path) == ["ckpt_e001.pt", "ckpt_e002_s00000005.pt", "loss.csv", "state_e002_s00000005.pt"]
    assert set(checkpointing.load_checkpoint(tmp_path / "ckpt_e002_s00000005.pt")) == WEIGHT_KEYS
    assert train(tmp_path) == 7              # the 7 steps after step 5
    assert names(tmp_path) == names(reference)
    for name in ("ckpt_e002.pt", "state_e002.pt"):
        assert same(tmp_path / name, reference / name), name


def killed_mid_epoch(tmp_path):
    with pytest.raises(Killed):
        train(tmp_path, kill_at=19)
    return tmp_path


def test_a_kill_between_the_state_and_its_weights_resumes_from_the_state_before(reference, tmp_path, capsys):
    """fit writes the state first, then the weights: a kill between leaves a state without
    weights (removed; the run continues from the pair before). Weights without their state (a
    GPU writes states by the clock, weights every epoch) are removed and trained again."""
    run = killed_mid_epoch(tmp_path)
    shutil.copy(reference / "state_e002.pt", run / "state_e002_s00000010.pt")     # its weights never written
    assert checkpointing.settle_checkpoints(run, CONFIG) == 1
    assert names(run) == ["ckpt_e001.pt", "ckpt_e002_s00000005.pt", "loss.csv", "state_e002_s00000005.pt"]

    shutil.copy(reference / "ckpt_e002.pt", run / "ckpt_e002.pt")                 # no state written with it
    assert train(run) == 7
    assert "ckpt_e002.pt removed (no state to continue from; the run redoes them)" in capsys.readouterr().out
    for name in ("ckpt_e002.pt", "state_e002.pt"):
        assert same(run / name, reference / name), name


def test_weights_cut_short_start_the_run_over(reference, tmp_path, capsys):
    """The newest weights unreadable: the state beside them has nothing to continue with, and
    epoch 1's weights have no state of their own: the run starts over, to the same network."""
    run = killed_mid_epoch(tmp_path)
    cut = run / "ckpt_e002_s00000005.pt"
    cut.write_bytes(cut.read_bytes()[:1000])
    assert train(run) == 24
    out = capsys.readouterr().out
    assert "unreadable checkpoint" in out and "starting over (ckpt_e001.pt keeps no optimizer state" in out
    assert same(run / "ckpt_e002.pt", reference / "ckpt_e002.pt")


def as_earlier_layout(run, epoch, step):
    """The weights and state at (epoch, step) merged into one file, as fit wrote them before."""
    weights = run / common.ckpt_name(epoch, step)
    state = checkpointing.beside(weights, epoch, step)
    merged = {**checkpointing.load_checkpoint(weights), **checkpointing.load_checkpoint(state)}
    state.unlink()
    checkpointing.save_checkpoint(weights, merged)


@pytest.mark.parametrize("step", [5, None])
def test_a_checkpoint_of_the_earlier_layout_resumes(reference, tmp_path, step):
    """A run killed before this layout came (its checkpoints hold "optim") continues after the
    upgrade, bit-identically, and from then on writes the new layout."""
    if step is None:
        with pytest.raises(Killed):
            train(tmp_path, kill_at=13)      # epoch 2, before its first mid-epoch checkpoint
        assert names(tmp_path) == ["ckpt_e001.pt", "loss.csv", "state_e001.pt"]
    else:
        killed_mid_epoch(tmp_path)
    as_earlier_layout(tmp_path, 2 if step else 1, step)
    assert train(tmp_path) == (7 if step else 12)
    assert names(tmp_path) == names(reference)
    for name in ("ckpt_e002.pt", "state_e002.pt"):
        assert same(tmp_path / name, reference / name), name


AVERAGED = dict(CONFIG, average_tail=1.0)        # both epochs' weights averaged into the last's


def tensors(path):
    return checkpointing.load_checkpoint(path)["model"]


def test_the_last_epochs_weights_are_the_mean_of_the_tails(reference, tmp_path):
    """Averaging changes nothing of the training: epoch 1's weights are the reference's; epoch 2's
    are the mean of the reference's two, every float tensor (BatchNorm's running statistics too),
    its step counter the last's."""
    assert train(tmp_path, AVERAGED) == 2 * N // BATCH
    ours, first, last = tensors(tmp_path / "ckpt_e002.pt"), tensors(reference / "ckpt_e001.pt"), tensors(reference / "ckpt_e002.pt")
    assert all(torch.equal(v, first[k]) for k, v in tensors(tmp_path / "ckpt_e001.pt").items())
    for k, v in last.items():
        if v.is_floating_point():
            assert torch.allclose(ours[k], (first[k] + last[k]) / 2, atol=1e-7), k
        else:
            assert torch.equal(ours[k], v), k
    assert not torch.equal(ours["1.running_mean"], last["1.running_mean"])
    assert set(checkpointing.load_checkpoint(tmp_path / "state_e002.pt")) == STATE_KEYS | {"tail_sum", "tail_n"}
    assert training.tail_epochs(training.FitSettings.pick(CONFIG, epochs=32, average_tail=0.25)) == 8
    assert training.tail_epochs(training.FitSettings.pick(CONFIG, epochs=3, average_tail=0.25)) == 0       # one epoch: nothing to average


def test_a_kill_in_the_tail_resumes_to_the_same_mean(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    killed.mkdir()
    train(whole, AVERAGED)
    with pytest.raises(Killed):
        train(killed, AVERAGED, kill_at=19)        # epoch 2, its state at step 5 holds epoch 1's weights
    assert train(killed, AVERAGED) == 7
    assert same(killed / "ckpt_e002.pt", whole / "ckpt_e002.pt")


def test_a_tail_outside_zero_to_one_is_refused(tmp_path):
    p = subprocess.run([sys.executable, "04_finetune.py", "--task", "multi", "--fold", "0", "--folds", tmp_path,
                        "--hvr", tmp_path, "--jigsaw", tmp_path, "--out", tmp_path, "--profile", "cpu",
                        "--average-tail", "1.5"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode != 0 and "--average-tail 1.5: a fraction of the epochs, from 0 (off) to 1" in p.stderr
    assert list(tmp_path.iterdir()) == []


def test_inference_reads_the_weights_only(reference, tmp_path, monkeypatch):
    """load_weights maps the file (mmap: the optimizer's bytes are never read) on the host, and
    hands back no optimizer; the evaluator, 05, 04 --init and 03's re-scoring read checkpoints
    through it and nothing else."""
    old = tmp_path / "ckpt_e002.pt"
    checkpointing.save_checkpoint(old, {**checkpointing.load_checkpoint(reference / "ckpt_e002.pt"),
                                        **checkpointing.load_checkpoint(reference / "state_e002.pt")})
    calls = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or load(*a, **kw))
    weights = checkpointing.load_weights(old)
    assert calls == [dict(map_location="cpu", weights_only=True, mmap=True)]
    assert "optim" not in weights and "torch_rng" not in weights and weights["config"]["epochs"] == 2
    for script in ("03_jigsaw.py", "04_finetune.py", "05_features.py"):
        called = {node.func.attr for node in ast.walk(ast.parse((REPO / script).read_text()))
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
        assert "load_checkpoint" not in called and "load" not in called, script


def test_states_are_paced_by_steps_on_a_cpu_and_by_minutes_on_a_gpu():
    config = training.FitSettings.pick(CONFIG, epochs=3, log_every=10, ckpt_every=200, ckpt_minutes=10)
    due = checkpointing.state_due
    # a CPU: every ckpt_every steps and every epoch end, whatever the clock
    assert [s for s in range(1, 700) if due(False, config, 1, s, 0.0)] == [200, 400, 600]
    assert due(False, config, 1, None, 0.0) and due(False, config, 1, 200, 1e9)
    # a GPU: 10 minutes after the last state, at the first log step or epoch end
    assert not due(True, config, 1, 200, 599.0) and not due(True, config, 1, None, 599.0)
    assert due(True, config, 1, 10, 600.0) and due(True, config, 2, None, 600.0)
    assert not due(True, config, 1, 15, 3600.0)          # not a log step: no host sync to save after
    assert due(True, config, 3, None, 0.0) and due(False, config, 3, None, 0.0)    # the run's end, always
    default = training.FitSettings.pick(CONFIG, epochs=3, log_every=10, ckpt_every=200)
    assert due(True, default, 1, 10, 60 * checkpointing.CKPT_MINUTES)


def test_adam_is_fused_on_gpu_parameters_only():
    gpu = SimpleNamespace(device=torch.device("cuda", 0), is_floating_point=lambda: True)
    cpu = SimpleNamespace(device=torch.device("cpu"), is_floating_point=lambda: True)
    whole = SimpleNamespace(device=torch.device("cuda", 0), is_floating_point=lambda: False)
    assert training.fused_adam([gpu, gpu]) and not training.fused_adam([gpu, cpu])
    assert not training.fused_adam([gpu, whole]) and not training.fused_adam([])
    for optim in ("adam", "adamw"):      # a CPU's is torch's default: the resume tests' bit-identity
        opt = training.make_optimizer(torch.nn.Linear(2, 2), training.FitSettings.pick(dict(CONFIG, **profiles.CPU_OPTIM), optim=optim))
        assert not opt.defaults["fused"]
    # the pinned torch takes the option for these optimizers (here on its CPU kernel)
    torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), fused=True)
    torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), fused=True)


def test_autotuning_is_off_for_a_short_batch_only():
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True         # as Dist sets it on a GPU
        with distributed.autotune(True):
            assert torch.backends.cudnn.benchmark
        with pytest.raises(Killed), distributed.autotune(False):
            assert not torch.backends.cudnn.benchmark
            raise Killed
        assert torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False        # a CPU: nothing to turn off, nothing turned on
        with distributed.autotune(False):
            pass
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before


def test_features_copy_chunks_through_pinned_memory_on_a_gpu_only(monkeypatch):
    features = load_script("05_features.py")
    chunk = torch.arange(12, dtype=torch.int32).view(3, 4)
    assert features.to_device(chunk, torch.device("cpu")) is chunk
    seen = []

    class Chunk:
        def pin_memory(self):
            seen.append("pin_memory")
            return self

        def to(self, device, non_blocking=False):
            seen.append((str(device), non_blocking))
            return self
    features.to_device(Chunk(), torch.device("cuda", 0))
    assert seen == ["pin_memory", ("cuda:0", True)]


def test_jigsaw_norm_is_an_option_and_part_of_the_setup(monkeypatch):
    """03 --norm sync (the recipe): SyncBatchNorm across NCCL ranks; bn: each GPU's own."""
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda model, device_ids: model)
    dist = SimpleNamespace(world=2, backend="nccl", device=torch.device("cuda", 0))
    kinds = {}
    for norm in ("sync", "bn"):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        kinds[norm] = type(distributed.Dist.wrap(dist, model, norm)[1])
    assert kinds == {"sync": torch.nn.SyncBatchNorm, "bn": torch.nn.BatchNorm2d}
    args = load_script("03_jigsaw.py").p.parse_args(["--hvr", "h", "--out", "o"])
    assert args.norm == "sync"
    assert checkpointing.setup_differences({"norm": "sync"}, {"norm": "bn"}) == [("norm", "sync", "bn")]
    assert checkpointing.setup_differences({"ckpt_minutes": 10.0}, {"ckpt_minutes": 5.0}) == []
