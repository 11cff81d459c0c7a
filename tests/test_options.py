"""The fine-tune's options past the recipe that a profile uses: bf16 autocast on a CPU
(--precision), run through the real 04 on the smoke pipeline's stages 00-03; and 02 --mode pad,
which keeps each photo as decoded at the photos' own size."""
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, build_store, smoke_copy

import checkpointing
import common
import inference
import photo_stats
import pixels

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
    return checkpointing.load_checkpoint(checkpointing.list_checkpoints(out / "multi_0")[-1][2])


def same_weights(a, b):
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.fixture(scope="module")
def plain(stages, tmp_path_factory):
    return finetune(stages, tmp_path_factory.mktemp("plain"), "--epochs", "1")


def test_bf16_training_is_not_float32(stages, plain, tmp_path):
    a = finetune(stages, tmp_path / "a", "--epochs", "1", "--precision", "bf16")
    assert not same_weights(a, plain) and plain["config"]["precision"] == "fp32"     # the smoke profile's
    ev = pd.read_csv(tmp_path / "a" / "multi_0" / "eval.csv")
    assert np.isfinite(ev["rmse_target"]).all()


def test_precision_auto_is_bf16_on_gpus_and_native_bf16_cpus_only(monkeypatch):
    assert inference.bf16(torch.device("cuda"), "auto") and not inference.bf16(torch.device("cuda"), "fp32")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not inference.bf16(torch.device("cpu"), "auto") and inference.bf16(torch.device("cpu"), "bf16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert inference.bf16(torch.device("cpu"), "auto")
    assert common.PROFILES["full"]["05"]["precision"] == "auto"        # GPUs: bf16, as before


def test_02s_pad_store_at_the_photos_size_holds_each_photo_as_decoded(real_data, tmp_path):
    """The real 02 --mode pad at the real photos' own size (224): within each photo's box
    (photo_stats.content_box of its size in stats.csv) the store holds the photo exactly as
    ImageMagick decodes it, not resampled; outside it, every row or column repeats the photo's edge."""
    train = pd.read_csv(real_data / "train.csv", dtype={"object_id": str})
    ids = list(train["object_id"][:12])
    store = build_store(real_data / "photos", ids, tmp_path / "store", 224, mode="pad")
    images, order, meta = pixels.load_store(store)
    sizes = pd.read_csv(store / "stats.csv", dtype={"object_id": str}).set_index("object_id")
    for image, oid in zip(images, order):
        top, bottom, left, right = photo_stats.content_box(*sizes.loc[oid, ["width", "height"]], meta["size"], "pad")
        decoded = subprocess.run(["convert", str(real_data / "photos" / f"{oid}.jpg"), "-colorspace", "sRGB",
                                  "-depth", "8", "rgb:-"], capture_output=True, check=True).stdout
        own = image[top:bottom, left:right]
        assert np.array_equal(own.reshape(-1), np.frombuffer(decoded, np.uint8)), oid
        assert (image[:top] == image[top]).all() and (image[bottom:] == image[bottom - 1]).all()
        assert (image[:, :left] == image[:, left:left + 1]).all() and (image[:, right:] == image[:, right - 1:right]).all()
