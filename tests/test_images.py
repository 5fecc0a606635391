"""A run's images (agent/images.py, through the store): content-addressed, idempotent, confined to the run."""

import numpy as np
import pytest

import agent.images as images_mod
from agent.store import RunStore, StoreError
from tests.test_store import manifest


def image(rng, h=8, w=8) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def store(tmp_path):
    return RunStore.create(tmp_path / "run", manifest())


def test_put_image_is_content_addressed_and_idempotent(store, rng, monkeypatch):
    img = image(rng)
    rel = store.put_image(img)
    digest = rel.split("/")[-1][:-4]
    assert rel == f"images/{digest[:2]}/{digest}.png" and len(digest) == 64
    assert np.array_equal(store.load_image(rel), img)
    writes = []
    monkeypatch.setattr(images_mod, "atomic_write", lambda *a: writes.append(a))
    assert store.put_image(img.copy()) == rel and writes == []  # same pixels: same path, nothing rewritten
    assert store.put_image(img[:, ::-1]) != rel and len(writes) == 1  # a non-contiguous view of other pixels
    flat = img.reshape(4, 16, 3)  # same bytes, other shape
    monkeypatch.undo()
    assert store.put_image(flat) != rel
    assert store.image_path(rel) == store.root / rel


def test_put_image_refuses_what_is_not_rgb_uint8(store):
    for bad in [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), [1]]:
        with pytest.raises(StoreError, match="uint8"):
            store.put_image(bad)


def test_load_image_refuses_paths_outside_the_run(store, rng, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"x")
    for bad in ["../secret.png", "images/../../secret.png", str(secret), "/etc/passwd", "..\\secret.png"]:
        with pytest.raises(StoreError, match="relative to the run"):
            store.load_image(bad)
    (store.root / "images" / "link.png").symlink_to(secret)
    with pytest.raises(StoreError, match="leads outside the run"):
        store.load_image("images/link.png")
    with pytest.raises(StoreError, match="no image"):
        store.load_image("images/00/missing.png")


def test_a_failed_image_write_leaves_no_file(store, rng, monkeypatch):
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.put_image(image(rng))
    assert [p for p in (store.root / "images").rglob("*") if p.is_file()] == []
