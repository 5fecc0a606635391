"""Training recipe of the embedded generator: one pydantic schema, read from YAML."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from model.recipe import Strict, YamlConfig, pin_config, read_yaml  # noqa: F401 - the legacy recipes import them here


class VAEConfig(Strict):
    block_out_channels: tuple[int, ...] = (16, 32, 64)  # 64x64 -> 16x16; 16 channels at full size keep it cheap
    layers_per_block: int = Field(1, ge=1)
    latent_channels: int = Field(4, ge=1)
    steps: int = Field(900, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0)
    decoder_steps: int = Field(0, ge=0)  # after the denoiser: sharpen the decoder, encoder (latent space) frozen
    decoder_lr: float = Field(5e-4, gt=0)


class DenoiserConfig(Strict):
    num_layers: int = Field(6, ge=1)
    heads: int = Field(4, ge=1)
    head_dim: int = Field(32, ge=8)
    patch_size: int = Field(2, ge=1)
    text_hidden: int = Field(128, ge=16)
    text_layers: int = Field(2, ge=1)
    steps: int = Field(20000, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0)
    warmup: int = Field(500, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    edit_share: float = Field(0.5, ge=0, le=1)  # share of each batch that is (source, instruction) -> target
    drop_text: float = Field(0.1, ge=0, le=1)  # classifier-free guidance: train without the text
    drop_source: float = Field(0.1, ge=0, le=1)  # ... and without the source image
    shift: float = Field(1.0, gt=0)  # flow-matching timestep shift (sampling too)
    # noise levels seen in training. logit_normal (SD3) rarely visits sigma near 1, where sampling
    # starts and the layout is decided: a short run then never learns it (measured: blank images)
    sigma_sampling: Literal["uniform", "logit_normal"] = "uniform"


class GeneratorConfig(YamlConfig):
    seed: int = 0
    checkpoint_every: int = Field(250, ge=1)
    vae: VAEConfig = VAEConfig()
    denoiser: DenoiserConfig = DenoiserConfig()

