import numpy as np
import pytest
from scipy import ndimage


def degrade(image: np.ndarray, rng: np.random.Generator, blur: float = 0.8, noise: float = 20.0) -> np.ndarray:
    """Gaussian blur (sigma in pixels) then Gaussian pixel noise, as a generated image might look."""
    f = ndimage.gaussian_filter(image.astype(np.float32), sigma=(blur, blur, 0))
    f += rng.normal(0.0, noise, f.shape)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
