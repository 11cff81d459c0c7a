"""Per-photo statistics the square resize hides from the networks: the photo's size and
aspect, its JPEG's bytes (and per pixel: how much detail the encoder kept), its colour (RGB means
and spreads, 8-bin HSV histograms, saturation's mean and spread, brightness percentiles, the share
of grey and of paper-white pixels), its texture (edge strength; luma's mean step to the next pixel,
at full and at half resolution) and its framing (the middle's luma against the whole's); and, at
the photo's own resolution only, the histograms of luma's local binary patterns at its pixels and at
half its resolution (lbp0..lbp9, lbp_half0..lbp_half9: paper grain, print screens, hatching, each at
two scales), which lower the statistics' booster's CV on the real data where
gradient orientations, spectral bands and the JPEG's encoding facts added nothing to it
(TEXTURE_GROUPS; docs/texture.md, bench/texture_study.py).

Stage 02 computes them once, from its one decode of each photo (no second pass over the JPEGs),
and writes WORK/02_hvr/stats.csv in the store's row order; 06_stack.py --meta on gives them to
the stack. Colour and texture are measured twice: on the photo as decoded, at its own size, and
(columns ending _stored) on the S x S pixels the networks get, in `pad` mode only on the photo's
own part of the square, so the replicated edges do not count. docs/history.md ("The statistics'
booster") gives the booster's pooled CV on the real data as these columns were added.

The definitions follow Pillow's, so that tests can check them against an independent computation:
HSV as Image.convert("HSV") (hue of a grey pixel 0), luma as convert("L") (ITU-R 601-2).
"""
import math

import numpy as np

BINS = 8            # per HSV channel: a small histogram
EDGE_LEVEL = 0.125  # |8-neighbour Laplacian of luma| above this (32/255) counts as an edge pixel
GREY_S = 0.08       # saturation below this: a grey pixel
PAPER_V, PAPER_S = 0.85, 0.15    # brighter and less saturated than these: a paper-white pixel
V_PERCENTILES = (10, 50, 90)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
RING = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]    # 8 neighbours, in circular order
CHUNK = 1 << 20     # pixels per slice of a photo's HSV statistics

PIXEL_COLUMNS = (["r_mean", "g_mean", "b_mean", "r_std", "g_std", "b_std"]
                 + [f"{c}_hist{k}" for c in "hsv" for k in range(BINS)]
                 + ["edge_mean", "edge_density"]
                 + ["s_mean", "s_std", *(f"v_p{q}" for q in V_PERCENTILES), "grey", "paper",
                    "step", "step_half", "middle_minus_all"])
SIZE_COLUMNS = ["width", "height", "aspect", "file_bytes", "bytes_per_pixel"]

# Texture at the photo's own resolution, which the networks' S x S squares lose: of the photo as
# decoded only (no _stored twin), in groups that bench/texture_study.py adds or leaves out whole.
LBP_CODES = 10      # 8-neighbour rotation-invariant uniform codes: 0..8 neighbours >= the centre, 9 the rest
TEXTURE_GROUPS = {"lbp": [f"lbp{k}" for k in range(LBP_CODES)],                 # at the photo's pixels
                  "lbp_half": [f"lbp_half{k}" for k in range(LBP_CODES)]}       # at half its resolution
NATIVE_ONLY = [c for group in TEXTURE_GROUPS.values() for c in group]
COLUMNS = [*SIZE_COLUMNS, *PIXEL_COLUMNS, *(f"{c}_stored" for c in PIXEL_COLUMNS), *NATIVE_ONLY]


def content_box(width, height, size, mode):
    """(top, bottom, left, right) of the photo's own pixels in its S x S stored image: all of
    it for `stretch`; for `pad` the part that is not replicated edge (02 centres the photo at a
    whole-pixel offset, then resizes the square), shrunk inwards to whole pixels (the boundary
    pixels blend photo and padding), never empty."""
    if mode == "stretch":
        return 0, size, 0, size
    m = max(width, height)
    scale = size / m

    def span(extent):
        start = (m - extent) // 2 * scale
        a, b = math.ceil(start - 1e-9), math.floor(start + extent * scale + 1e-9)
        return (a, b) if b > a else (min(int(start), size - 1), min(int(start), size - 1) + 1)

    top, bottom = span(height)
    left, right = span(width)
    return top, bottom, left, right


def hsv(x):
    """x (..., 3) float RGB in [0, 1] -> h, s, v in [0, 1] (h in [0, 1): a fraction of the circle)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v, lo = x.max(-1), x.min(-1)
    c = v - lo
    safe = np.where(c > 0, c, 1)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = np.where(c > 0, np.mod(h / 6, 1.0), 0.0)
    s = np.where(v > 0, c / np.where(v > 0, v, 1), 0.0)
    return h, s, v


def row(native, stored, file_bytes=np.nan):
    """One photo's values of COLUMNS: native (h, w, 3) uint8, the photo as decoded; stored, its
    part of the S x S stored image (content_box); file_bytes, its JPEG's size (NaN: unknown)."""
    height, width = native.shape[:2]
    size = [width, height, width / height, file_bytes, file_bytes / (width * height)]
    made = planes(native)           # once, for its statistics and its texture at both scales
    _x, luma, half = made
    return np.concatenate([size, pixel_stats(native, made), pixel_stats(stored),
                           lbp_histogram(luma), lbp_histogram(half)])


def planes(rgb):
    """(x, luma, half) of an (h, w, 3) uint8 image: its RGB as float32 in [0, 1], its luma, and
    luma at half resolution (halve)."""
    x = rgb.astype(np.float32)
    x /= 255                                        # in place: one photo-sized float array, not two
    luma = (x.reshape(-1, 3) @ LUMA).reshape(x.shape[:2])
    return x, luma, halve(luma)


