"""Vectorised numpy renderer: scenes -> uint8 RGB images, exactly as the spec draws them.

Each object is rasterised in a local MAX_SIZE x MAX_SIZE window (pixel centres at +0.5),
then scattered into a label map; labels index a palette. No overlap means no z-order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from world.scene import Scene
from world.spec import BACKGROUND, CANVAS, COLOR_NAMES, COLORS, MAX_SIZE, SHAPES

PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.uint8)  # label 0 = background
_SHAPE_INDEX = {s: i for i, s in enumerate(SHAPES)}
_COLOR_LABEL = {c: i + 1 for i, c in enumerate(COLOR_NAMES)}
_LOCAL = np.arange(MAX_SIZE, dtype=np.float32) + 0.5


def object_masks(shape_idx: np.ndarray, size: np.ndarray) -> np.ndarray:
    """(M,) shape indices and sizes -> (M, MAX_SIZE, MAX_SIZE) boolean masks, top-left aligned."""
    s = size.astype(np.float32)[:, None, None]
    r = s / 2
    lx, ly = _LOCAL[None, None, :], _LOCAL[None, :, None]
    in_box = (lx < s) & (ly < s)
    dx, dy = lx - r, ly - r
    circle = dx * dx + dy * dy <= r * r
    triangle = in_box & (np.abs(dx) <= (ly / s) * r)
    kind = shape_idx[:, None, None]
    return np.where(kind == 0, circle, np.where(kind == 1, in_box, triangle))


def label_maps(scenes: Sequence[Scene]) -> np.ndarray:
    """(N, 64, 64) uint8 maps: 0 for background, 1 + colour index for a shape pixel."""
    rows = [(n, _SHAPE_INDEX[o.shape], _COLOR_LABEL[o.color], o.x, o.y, o.size)
            for n, scene in enumerate(scenes) for o in scene.objects]
    labels = np.zeros((len(scenes), CANVAS, CANVAS), dtype=np.uint8)
    if not rows:
        return labels
    n, shape, color, x, y, size = np.array(rows, dtype=np.int64).T
    m, ly, lx = np.nonzero(object_masks(shape, size))
    labels[n[m], y[m] + ly, x[m] + lx] = color[m]
    return labels


def render(scenes: Sequence[Scene]) -> np.ndarray:
    """(N, 64, 64, 3) uint8 RGB images."""
    return PALETTE[label_maps(scenes)]


def render_one(scene: Scene) -> np.ndarray:
    return render([scene])[0]


def degrade(image: np.ndarray, rng: np.random.Generator, blur: float = 0.8, noise: float = 20.0) -> np.ndarray:
    """Gaussian blur (sigma, pixels) then Gaussian pixel noise: how a generated image may look.
    For testing the parser and augmenting critic data, never for a model's inference."""
    from scipy import ndimage

    f = image.astype(np.float32)
    if blur > 0:
        f = ndimage.gaussian_filter(f, sigma=(blur, blur, 0))
    f += rng.normal(0.0, noise, f.shape)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)
