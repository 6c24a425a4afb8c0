"""Procedural digit glyphs: 0-9 rendered from the fonts that ship with matplotlib, with jitter.

Each of the :data:`GLYPH_FONTS` (21 faces: DejaVu Sans / Sans Mono / Serif and STIX General in
four styles each, and five Computer Modern faces) renders each digit once, large, into a signed
distance field (SDF, cached per process). An image is then one bilinear sample of that field under
a random affine map, thresholded with a one-pixel anti-aliasing ramp, so the stroke width is a
shift of the threshold, and the whole batch is one ``grid_sample`` call.

Image ``i`` is a pure function of ``(seed, i)``: its label is ``i % 10`` (balanced over any range of
indices), its font, affine map, stroke width, contrast and noise come from
``np.random.default_rng([seed, i])``. So shards, resumed runs and tests regenerate the same images.

=================  =============================================================================
jitter             range
=================  =============================================================================
font               uniform over :data:`GLYPH_FONTS`
scale              uniform [0.8, 1.1] of the MNIST-like box (glyph height 20 of 28 pixels)
aspect             x scale times uniform [0.85, 1.15]
rotation           uniform [-15, 15] degrees
shear              uniform [-0.25, 0.25]
translation        uniform [-0.1, 0.1] per axis (in [-1, 1] image units; about 1.4 pixels)
stroke width       threshold shift uniform [-0.3, 1.0] output pixels (thinner to bolder)
contrast           foreground intensity uniform [0.75, 1.0] on a black background
noise              additive Gaussian, std uniform [0, 0.02], then clipped to [0, 1]
=================  =============================================================================
"""
from __future__ import annotations

import math
import os
from functools import lru_cache

import numpy as np

#: matplotlib font files used (all ship in ``matplotlib/mpl-data/fonts/ttf``).
GLYPH_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf",
)
_CANVAS = 128            # SDF canvas side (pixels)
_GLYPH = 80              # glyph bounding-box side on the canvas (pixels)
_BOX = 20 / 28           # glyph box side / image side (MNIST: 20 of 28 pixels)


@lru_cache(maxsize=None)
def glyph_sdfs() -> np.ndarray:
    """Signed distance fields ``[n_fonts, 10, C, C]`` (canvas pixels, positive outside the glyph)."""
    import matplotlib
    from matplotlib.ft2font import FT2Font
    from scipy.ndimage import distance_transform_edt

    root = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    out = np.empty((len(GLYPH_FONTS), 10, _CANVAS, _CANVAS), np.float32)
    for f, name in enumerate(GLYPH_FONTS):
        font = FT2Font(os.path.join(root, name))
        for d in range(10):
            font.set_size(96, 72)
            font.set_text(str(d), 0.0)
            font.draw_glyphs_to_bitmap(antialiased=True)
            ink = np.asarray(font.get_image()) >= 128
            rows, cols = np.nonzero(ink)
            if rows.size == 0:
                raise RuntimeError(f"font {name!r} rendered no pixels for the digit {d}")
            ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            # scale the glyph so its larger side is _GLYPH pixels, centred on the canvas (nearest sampling)
            h, w = ink.shape
            k = _GLYPH / max(h, w)
            gy = ((np.arange(_CANVAS) + 0.5 - _CANVAS / 2) / k + h / 2).astype(int)
            gx = ((np.arange(_CANVAS) + 0.5 - _CANVAS / 2) / k + w / 2).astype(int)
            vy, vx = (gy >= 0) & (gy < h), (gx >= 0) & (gx < w)
            mask = np.zeros((_CANVAS, _CANVAS), bool)
            mask[np.ix_(vy, vx)] = ink[np.ix_(gy[vy], gx[vx])]
            out[f, d] = distance_transform_edt(~mask) - distance_transform_edt(mask)
    return out


def render_glyphs(indices, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Render glyph images ``indices`` of the set with ``seed``.

    Args:
        indices (array of int): image indices (any non-negative ints; the set is unbounded).
        seed (int): the set's seed.
        size (int): output side in pixels (default 28).

    Returns:
        images ``[n, size, size]`` float32 in [0, 1] (white digit on black) and labels ``[n]`` int64.
    """
    import torch
    import torch.nn.functional as F

    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
        raise ValueError(f"glyph indices must be non-negative, got {int(idx.min())}")
    n = len(idx)
    labels = idx % 10
    fonts = np.empty(n, np.int64)
    theta = np.empty((n, 2, 3), np.float32)       # output coords (col, row) -> canvas coords, grid_sample form
    shift = np.empty(n, np.float32)
    contrast = np.empty(n, np.float32)
    noise_std = np.empty(n, np.float32)
    half = _CANVAS / _GLYPH * _BOX                 # canvas half-side in image units ([-1, 1] image)
    for j, i in enumerate(idx):
        rng = np.random.default_rng([int(seed), int(i)])
        fonts[j] = rng.integers(len(GLYPH_FONTS))
        s = rng.uniform(0.8, 1.1)
        a = rng.uniform(0.85, 1.15)
        rot = math.radians(rng.uniform(-15.0, 15.0))
        sh = rng.uniform(-0.25, 0.25)
        t = rng.uniform(-0.1, 0.1, 2)
        shift[j] = rng.uniform(-0.3, 1.0)
        contrast[j] = rng.uniform(0.75, 1.0)
        noise_std[j] = rng.uniform(0.0, 0.02)
        # forward map glyph -> image: p = R @ Sh @ diag(s * a, s) @ q + t ; sample with its inverse
        c, si = math.cos(rot), math.sin(rot)
        fwd = np.array([[c, -si], [si, c]]) @ np.array([[1.0, sh], [0.0, 1.0]]) @ np.diag([s * a, s])
        inv = np.linalg.inv(fwd) / half            # image units -> canvas grid units ([-1, 1] canvas)
        theta[j, :, :2] = inv
        theta[j, :, 2] = -inv @ t
    sdf = torch.from_numpy(glyph_sdfs()[fonts, labels])[:, None]                     # [n, 1, C, C]
    grid = F.affine_grid(torch.from_numpy(theta), [n, 1, size, size], align_corners=False)
    d = F.grid_sample(sdf, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    # canvas pixels -> output pixels: one canvas pixel is (2 * half / C) image units, one output pixel 2 / size
    d = d * (half * size / _CANVAS)                                                   # [n, size, size]
    img = (0.5 - (d - torch.from_numpy(shift)[:, None, None])).clamp(0, 1) * torch.from_numpy(contrast)[:, None, None]
    gen = torch.Generator()
    noise = torch.empty(n, size, size)
    for j, i in enumerate(idx):                    # per-image noise stream: independent of the batch
        gen.manual_seed(int(np.random.default_rng([int(seed), int(i), 1]).integers(2**62)))
        noise[j].normal_(0.0, 1.0, generator=gen)
    img = (img + noise * torch.from_numpy(noise_std)[:, None, None]).clamp(0, 1)
    return img.numpy().astype(np.float32), labels
