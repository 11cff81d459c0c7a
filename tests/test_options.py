"""The fine-tune's options past the recipe: bf16 autocast on a CPU (--precision), photo inputs
beside the pixels (--photo-inputs), mixup (--mixup), crops of the photo (--crop). Each runs
through the real 04 and 05 on the smoke pipeline's stages 00-03; a mixup run is reproducible:
the same command twice trains the same weights."""
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, build_store, smoke_copy

import checkpointing
import common
import inference
import models
import pixels
import tasks
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
    return checkpointing.load_checkpoint(checkpointing.list_checkpoints(out / "multi_0")[-1][2])


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
    plain = models.build_model("resnet18", 26)
    torch.manual_seed(0)
    wide = models.build_model("resnet18", 26, 3)
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
    assert inference.bf16(torch.device("cuda"), "auto") and not inference.bf16(torch.device("cuda"), "fp32")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not inference.bf16(torch.device("cpu"), "auto") and inference.bf16(torch.device("cpu"), "bf16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert inference.bf16(torch.device("cpu"), "auto")
    assert common.PROFILES["full"]["05"]["precision"] == "auto"        # GPUs: bf16, as before


# ---- crops ----------------------------------------------------------------------------------
def test_a_crop_is_the_stores_pixels_in_its_window_then_its_view():
    s, c = 11, 5
    u8 = torch.randint(0, 256, (3, s, s, 3), dtype=torch.uint8)
    px = pixels.to_pixels(u8.numpy(), "cpu")
    views, corners = torch.tensor([0, 5, 7]), torch.tensor([[0, 0], [6, 2], [3, 6]])
    got = pixels.to_input(px, views, pixels.view_index(c), crops=corners)
    window = torch.stack([u8[b, y:y + c, x:x + c].permute(2, 0, 1) for b, (y, x) in enumerate(corners.tolist())])
    want = pixels.apply_views(window.contiguous(), views, pixels.view_index(c)).float()
    scale, shift = pixels.normaliser(torch.device("cpu"))
    assert torch.allclose(got, want * scale + shift)


def test_crop_boxes_keep_crops_within_the_photo(tmp_path):
    ids = ["a" * 20, "b" * 20, "c" * 20]
    (tmp_path / "stats.csv").write_text("object_id,width,height\n" + f"{ids[0]},224,100\n{ids[1]},35,224\n{ids[2]},224,224\n")
    for mode, want in (("pad", [[[62, 0], [114, 176]],            # rows 62..161 hold the photo
                                 [[0, 87], [176, 87]],              # 35 wide: centred across
                                 [[0, 0], [176, 176]]]),
                       ("stretch", [[[0, 0], [176, 176]]] * 3)):
        (tmp_path / "meta.json").write_text(f'{{"size": 224, "mode": "{mode}"}}')
        assert variants.crop_boxes(tmp_path, ids, 48).tolist() == want, mode
    grid = variants.grid_origins(torch.tensor([[[62, 0], [114, 176]]]), 3)     # the first photo's, padded
    assert grid[0].tolist() == [[y, x] for y in (62, 88, 114) for x in (0, 88, 176)]
    with pytest.raises(SystemExit):
        variants.crop_boxes(tmp_path, ids, 225)


def test_02s_pad_store_at_the_photos_size_holds_each_photo_as_decoded(real_data, tmp_path):
    """The real 02 --mode pad at the real photos' own size (224): within each photo's box
    (crop_boxes of a 1-pixel crop) the store holds the photo exactly as ImageMagick decodes it,
    not resampled; outside it, every row or column repeats the photo's edge."""
    train = pd.read_csv(real_data / "train.csv", dtype={"object_id": str})
    ids = list(train["object_id"][:12])
    store = build_store(real_data / "photos", ids, tmp_path / "store", 224, mode="pad")
    images, order, _meta = pixels.load_store(store)
    boxes = variants.crop_boxes(store, order, 1).numpy()
    for image, oid, ((top, left), (bottom, right)) in zip(images, order, boxes):
        decoded = subprocess.run(["convert", str(real_data / "photos" / f"{oid}.jpg"), "-colorspace", "sRGB",
                                  "-depth", "8", "rgb:-"], capture_output=True, check=True).stdout
        own = image[top:bottom + 1, left:right + 1]
        assert np.array_equal(own.reshape(-1), np.frombuffer(decoded, np.uint8)), oid
        assert (image[:top] == image[top]).all() and (image[bottom + 1:] == image[bottom]).all()
        assert (image[:, :left] == image[:, left:left + 1]).all() and (image[:, right + 1:] == image[:, right:right + 1]).all()


def test_crop_runs_through_finetune_and_features(stages, plain, tmp_path):
    out = tmp_path / "04_finetune"
    a = finetune(stages, out, "--epochs", "1", "--crop", "16", "--eval-crops", "2")
    assert a["config"]["crop"] == 16 and not same_weights(a, plain)
    ev = pd.read_csv(out / "multi_0" / "eval.csv")
    assert np.isfinite(ev["rmse_target"]).all()
    p = subprocess.run([PY, "05_features.py", "--task", "multi", "--fold", "0", "--folds", str(stages / "01_sgkfold"),
                        "--hvr", str(stages / "02_hvr"), "--runs", str(out), "--out", str(tmp_path / "05"),
                        "--profile", "smoke"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    train = np.load(tmp_path / "05" / "multi_0" / "train.npz")
    assert train["outputs"].shape[1] == 8 and np.isfinite(train["outputs"]).all()
    # 05 predicted from the crops (each view the mean of its 2 x 2 grid), not from the whole photo
    ids = list(train["object_id"])
    images, order, _meta = pixels.load_store(stages / "02_hvr")
    px = pixels.to_pixels(images[pixels.store_rows(order, ids, "store").numpy()], "cpu")
    model = models.build_model("resnet18", a["config"]["outputs"], 0, a["config"]["width"])
    model.load_state_dict(a["model"])
    config = a["config"]
    predict = lambda c: tasks.in_units("multi", variants.predict_views(
        c, model, px, torch.device("cpu"), 64, precision="fp32", boxes=variants.crop_boxes(stages / "02_hvr", ids, 16)), config)
    assert np.allclose(train["outputs"], predict(config).numpy(), atol=1e-5)
    assert not np.allclose(train["outputs"], predict(dict(config, crop=0)).numpy(), atol=1e-3)
