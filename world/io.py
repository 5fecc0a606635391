"""PNG files in and out: atomic writes, strict reads with messages a user can act on."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from world.spec import CANVAS


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB uint8 array as PNG via a temp file + rename, so no half-written file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # not mkstemp: its mode 0o600 would leave the image unreadable to others; 0o666 minus the umask
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB").save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_png(path: str | Path, size: int | None = CANVAS) -> np.ndarray:
    """Read an image as (H, W, 3) uint8; transparency is composited on white."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such image file: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            image = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read {path} as an image: {e}") from None
    if size is not None and image.shape[:2] != (size, size):
        raise ValueError(f"{path} is {image.shape[1]}x{image.shape[0]}; ShapeWorld images are {size}x{size}")
    return image


def grid(images: np.ndarray, gap: int = 2, fill: int = 200) -> np.ndarray:
    """Tile (N, H, W, 3) images in a near-square grid with grey gaps."""
    n, h, w, _ = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), fill, dtype=np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = img
    return out
