"""The fine-tune's options past the recipe: bf16 autocast on a CPU (--precision), photo inputs
beside the pixels (--photo-inputs), mixup (--mixup). Each runs through the real 04 and 05 on the
smoke pipeline's stages 00-03, and a run is reproducible: the same command twice trains the same
weights."""
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, smoke_copy

import common
import training
import variants

PY = str(REPO / ".venv" / "bin" / "python")


@pytest.fixture(scope="module")
def stages(smoke_run, tmp_path_factory):
    return smoke_copy(smoke_run, tmp_path_factory.mktemp("options") / "work",
                      keep=("00_validate", "01_sgkfold", "02_hvr", "03_jigsaw"))


def finetune(work, out, *extra):
    cmd = [PY, "04_finetune.py", "--task", "multi", "--fold", "0", "--folds", work / "01_sgkfold",
           "--hvr", work / "02_hvr", "--jigsaw", work / "03_jigsaw", "--out", out, "--profile", "smoke",
           "--init", "scratch", *extra]
    p = subprocess.run(list(map(str, cmd)), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return training.load_checkpoint(training.list_checkpoints(out / "multi_0")[-1][2])


def same_weights(a, b):
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_photo_inputs_are_the_photos_statistics_standardised(tmp_path):
    ids = ["a" * 20, "b" * 20, "c" * 20]
    stats = pd.DataFrame({"object_id": ids, "width": [224, 100, 224], "height": [112, 224, 224],
                          "aspect": [2.0, 100 / 224, 1.0], "r_mean": [0.1, 0.5, 0.9]})
    stats.to_csv(tmp_path / "stats.csv", index=False)
    assert variants.photo_inputs(tmp_path, ids, "none") is None
    shape = variants.photo_inputs(tmp_path, [ids[2], ids[0]], "shape").numpy()     # in the order asked
    logw = np.log([224, 100, 224])
    assert shape.shape == (2, 3)
    assert shape[:, 0] == pytest.approx((logw[[2, 0]] - logw.mean()) / logw.std(ddof=1), abs=1e-6)
    every = variants.photo_inputs(tmp_path, ids, "stats").numpy()
    assert every.shape == (3, 4) and every.mean(0) == pytest.approx(np.zeros(4), abs=1e-6)
    with pytest.raises(SystemExit):
        variants.photo_inputs(tmp_path, ["d" * 20], "shape")


def test_a_network_with_photo_inputs_uses_them_and_keeps_the_recipes_keys():
    torch.manual_seed(0)
    plain = training.build_model("resnet18", 26)
    torch.manual_seed(0)
    wide = training.build_model("resnet18", 26, 3)
    assert list(plain.state_dict()) == list(wide.state_dict())       # the same keys: fc wider
    assert wide.fc.in_features == plain.fc.in_features + 3
    assert all(torch.equal(v, wide.state_dict()[k]) for k, v in plain.state_dict().items() if not k.startswith("fc."))
    x = torch.randn(2, 3, 24, 24)
    wide.eval()
    assert not torch.allclose(wide(x, torch.zeros(2, 3)), wide(x, torch.ones(2, 3)))


def test_photo_inputs_run_through_finetune_and_features(stages, tmp_path):
    out = tmp_path / "04_finetune"
    state = finetune(stages, out, "--epochs", "1", "--photo-inputs", "shape")
    assert state["config"]["inputs"] == 3 and state["config"]["photo_inputs"] == "shape"
    assert common.is_done(out / "multi_0")
    p = subprocess.run([PY, "05_features.py", "--task", "multi", "--fold", "0", "--folds", str(stages / "01_sgkfold"),
                        "--hvr", str(stages / "02_hvr"), "--runs", str(out), "--out", str(tmp_path / "05"),
                        "--profile", "smoke"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert np.isfinite(pd.read_parquet(tmp_path / "05" / "multi_0" / "heldout.parquet").iloc[:, 1:].to_numpy()).all()


@pytest.fixture(scope="module")
def plain(stages, tmp_path_factory):
    return finetune(stages, tmp_path_factory.mktemp("plain"), "--epochs", "1")


def test_mixup_is_reproducible_and_changes_the_training(stages, plain, tmp_path):
    a = finetune(stages, tmp_path / "a", "--epochs", "1", "--mixup", "0.4")
    b = finetune(stages, tmp_path / "b", "--epochs", "1", "--mixup", "0.4")
    assert same_weights(a, b) and not same_weights(a, plain)


def test_bf16_training_is_not_float32(stages, plain, tmp_path):
    a = finetune(stages, tmp_path / "a", "--epochs", "1", "--precision", "bf16")
    assert not same_weights(a, plain) and plain["config"]["precision"] == "fp32"     # the smoke profile's
    ev = pd.read_csv(tmp_path / "a" / "multi_0" / "eval.csv")
    assert np.isfinite(ev["rmse_target"]).all()


def test_precision_auto_is_bf16_on_gpus_and_native_bf16_cpus_only(monkeypatch):
    assert training.bf16(torch.device("cuda"), "auto") and not training.bf16(torch.device("cuda"), "fp32")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not training.bf16(torch.device("cpu"), "auto") and training.bf16(torch.device("cpu"), "bf16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert training.bf16(torch.device("cpu"), "auto")
    assert common.PROFILES["full"]["05"]["precision"] == "auto"        # GPUs: bf16, as before
