"""Stage 02's per-photo statistics (photo_stats.py, WORK/02_hvr/stats.csv) against Pillow.

A generated photo goes through the real 02_hvr_augment.sh (ImageMagick decode and resize); its
row of stats.csv is checked against Pillow's own decode, HSV, luma, ImageStat and FIND_EDGES:
the photo-size columns against Pillow on the original JPEG (tight: the same pixels, up to the
decoders); the _stored columns against Pillow on the very pixels 02 stored (tight), and against
Pillow resizing the original itself (loose: the two resize filters differ at the block edges).
"""
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter, ImageOps, ImageStat

from conftest import REPO, build_store
import photo_stats

SIZE = 64
W, H = 200, 90      # a wide photo: padding it to a square replicates its top and bottom rows


def make_photo(path):
    """Flat colour blocks (exact means after any resize, up to the block edges) and a stripe
    field (edges): red top band, green bottom band, blue left half, black/white stripes right."""
    x = np.zeros((H, W, 3), np.uint8)
    x[:, : W // 2] = (40, 60, 200)
    x[:, W // 2:] = 255 * ((np.arange(W - W // 2) // 6) % 2)[None, :, None]
    x[:12] = (210, 30, 30)
    x[-12:] = (30, 170, 60)
    Image.fromarray(x).save(path, quality=100, subsampling=0)
    return path


def run_02(photo, out, mode):
    build_store(photo.parent, [photo.stem], out, SIZE, mode)
    row = pd.read_csv(out / "stats.csv", dtype={"object_id": str}).set_index("object_id").loc[photo.stem]
    return row, np.load(out / "images.npy")[0]


def pillow_stats(im):
    """The same statistics, by Pillow alone, of an RGB image."""
    mean = np.array(ImageStat.Stat(im).mean) / 255
    std = np.array(ImageStat.Stat(im).stddev) / 255
    hist = {}
    for name, band in zip("hsv", im.convert("HSV").split()):
        counts = np.array(band.histogram()).reshape(photo_stats.BINS, -1).sum(1)   # 8 bins of 32 levels
        hist[name] = counts / counts.sum()
    luma = im.convert("L")
    # FIND_EDGES is the 8-neighbour Laplacian clipped at 0; of the inverted image, its negative side.
    up = np.asarray(luma.filter(ImageFilter.FIND_EDGES), float)
    down = np.asarray(ImageOps.invert(luma).filter(ImageFilter.FIND_EDGES), float)
    lap = np.maximum(up, down)[1:-1, 1:-1]                   # the border has no full neighbourhood
    return mean, std, hist, (lap > 255 * photo_stats.EDGE_LEVEL).mean()


def check(row, suffix, mean, std, hist, density, tol):
    get = lambda names: row[[n + suffix for n in names]].to_numpy(float)
    ours = get(["r_mean", "g_mean", "b_mean"])
    assert np.allclose(ours, mean, atol=tol["mean"]), (suffix, ours, mean)
    ours = get(["r_std", "g_std", "b_std"])
    assert np.allclose(ours, std, atol=tol["std"]), (suffix, ours, std)
    for c in "hsv":
        ours = get([f"{c}_hist{k}" for k in range(photo_stats.BINS)])
        assert abs(ours.sum() - 1) < 1e-6
        assert np.allclose(ours, hist[c], atol=tol["hist"]), (suffix, c, ours, hist[c])
    if density is not None:
        assert abs(row["edge_density" + suffix] - density) < tol["edge"], (suffix, row["edge_density" + suffix], density)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    d = tmp_path_factory.mktemp("photo_stats")
    (d / "photos").mkdir()
    return make_photo(d / "photos" / "f00dfeed00000000beef.jpg")


def test_stretch_statistics_match_pillow(photo, tmp_path):
    row, stored = run_02(photo, tmp_path / "hvr", "stretch")
    assert (row["width"], row["height"], row["aspect"]) == (W, H, pytest.approx(W / H))
    with Image.open(photo) as im:
        original = im.convert("RGB")
    # The photo as decoded: only the decoders and Pillow's byte rounding of hue and luma differ.
    check(row, "", *pillow_stats(original), tol=dict(mean=2e-3, std=2e-3, hist=0.02, edge=0.02))
    # The formulas, on the pixels 02 stored.
    check(row, "_stored", *pillow_stats(Image.fromarray(stored)), tol=dict(mean=1e-5, std=1e-5, hist=0.02, edge=0.02))
    # The chain: Pillow resizes the original itself.
    check(row, "_stored", *pillow_stats(original.resize((SIZE, SIZE), Image.LANCZOS)),
          tol=dict(mean=0.02, std=0.03, hist=0.05, edge=0.08))
    for suffix in ("", "_stored"):                                  # the stripes are edges
        assert row["edge_density" + suffix] > 0.1 and row["edge_mean" + suffix] > 0


def test_pad_statistics_ignore_the_padding(photo, tmp_path):
    """In pad mode the square is mostly replicated red and green bands; the statistics must see
    only the photo's own part, i.e. agree with Pillow on the photo at its own aspect."""
    row, stored = run_02(photo, tmp_path / "hvr", "pad")
    assert (row["width"], row["height"]) == (W, H)
    stretched, _ = run_02(photo, tmp_path / "hvr_stretch", "stretch")
    native = ["width", "height", "aspect", *photo_stats.PIXEL_COLUMNS]
    assert row[native].equals(stretched[native])            # the photo's own statistics: one decode
    top, bottom, left, right = photo_stats.content_box(W, H, SIZE, "pad")
    assert (left, right) == (0, SIZE) and 0 < top and bottom < SIZE and bottom - top >= H * SIZE // W - 2
    with Image.open(photo) as im:
        own = im.convert("RGB").resize((right - left, bottom - top), Image.LANCZOS)
        check(row, "_stored", *pillow_stats(own)[:3], None, tol=dict(mean=0.03, std=0.04, hist=0.06))
    whole = stored.reshape(-1, 3).mean(0) / 255          # what counting the padding would give
    assert abs(whole[0] - row["r_mean_stored"]) > 0.05


def test_content_box_is_inside_the_photo():
    assert photo_stats.content_box(224, 109, 48, "stretch") == (0, 48, 0, 48)
    top, bottom, left, right = photo_stats.content_box(224, 109, 48, "pad")
    # 109 of 224 rows, centred: rows 12.3 .. 35.7 of 48, shrunk to whole pixels
    assert (top, bottom, left, right) == (13, 35, 0, 48)
    assert photo_stats.content_box(109, 224, 48, "pad") == (0, 48, 13, 35)
    top, bottom, _, _ = photo_stats.content_box(224, 2, 48, "pad")   # a sliver still has a pixel
    assert bottom - top == 1


def test_file_bytes_come_from_validation_and_are_nan_when_unknown(photo, tmp_path):
    """The JPEG's size rides on validation's id list (photos.csv's `bytes`) into stats.csv; an
    id list without it gives NaN (06's booster and the networks' photo inputs take NaN)."""
    row, _ = run_02(photo, tmp_path / "unknown", "stretch")
    assert np.isnan(row["file_bytes"]) and np.isnan(row["bytes_per_pixel"])
    size = photo.stat().st_size
    ids_csv = tmp_path / "photos.csv"
    ids_csv.write_text(f"object_id,width,height,mode,sha256,bytes\n{photo.stem},{W},{H},RGB,-,{size}\n")
    out = tmp_path / "known"
    subprocess.run([str(REPO / "02_hvr_augment.sh"), "--photos", str(photo.parent), "--ids", str(ids_csv),
                    "--out", str(out), "--size", str(SIZE), "--python", str(REPO / ".venv" / "bin" / "python")],
                   check=True, capture_output=True, cwd=REPO, timeout=120)
    known = pd.read_csv(out / "stats.csv", dtype={"object_id": str}).set_index("object_id").loc[photo.stem]
    assert known["file_bytes"] == size and known["bytes_per_pixel"] == pytest.approx(size / (W * H))


def test_framing_texture_and_paper_statistics_by_hand():
    """The newer columns on images whose values follow from their construction."""
    named = lambda x: dict(zip(photo_stats.PIXEL_COLUMNS, photo_stats.pixel_stats(x)))
    x = np.zeros((40, 60, 3), np.uint8)
    x[:, :30] = 255                        # white left half, black right half: grey, half paper
    r = named(x)
    assert (r["s_mean"], r["s_std"], r["grey"], r["paper"]) == (0, 0, 1, 0.5)
    assert (r["v_p10"], r["v_p50"], r["v_p90"]) == (0, pytest.approx(0.5), 1)
    assert r["step"] == pytest.approx(1 / 59) and r["step_half"] == pytest.approx(1 / 29)   # one edge a row
    assert r["middle_minus_all"] == pytest.approx(0)                                       # both halves inside
    framed = np.full((40, 60, 3), (200, 40, 40), np.uint8)   # a saturated frame around a white middle
    framed[10:30, 15:45] = 255
    r = named(framed)
    sat = 160 / 200                                          # (max - min) / max of the frame's colour
    assert r["s_mean"] == pytest.approx(sat * 0.75) and r["grey"] == pytest.approx(0.25) == r["paper"]
    luma_frame = (0.299 * 200 + 0.587 * 40 + 0.114 * 40) / 255
    assert r["middle_minus_all"] == pytest.approx((1 - luma_frame) * 0.75, abs=1e-5)
    tiny = named(np.zeros((1, 1, 3), np.uint8))              # a 1-pixel photo: defined, no NaN
    assert not np.isnan(list(tiny.values())).any()


def test_colour_statistics_are_the_same_in_slices_and_whole(monkeypatch):
    """A large photo's HSV statistics go CHUNK pixels at a time: slices of 1,000 pixels give what
    one pass gives, and v's percentiles from its level counts are np.percentile's."""
    rgb = np.random.default_rng(3).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    rgb[:20] = rgb[:20] // 64 * 64                 # repeated levels: the percentiles fall on ties
    flat = photo_stats.planes(rgb)[0].reshape(-1, 3)
    whole = photo_stats.colour(flat)
    monkeypatch.setattr(photo_stats, "CHUNK", 1000)
    sliced = photo_stats.colour(flat)
    assert sliced[0] == whole[0] and sliced[1] == pytest.approx(whole[1], abs=1e-12)
    _h, sat, val = photo_stats.hsv(flat)
    assert whole[1][2:5] == pytest.approx(np.percentile(val, photo_stats.V_PERCENTILES), abs=1e-6)
    assert whole[1][:2] == pytest.approx([sat.mean(), sat.std()], abs=1e-6)
