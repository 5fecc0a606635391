"""Tiny random checkpoints of real architectures (Stable Diffusion, InstructPix2Pix, FLUX.1 Kontext,
LLaVA), built from the libraries' own classes and saved to a folder: what tests load through the
backends and serve with `transformers serve`. Nothing is downloaded; pixels and words mean nothing."""

from __future__ import annotations

import string
from pathlib import Path

import torch

CHARS = list(string.ascii_letters + string.digits + ".,;:'\"!?()|-\n")


def clip_tokenizer():
    """A character-level CLIP BPE (no merges), written by save_pretrained like any CLIP tokenizer."""
    from transformers import CLIPTokenizer

    lower = [c for c in CHARS if not c.isupper()]
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + lower + [c + "</w>" for c in lower])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def clip_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def vae(latent_channels: int, **kwargs):
    """Two blocks: an 8x smaller latent in real checkpoints, 2x here."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels,
                         norm_num_groups=4, layers_per_block=1, sample_size=32, **kwargs)


def stable_diffusion(folder: Path, instruct_pix2pix: bool) -> Path:
    """A Stable Diffusion 1.x layout; InstructPix2Pix's UNet also reads the source latents (8 channels)."""
    from diffusers import (
        DDIMScheduler,
        StableDiffusionInstructPix2PixPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=8 if instruct_pix2pix else 4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, cross_attention_dim=32, attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    cls = StableDiffusionInstructPix2PixPipeline if instruct_pix2pix else StableDiffusionPipeline
    pipe = cls(vae=vae(4), text_encoder=clip_text_encoder(tokenizer), tokenizer=tokenizer, unet=unet,
               scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def t5_tokenizer():
    """A character-level unigram T5 tokenizer."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    return T5Tokenizer(vocab=pieces + [(c, -1.0) for c in CHARS] + [("\u2581" + c, -1.0) for c in CHARS], extra_ids=0)


def flux_kontext(folder: Path) -> Path:
    """FLUX.1 Kontext's layout: a 16-channel VAE, CLIP + T5 text encoders, the Flux transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=1,
                                 num_heads=4, relative_attention_num_buckets=8))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=True)
    autoencoder = vae(16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=autoencoder,
        text_encoder=clip_text_encoder(tokenizer), tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tokenizer_2,
        transformer=transformer)
    pipe.save_pretrained(folder)
    return folder


LLAVA_TEMPLATE = (  # llava-1.5's: USER: <image>\n{text} ASSISTANT:
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def llama_tokenizer():
    """A Llama BPE over characters, with merges that make a few whole-word tokens (yes/no among them)."""
    from transformers import LlamaTokenizer

    merges, words = [], []
    for word in ["\u2581Yes", "\u2581yes", "\u2581No", "\u2581no", "\u2581USER", "\u2581ASSISTANT"]:
        for i in range(2, len(word) + 1):
            if word[:i] not in words:
                merges.append((word[:i - 1], word[i - 1]))
                words.append(word[:i])
    tokens = dict.fromkeys(["<unk>", "<s>", "</s>", "<image>", "\u2581"] + CHARS + words)
    return LlamaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                          extra_special_tokens={"image_token": "<image>"})


def llava(folder: Path) -> Path:
    """LLaVA-1.5's layout: a CLIP vision tower, a projector, a Llama language model."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(0)
    tokenizer = llama_tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id, image_seq_length=16,
        vision_feature_select_strategy="default", vision_feature_layer=-1))
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
