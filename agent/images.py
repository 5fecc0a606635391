"""A run's images: content-addressed PNGs under RUN/images/ab/abcd....png.

The name is the sha256 of the shape and the raw pixel bytes (not of the PNG bytes, which change
with the zlib or pillow version), so the same pixels always get the same path and a second put
writes nothing. Paths handed back by readers are checked to stay inside the run."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from agent.files import StoreError, atomic_write


def check_image_array(image) -> None:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise StoreError(f"put_image wants an (H, W, 3) uint8 array, got {getattr(image, 'shape', type(image))} "
                         f"{getattr(image, 'dtype', '')}")


def put_png(root: Path, image: np.ndarray) -> str:
    """Write `image` (checked by check_image_array) once; its run-relative path."""
    pixels = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}x3:".encode() + pixels.tobytes()).hexdigest()
    rel = f"images/{digest[:2]}/{digest}.png"
    path = root / rel
    if not path.exists():
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, format="PNG")
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, buf.getvalue())
    return rel


def image_path(root: Path, rel: str) -> Path:
    """The absolute path of a run-relative image path; refuses anything outside the run."""
    p = PurePosixPath(rel) if isinstance(rel, str) else None
    if p is None or not rel or "\\" in rel or p.is_absolute() or ".." in p.parts:
        raise StoreError(f"image path {rel!r} must be relative to the run, without '..'")
    path = (root / p).resolve()
    if not path.is_relative_to(root.resolve()):  # a symlink pointing out of the run
        raise StoreError(f"image path {rel!r} leads outside the run {root}")
    return path


def load_png(root: Path, rel: str) -> np.ndarray:
    path = image_path(root, rel)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise StoreError(f"no image {rel!r} in run {root}") from None
    except OSError as e:
        raise StoreError(f"cannot read image {path}: {e}") from e
