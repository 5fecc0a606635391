"""Image -> objects, per the spec's "Parsing an image"; refuses to guess.

1. Colour: each pixel is read as a blend of white and one palette colour (blur and
   anti-aliasing only ever mix a shape with the background). It takes the colour whose
   white->colour line passes nearest; it is background when less than half of that colour
   is in it, and unknown when no line passes near.
2. Components: 4-connected components of shape pixels; under NOISE_AREA pixels is noise.
   A component takes the colour of its mean solid pixel (per-pixel votes confuse orange and
   yellow under noise); one whose pixels do not mostly agree is two objects touching.
3. Shape: fill ratio in the bounding box and the share of area in the box's upper half
   (a triangle, apex up, has about a quarter there; a circle or square a half). A
   component that fits no shape, or an unknown-colour blob, is reported as unreadable.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import ndimage

from world.spec import BACKGROUND, CANVAS, COLOR_NAMES, COLORS, NOISE_AREA, Color, Shape

_WHITE = np.array(BACKGROUND, dtype=np.float32)
_DIRS = np.array(list(COLORS.values()), dtype=np.float32) - _WHITE  # (6, 3) white -> colour
_DIRS_SQ = (_DIRS**2).sum(1)
UNKNOWN_DISTANCE = 90.0  # RGB distance from every white->colour line
MIN_ALPHA = 0.5  # share of colour for a pixel to belong to a shape
_BACKGROUND, _UNKNOWN = -1, -2
_OPEN = np.ones((3, 3), dtype=bool)  # removes 1-pixel spurs, keeps square corners
CORE_ALPHA = 0.8  # pixels this solid decide a component's colour
MAX_MEAN_RESIDUAL = 35.0  # a component's mean solid colour must lie this close to a palette line
MIN_PURITY = 0.6  # below this share of one colour, a component is two objects touching

# Per shape: fill ratio in the bbox, share of area in the bbox's upper half, longest bbox
# side. Measured on rendered scenes under blur and noise (tests/test_parse.py); the gaps
# between shapes are "unreadable" on purpose. Blur erodes a small triangle's corners until
# it is squat and round-ish, but never below 8 pixels, and a circle never below 11.
SHAPE_RULES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[int, int]]] = {
    "square": ((0.91, 1.01), (0.44, 0.56), (11, 23)),
    "circle": ((0.70, 0.89), (0.44, 0.56), (11, 23)),
    "triangle": ((0.50, 0.87), (0.20, 0.42), (8, 23)),
}
ASPECT_RANGE = (0.7, 1.35)  # bbox width / height


class ParsedObject(BaseModel):
    model_config = ConfigDict(frozen=True)

    shape: Shape
    color: Color
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 end-exclusive
    centroid: tuple[float, float]
    area: int | None = None  # pixels; None for an object read off a scene, not an image

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


class Blob(BaseModel):
    """A region that is not background and fits no shape: it makes every prompt fail."""

    model_config = ConfigDict(frozen=True)

    color: str  # a palette name or "unknown"
    box: tuple[int, int, int, int]
    area: int | None = None  # pixels; None for an object read off a scene, not an image
    why: str

    @property
    def description(self) -> str:
        cx, cy = (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2
        what = "a region of unknown colour" if self.color == "unknown" else f"a {self.color} region"
        return f"{what} near ({cx:.0f}, {cy:.0f}) that is no shape ({self.why})"


class ParsedImage(BaseModel):
    objects: tuple[ParsedObject, ...]
    blobs: tuple[Blob, ...]


def _lines(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., 3) float pixels minus white -> nearest white->colour line: index, alpha, residual."""
    alpha = np.clip(pixels @ _DIRS.T / _DIRS_SQ, 0.0, 1.0)  # (..., 6) share of each colour
    residual = np.linalg.norm(pixels[..., None, :] - alpha[..., None] * _DIRS, axis=-1)
    best = residual.argmin(-1)
    return best, np.take_along_axis(alpha, best[..., None], -1)[..., 0], residual.min(-1)


