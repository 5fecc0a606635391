"""Fresh (untrained) components of the ShapeWorld pipeline, from a GeneratorConfig."""

from __future__ import annotations

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from transformers import CLIPTextConfig, CLIPTextModel

from model.shapeworld.config import GeneratorConfig
from model.shapeworld.pipeline import ShapeWorldPipeline
from model.shapeworld.tokenizer import MAX_LENGTH, build_tokenizer
from model.shapeworld.transformer import ShapeWorldTransformer
from world.spec import CANVAS


def build_vae(cfg: GeneratorConfig) -> AutoencoderKL:
    v = cfg.vae
    n = len(v.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=v.latent_channels, sample_size=CANVAS,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=v.block_out_channels, layers_per_block=v.layers_per_block,
        norm_num_groups=8, mid_block_add_attention=False,  # flat shapes need no attention to reconstruct
    )


def build_pipeline(cfg: GeneratorConfig, vae: AutoencoderKL | None = None) -> ShapeWorldPipeline:
    d = cfg.denoiser
    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=d.text_hidden, intermediate_size=2 * d.text_hidden,
        num_hidden_layers=d.text_layers, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, projection_dim=d.text_hidden))
    vae = vae or build_vae(cfg)
    latent_size = CANVAS // 2 ** (len(cfg.vae.block_out_channels) - 1)
    inner = d.heads * d.head_dim
    transformer = ShapeWorldTransformer(
        num_attention_heads=d.heads, attention_head_dim=d.head_dim,
        in_channels=2 * cfg.vae.latent_channels, out_channels=cfg.vae.latent_channels,  # noisy + source latents
        num_layers=d.num_layers, norm_num_groups=32, cross_attention_dim=inner, caption_channels=d.text_hidden,
        sample_size=latent_size, patch_size=d.patch_size, use_additional_conditions=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=d.shift)
    return ShapeWorldPipeline(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler)