def pixel_stats(rgb, made=None):
    """The values of PIXEL_COLUMNS of an (h, w, 3) uint8 image (`made`: its planes(), if made)."""
    x, luma, half = planes(rgb) if made is None else made
    flat = x.reshape(-1, 3)
    # exact sums from each channel's 256 level counts (no photo-sized int64 copy): mean and spread
    counts = np.stack([np.bincount(rgb[..., c].ravel(), minlength=256) for c in range(3)])
    levels = np.arange(256, dtype=np.int64)
    mean = counts @ levels / len(flat)
    spread = np.sqrt(np.maximum(counts @ levels ** 2 / len(flat) - mean ** 2, 0))
    out = [*(mean / 255), *(spread / 255)]
    histograms, saturation = colour(flat)
    out += histograms
    if luma.shape[0] >= 3 and luma.shape[1] >= 3:   # the Laplacian needs a neighbour on every side
        lap = 8 * luma[1:-1, 1:-1]
        for dy, dx in RING:                         # in place: no photo-sized temporary per neighbour
            lap -= luma[1 + dy: luma.shape[0] - 1 + dy, 1 + dx: luma.shape[1] - 1 + dx]
        np.abs(lap, out=lap)
        out += [float(lap.mean()), float((lap > EDGE_LEVEL).mean())]
    else:
        out += [0.0, 0.0]
    out += saturation
    out += [step(luma), step(half)]
    rows, cols = luma.shape
    middle = luma[rows // 4: rows - rows // 4, cols // 4: cols - cols // 4]
    out += [float(middle.mean() - luma.mean())]          # never empty: a 1-pixel side keeps its pixel
    return np.asarray(out, dtype=np.float64)


def halve(luma):
    """luma at half its resolution: the mean of each 2 x 2 block (an odd last row or column dropped)."""
    half = luma[: luma.shape[0] // 2 * 2, : luma.shape[1] // 2 * 2]
    return half.reshape(half.shape[0] // 2, 2, half.shape[1] // 2, 2).mean((1, 3))


def colour(flat):
    """(the h, s and v histograms' shares, [s_mean, s_std, v's percentiles, grey, paper]) of float
    RGB pixels (n, 3), taken CHUNK pixels at a time, so that a 25-megapixel photo's HSV
    temporaries stay small; counts are exact, sums in float64."""
    n = len(flat)
    counts = np.zeros((3, BINS), np.int64)
    levels = np.zeros(256, np.int64)                # v is one of the 256 values k / 255
    s_sum = s_squares = grey = paper = 0
    for start in range(0, n, CHUNK):
        hue, sat, val = hsv(flat[start: start + CHUNK])
        for k, channel in enumerate((hue, sat, val)):
            counts[k] += np.bincount(np.minimum((channel * BINS).astype(int), BINS - 1), minlength=BINS)
        levels += np.bincount(np.rint(val * 255).astype(int), minlength=256)
        s64 = sat.astype(np.float64)
        s_sum, s_squares = s_sum + s64.sum(), s_squares + s64 @ s64
        grey += int((sat < GREY_S).sum())
        paper += int(((val > PAPER_V) & (sat < PAPER_S)).sum())
    s_mean = s_sum / n
    percentiles = [level_percentile(levels, q) / 255 for q in V_PERCENTILES]
    return list((counts / n).ravel()), [s_mean, math.sqrt(max(s_squares / n - s_mean ** 2, 0)), *percentiles,
                                        grey / n, paper / n]


def level_percentile(counts, q):
    """np.percentile(values, q) (linear interpolation) of integer values given by their counts."""
    position = q / 100 * (counts.sum() - 1)
    below = int(math.floor(position))
    ends = np.cumsum(counts)
    lo, hi = (int(np.searchsorted(ends, i, side="right")) for i in (below, min(below + 1, ends[-1] - 1)))
    return lo + (position - below) * (hi - lo)


def step(luma):
    """Mean absolute difference of luma to the next pixel, down and across (0 for a 1-pixel side)."""
    if min(luma.shape) == 0:
        return 0.0
    down = np.abs(np.diff(luma, axis=0)).mean() if luma.shape[0] > 1 else 0.0
    across = np.abs(np.diff(luma, axis=1)).mean() if luma.shape[1] > 1 else 0.0
    return float(down + across)


def lbp_histogram(luma):
    """Shares of luma's interior pixels per rotation-invariant uniform local binary pattern: bit p
    says neighbour p (of 8, in circular order) >= the centre; a code with at most 2 changes around
    the circle is its count of ones (0..8: from a bright spot through line ends, corners and edges
    to a flat patch), any other is 9 (noise, print screens, fine hatching). Zeros for a photo under
    3 pixels on a side. Not scikit-image's local_binary_pattern(P=8, R=1, "uniform"): it samples
    the diagonal neighbours on the unit circle, interpolated between pixels, another operator whose
    histograms differ from these (and the texture study measured these)."""
    rows, cols = luma.shape
    if rows < 3 or cols < 3:
        return np.zeros(LBP_CODES)
    centre = luma[1:-1, 1:-1]
    bit = lambda dy, dx: luma[1 + dy: rows - 1 + dy, 1 + dx: cols - 1 + dx] >= centre
    first = previous = bit(*RING[0])
    ones, changes = first.astype(np.uint8), np.zeros(centre.shape, np.uint8)
    for dy, dx in RING[1:]:                 # one neighbour at a time: a large photo's memory stays small
        current = bit(dy, dx)
        ones += current
        changes += current != previous
        previous = current
    changes += previous != first
    code = np.where(changes <= 2, ones, LBP_CODES - 1)
    return np.bincount(code.ravel(), minlength=LBP_CODES) / code.size
