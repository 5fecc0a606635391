"""ShapeWorldPipeline: one flow-matching model that generates from text and edits from
(image, instruction), as OmniGen2's unified generator does.

Editing is InstructPix2Pix-style: the source image's latent is concatenated to the noisy
latent; text-to-image passes zeros there. Guidance is batched in one forward per step:
v = v(0, 0) + s_img * (v(src, 0) - v(0, 0)) + s_txt * (v(src, text) - v(src, 0)); for a
text-to-image row the middle term vanishes and this is plain classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

from model.shapeworld.transformer import ShapeWorldTransformer

# Measured on dev with the shipped weights: guidance 1.0 / 1.5 / 2.0 / 4.0 all small, and 4.0
# erases single objects (the unconditional mean has more ink than one shape; see README).
DEFAULT_GUIDANCE = 1.5


class ShapeWorldPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(
        self,
        transformer: ShapeWorldTransformer,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerFast,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        super().__init__()
        self.register_modules(
            transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    # -- encoders -------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(list(texts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").to(self.device)
        hidden = self.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return hidden, tokens.attention_mask

    def encode_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised latents (B, C, h, w), deterministic (the posterior mode)."""
        x = images_to_tensor(images, self.device, self.vae.dtype)
        z = self.vae.encode(x).latent_dist.mode()
        return (z - (self.vae.config.shift_factor or 0.0)) * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        z = latents / self.vae.config.scaling_factor + (self.vae.config.shift_factor or 0.0)
        x = self.vae.decode(z.to(self.vae.dtype)).sample
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def velocity(self, noisy: torch.Tensor, source: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                 sigma: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction of (noise - clean latent) at noise level sigma in [0, 1]."""
        return self.transformer(
            torch.cat([noisy, source], dim=1), encoder_hidden_states=text, encoder_attention_mask=mask,
            timestep=sigma * 1000, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        ).sample

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.vae.config.latent_channels, self.transformer.config.sample_size, self.transformer.config.sample_size

    # -- sampling -------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str],
        image: np.ndarray | Sequence[np.ndarray | None] | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = DEFAULT_GUIDANCE,
        image_guidance_scale: float = 1.5,
        seed: int | Sequence[int] = 0,
        output_type: str = "np",
    ) -> ImagePipelineOutput:
        """Generate (image None) or edit (image given, prompt = instruction), many at once.
        Each row's noise comes from its own seed, so a row's result does not depend on what
        it is batched with."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n = len(prompts)
        sources = _as_sources(image, n)
        seeds = [seed + i for i in range(n)] if isinstance(seed, int) else list(seed)
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} prompts")
        c, h, w = self.latent_shape
        zeros = torch.zeros((n, c, h, w), device=self.device)
        source = zeros.clone()
        has_source = [i for i, s in enumerate(sources) if s is not None]
        if has_source:
            source[has_source] = self.encode_images(np.stack([sources[i] for i in has_source])).float()
        text, mask = self.encode_text(prompts)
        empty, empty_mask = self.encode_text([""] * n)
        editing = bool(has_source)
        # batched guidance: [cond (src, text), image-only (src, none), uncond (none, none)]
        src_in = torch.cat([source, source, zeros] if editing else [source, zeros])
        text_in = torch.cat([text, empty, empty] if editing else [text, empty])
        mask_in = torch.cat([mask, empty_mask, empty_mask] if editing else [mask, empty_mask])
        latents = torch.cat([
            randn_tensor((1, c, h, w), generator=torch.Generator("cpu").manual_seed(int(s)), device=self.device)
            for s in seeds])
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            sigma = (t / self.scheduler.config.num_train_timesteps).expand(len(src_in))
            with self.transformer.cache_context("guidance", step_index=i, num_inference_steps=num_inference_steps,
                                                timestep=t, sigma=float(sigma[0])):
                v = self.velocity(torch.cat([latents] * (3 if editing else 2)), src_in, text_in, mask_in, sigma)
            if editing:
                v_cond, v_img, v_none = v.chunk(3)
                v = v_none + image_guidance_scale * (v_img - v_none) + guidance_scale * (v_cond - v_img)
            else:
                v_cond, v_none = v.chunk(2)
                v = v_none + guidance_scale * (v_cond - v_none)
            latents = self.scheduler.step(v, t, latents).prev_sample
        self.maybe_free_model_hooks()  # also resets stateful caches between calls
        images = self.decode_latents(latents)
        return ImagePipelineOutput(images=self.numpy_to_pil(images) if output_type == "pil" else images)


def images_to_tensor(images: np.ndarray | torch.Tensor, device, dtype) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got shape {tuple(x.shape)}")
    return (x.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1).to(dtype)


def _as_sources(image, n: int) -> list[np.ndarray | None]:
    if image is None:
        return [None] * n
    if isinstance(image, np.ndarray) and image.ndim == 3:
        image = [image]
    sources = list(image)
    if len(sources) != n:
        raise ValueError(f"{len(sources)} source images for {n} instructions")
    return sources


DEFAULT_GENERATOR = Path(__file__).parent / "weights" / "generator"


def load_generator(path: str | Path | None = None, device: str | torch.device = "cpu") -> ShapeWorldPipeline:
    """The shipped generator by default, or any folder written by `save_pretrained`."""
    path = Path(path) if path is not None else DEFAULT_GENERATOR
    if not (path / "model_index.json").is_file():
        hint = " (train one: refloop world train generator)" if path == DEFAULT_GENERATOR else ""
        raise FileNotFoundError(f"no ShapeWorld generator at {path}: model_index.json is missing{hint}")
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    pipe = ShapeWorldPipeline.from_pretrained(path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


CACHES = ("none", "first_block", "taylorseer")


def enable_cache(pipe: ShapeWorldPipeline, kind: str = "first_block", threshold: float = 0.1) -> None:
    """Reuse transformer work across denoising steps with a diffusers cache hook.
    first_block: skip the remaining blocks when the first block's residual barely changed.
    taylorseer: predict block outputs from a Taylor expansion between full computations."""
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if getattr(pipe.transformer, "is_cache_enabled", False):
        pipe.transformer.disable_cache()
    if kind == "none":
        return
    if kind == "first_block":
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    elif kind == "taylorseer":
        pipe.transformer.enable_cache(TaylorSeerCacheConfig(
            cache_interval=2, disable_cache_before_step=2, cache_identifiers=[r"transformer_blocks\.\d+"],
            taylor_factors_dtype=torch.float32))
    else:
        raise ValueError(f"unknown cache {kind!r}; choose from {', '.join(CACHES)}")