def color_labels(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int: palette index, -1 background, -2 unknown (per pixel)."""
    best, alpha, residual = _lines(image.astype(np.float32) - _WHITE)
    labels = np.where(alpha >= MIN_ALPHA, best, _BACKGROUND)
    return np.where(residual > UNKNOWN_DISTANCE, _UNKNOWN, labels)


def classify(mask: np.ndarray) -> tuple[str | None, str]:
    """A component's mask cropped to its bbox -> (shape or None, why not)."""
    h, w = mask.shape
    area = int(mask.sum())
    fill = area / (h * w)
    upper = mask[: h // 2].sum() + (mask[h // 2].sum() / 2 if h % 2 else 0)
    upper_share = float(upper) / area
    aspect = w / h
    if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
        return None, f"aspect {aspect:.2f}"
    for shape, ((f0, f1), (u0, u1), (s0, s1)) in SHAPE_RULES.items():
        if f0 <= fill < f1 and u0 <= upper_share <= u1 and s0 <= max(h, w) <= s1:
            return shape, ""
    return None, f"size {w}x{h}, fill {fill:.2f}, upper share {upper_share:.2f}"


def parse_image(image: np.ndarray) -> ParsedImage:
    """Read every object of a 64x64 RGB uint8 image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != (CANVAS, CANVAS):
        raise ValueError(f"expected a {CANVAS}x{CANVAS} RGB image, got shape {image.shape}")
    pixels = image.astype(np.float32) - _WHITE
    labels = color_labels(image)
    # Shape pixels of any colour, without 1-pixel spurs that noise grows on edges.
    foreground = ndimage.binary_opening(labels >= 0, _OPEN)
    objects, blobs = [], []
    for mask, box in _components(foreground):
        color_index, purity = _component_color(pixels[box_slice(box)][mask], labels[box_slice(box)][mask])
        name = COLOR_NAMES[color_index] if color_index >= 0 else "unknown"
        shape, why = classify(mask)
        if color_index < 0:
            shape, why = None, "no palette colour"
        elif purity < MIN_PURITY:
            shape, why = None, f"mixed colours ({purity:.0%} {name})"
        if shape is None:
            blobs.append(Blob(color=name, box=box, area=int(mask.sum()), why=why))
            continue
        ys, xs = np.nonzero(mask)
        centroid = (float(xs.mean() + 0.5 + box[0]), float(ys.mean() + 0.5 + box[1]))
        objects.append(ParsedObject(shape=shape, color=name, box=box, centroid=centroid, area=int(mask.sum())))
    for mask, box in _components(labels == _UNKNOWN):
        blobs.append(Blob(color="unknown", box=box, area=int(mask.sum()), why="no palette colour"))
    objects.sort(key=lambda o: (o.box[1], o.box[0]))
    return ParsedImage(objects=tuple(objects), blobs=tuple(blobs))


def box_slice(box: tuple[int, int, int, int]) -> tuple[slice, slice]:
    return slice(box[1], box[3]), slice(box[0], box[2])


def _components(mask: np.ndarray):
    """Yield (cropped mask, box) of each 4-connected component of at least NOISE_AREA pixels."""
    comps, _ = ndimage.label(mask)
    for k, sl in enumerate(ndimage.find_objects(comps), start=1):
        crop = comps[sl] == k
        if crop.sum() >= NOISE_AREA:
            yield crop, (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)


def _component_color(pixels: np.ndarray, labels: np.ndarray) -> tuple[int, float]:
    """One colour for a component: the line nearest the mean of its solid pixels (noise averages
    out there), and the share of its pixels that vote for that colour on their own.
    -1 when even the mean is far from every line (grey, brown, ...: no palette colour)."""
    _, alpha, _ = _lines(pixels)
    core = pixels[alpha >= CORE_ALPHA] if (alpha >= CORE_ALPHA).sum() >= NOISE_AREA // 2 else pixels
    index, _, residual = _lines(core.mean(0))
    if residual > MAX_MEAN_RESIDUAL:
        return -1, 0.0
    votes = labels[labels >= 0]
    return int(index), float((votes == index).mean()) if votes.size else 0.0


def same_objects(scene, parsed: ParsedImage, tolerance: float = 1.0) -> bool:
    """Did parsing recover exactly the scene's objects (shape, colour, centroid within
    `tolerance` px), and nothing else?"""
    if parsed.blobs or len(parsed.objects) != len(scene.objects):
        return False
    left = list(parsed.objects)
    for o in scene.objects:
        cx, cy = o.centroid
        match = [p for p in left if p.shape == o.shape and p.color == o.color
                 and abs(p.centroid[0] - cx) <= tolerance and abs(p.centroid[1] - cy) <= tolerance]
        if not match:
            return False
        left.remove(match[0])
    return True
