"""The denoiser: diffusers' PixArt transformer with CacheMixin, so that the block caches
(FirstBlockCache, TaylorSeer, MagCache, PAB) apply through `enable_cache`."""

from diffusers import ModelMixin  # noqa: F401  (diffusers' loader looks the base class up in this module)
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.transformers import PixArtTransformer2DModel


class ShapeWorldTransformer(PixArtTransformer2DModel, CacheMixin):
    """Input: the noisy latent concatenated with the source latent (zeros for text-to-image)."""
