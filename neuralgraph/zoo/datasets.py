"""Image classification data that needs no download: what the zoo networks are trained on.

Every dataset is returned as single-channel square images, standardised with the training
set's mean and std, 10 classes, with a fixed train / test split (seeded, independent of the zoo
seed), so zoos of one dataset always see the same test set.

=========  ==========  =======================================================================
name       images      source
=========  ==========  =======================================================================
digits     1x8x8       ``sklearn.datasets.load_digits`` (1,797 real scans); used at their
                       native 8x8 resolution (pixel values 0..16 scaled to [0, 1], then
                       standardised); stratified 80/20 split, seed 0: 1,437 train / 360 test.
mnist1d    1x20x20     ``mnist1d`` (generated offline, 2,000 train / 500 test): each length-40
                       signal is averaged in pairs to 20 time steps and rasterised as a soft
                       line plot (row r lights up where the signal is near level r), so a 2-D
                       conv sees the waveform the way a person sees its plot.
shapes     1x16x16     procedurally rendered geometric shapes (2,000 train / 500 test, seed
                       0): 10 classes (disk, ring, square, square outline, triangle, plus,
                       cross, bars, line, L) at random position, size, rotation, stroke width,
                       contrast, with background noise. A different task from digits (shape
                       category under rotation and scale, not handwriting) and from mnist1d
                       (2-D geometry, not 1-D templates).
=========  ==========  =======================================================================

:data:`IMAGE_SETS` / :func:`load_images` serve the same sources (plus the font glyphs of
:mod:`neuralgraph.zoo.glyphs`) as raw images in [0, 1] addressed by index, image ``i`` a pure function
of ``(seed, i)``: what the INR zoos fit, one INR per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from torch import Tensor

DATASETS = ("digits", "mnist1d", "shapes")


@dataclass(frozen=True)
class ImageData:
    """A fixed train / test split of standardised images ``[N, 1, H, W]`` with labels ``[N]``."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int = 10

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.x_train.shape[-2:])


