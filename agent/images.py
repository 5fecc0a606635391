"""A run's images: content-addressed PNGs under RUN/images/ab/abcd....png.

The name is the sha256 of the shape and the raw pixel bytes (not of the PNG bytes, which change
with the zlib or pillow version), so the same pixels always get the same path and a second put
writes nothing. Paths handed back by readers are checked to stay inside the run."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
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


class RecentImages:
    """The images this process wrote last, by path, up to `budget` bytes: a session reads its image
    back at once (the verifier, then the critic or the editor), and 32 sessions decoding PNGs they
    had just encoded held the model up between batches (measured in `refloop bench --perf`).
    Safe to share: a path names its pixels, and the arrays handed out are read-only."""

    def __init__(self, budget: int = 32 << 20):
        self.budget, self.size = budget, 0
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, rel: str, image: np.ndarray) -> None:
        pixels = image.copy()
        pixels.flags.writeable = False
        with self._lock:
            if rel in self._images or pixels.nbytes > self.budget:
                return
            self._images[rel], self.size = pixels, self.size + pixels.nbytes
            while self.size > self.budget:
                self.size -= self._images.popitem(last=False)[1].nbytes

    def get(self, rel: str) -> np.ndarray | None:
        with self._lock:
            image = self._images.get(rel)
            if image is not None:
                self._images.move_to_end(rel)
            return image