def load_image_data(name: str) -> ImageData:
    """The dataset ``name`` (one of :data:`DATASETS`), cached per process."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    return _load(name)


@lru_cache(maxsize=None)
def _load(name: str) -> ImageData:
    x_tr, y_tr, x_te, y_te = {"digits": _digits, "mnist1d": _mnist1d, "shapes": _shapes}[name]()
    mean, std = float(x_tr.mean()), float(x_tr.std()) + 1e-8
    to = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32)).unsqueeze(1)  # noqa: E731
    return ImageData(name, to(x_tr), torch.from_numpy(y_tr.astype(np.int64)),
                     to(x_te), torch.from_numpy(y_te.astype(np.int64)))


def _digits():
    from sklearn.model_selection import train_test_split

    x, y = _digit_images()                                       # [1797, 8, 8] in [0, 1]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return x_tr, y_tr, x_te, y_te


def _mnist1d():
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = 2500, 42
    d = make_dataset(args)

    def render(sig: np.ndarray) -> np.ndarray:                   # [N, 40] -> [N, 20, 20]
        s = sig.reshape(len(sig), 20, 2).mean(-1)                # [N, 20] time steps
        levels = np.linspace(-3.0, 3.0, 20)[::-1]                 # row 0 = high values
        width = levels[0] - levels[1]
        img = np.exp(-0.5 * ((s[:, None, :] - levels[None, :, None]) / width) ** 2)
        return img.astype(np.float32)

    return render(d["x"]), np.asarray(d["y"]), render(d["x_test"]), np.asarray(d["y_test"])


SHAPE_CLASSES = ("disk", "ring", "square", "square_outline", "triangle", "plus", "cross", "bars", "line", "ell")


def _shape_image(rng: np.random.Generator, c: int, size: int, noise: tuple[float, float]) -> np.ndarray:
    """One shape of class ``c`` at random position, size, rotation, stroke, contrast; noise std ~ U(noise)."""
    coords = (np.arange(size) + 0.5) / size * 2 - 1              # pixel centres in [-1, 1]
    gy, gx = np.meshgrid(coords, coords, indexing="ij")
    aa = 1.0 / size                                               # anti-aliasing width
    r = rng.uniform(0.35, 0.7)                                    # shape radius
    cx, cy = rng.uniform(-0.9 + r, 0.9 - r, 2)
    th = rng.uniform(0, 2 * np.pi)
    w = rng.uniform(0.1, 0.22)                                    # stroke half-width
    # rotate into the shape frame, scale by the radius
    u = (np.cos(th) * (gx - cx) + np.sin(th) * (gy - cy)) / r
    v = (-np.sin(th) * (gx - cx) + np.cos(th) * (gy - cy)) / r
    w = w / r
    name = SHAPE_CLASSES[c]
    if name == "disk":
        sd = np.hypot(u, v) - 1
    elif name == "ring":
        sd = np.abs(np.hypot(u, v) - 0.8) - w
    elif name == "square":
        sd = np.maximum(np.abs(u), np.abs(v)) - 0.8
    elif name == "square_outline":
        sd = np.abs(np.maximum(np.abs(u), np.abs(v)) - 0.75) - w
    elif name == "triangle":
        k = np.sqrt(3)
        sd = np.maximum(np.maximum(-v - 0.5, (k * u + v) / 2 - 0.5), (-k * u + v) / 2 - 0.5)
    elif name == "plus":
        sd = np.minimum(np.maximum(np.abs(u) - w, np.abs(v) - 1), np.maximum(np.abs(v) - w, np.abs(u) - 1))
    elif name == "cross":
        a, b = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)
        sd = np.minimum(np.maximum(np.abs(a) - w, np.abs(b) - 1), np.maximum(np.abs(b) - w, np.abs(a) - 1))
    elif name == "bars":
        sd = np.maximum(np.abs(np.abs(v) - 0.5) - w, np.abs(u) - 1)
    elif name == "line":
        sd = np.maximum(np.abs(v) - w, np.abs(u) - 1)
    else:  # "ell"
        sd = np.minimum(np.maximum(np.abs(u + 0.7) - w, np.abs(v) - 1),
                        np.maximum(np.abs(v - 0.7) - w, np.abs(u) - 1))
    sd = sd * r                                                   # back to image units
    img = np.clip(0.5 - sd / (2 * aa), 0, 1) * rng.uniform(0.6, 1.0)
    img += rng.normal(0, rng.uniform(*noise), img.shape)
    return img


def render_shapes(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` random shapes (balanced classes) as ``[n, size, size]`` float images."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(SHAPE_CLASSES)
    rng.shuffle(labels)
    out = np.empty((n, size, size), np.float32)
    for i, c in enumerate(labels):
        out[i] = _shape_image(rng, c, size, (0.02, 0.15))
    return out, labels


def _shapes():
    x_tr, y_tr = render_shapes(2000, seed=0)
    x_te, y_te = render_shapes(500, seed=1)
    return x_tr, y_tr, x_te, y_te


# ---------------------------------------------------------------------------------------------
# image sets: raw images in [0, 1] by index (what the INR zoos fit, one INR per image)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageSet:
    """A set of labelled single-channel images, addressed by index; image ``i`` is a pure function of
    ``(seed, i)`` (``digits`` ignores the seed: it is a fixed set).

    Args:
        name: registry name.
        size: image side in pixels.
        count: number of images (``None``: unbounded, procedural).
        render: ``(indices [n] int64, seed) -> (images [n, size, size] float32 in [0, 1], labels [n] int64)``.
        description: one line for docs and ``zoo.json``.
    """

    name: str
    size: int
    count: int | None
    render: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
    description: str


@lru_cache(maxsize=None)
def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, np.asarray(d.target, np.int64)   # [1797, 8, 8] in [0, 1]


def _render_digits(idx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _digit_images()
    return x[idx], y[idx]


def _render_shapes28(idx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    labels = idx % len(SHAPE_CLASSES)
    out = np.empty((len(idx), 28, 28), np.float32)
    for j, (i, c) in enumerate(zip(idx, labels)):
        out[j] = _shape_image(np.random.default_rng([int(seed), int(i)]), int(c), 28, (0.0, 0.02))
    return np.clip(out, 0.0, 1.0), labels


def _render_glyphs(idx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from neuralgraph.zoo.glyphs import render_glyphs

    return render_glyphs(idx, seed, 28)


IMAGE_SETS: dict[str, ImageSet] = {
    "digits": ImageSet("digits", 8, 1797, _render_digits,
                       "sklearn load_digits, 8x8 real handwriting, 1,797 images (index = sklearn order)"),
    "glyphs": ImageSet("glyphs", 28, None, _render_glyphs,
                       "digits 0-9 from 21 matplotlib fonts with affine / stroke / contrast / noise jitter, "
                       "28x28, label = index % 10"),
    "shapes": ImageSet("shapes", 28, None, _render_shapes28,
                       "the 10 procedural shapes at 28x28, noise std <= 0.02, label = index % 10"),
}


def load_images(name: str, indices, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images ``indices`` of the image set ``name`` (see :data:`IMAGE_SETS`).

    Returns:
        images ``[n, size, size]`` float32 in [0, 1] and labels ``[n]`` int64.

    Raises:
        ValueError: unknown set (listing the known ones), or an index outside a finite set.
    """
    if name not in IMAGE_SETS:
        raise ValueError(f"unknown image set {name!r}; choose from {sorted(IMAGE_SETS)}")
    s = IMAGE_SETS[name]
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or (s.count is not None and idx.max() >= s.count)):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise ValueError(f"image set {name!r} has images 0..{s.count - 1}; got index {bad}" if s.count is not None
                         else f"image indices must be non-negative, got {bad}")
    return s.render(idx, int(seed))
