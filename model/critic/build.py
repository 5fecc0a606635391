"""The critic, built from transformers classes only, so that it saves, loads and generates like
any LLaVA checkpoint: a CLIP vision tower, a two-layer projector and a Llama language model.

It reads `<bos><user><image>PROMPT<critic>` and writes the reflection of policies/critique.py,
then `<eos>`. The image becomes 64 tokens, one per 8x8 patch (the tower's CLS token is dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from model.critic.tokenizer import CRITIC_TOKEN, IMAGE_TOKEN, build_tokenizer
from model.shapeworld.config import Strict
from world.spec import CANVAS

IGNORE = -100  # label of a token the loss skips
# `content` is a string or a list of {"type": "image"} / {"type": "text", "text": ...} parts.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}<user>{% else %}<critic>{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] != 'user' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<critic>{% endif %}"
)


class VisionTower(Strict):
    hidden: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(256, ge=8)
    patch_size: int = Field(8, ge=1)
    image_size: int = Field(CANVAS, ge=8)


class LanguageModel(Strict):
    hidden: int = Field(128, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(256, ge=8)
    max_positions: int = Field(256, ge=16)  # image tokens + prompt + reflection


class CriticConfig(Strict):
    vision: VisionTower = VisionTower()
    text: LanguageModel = LanguageModel()

    @property
    def image_tokens(self) -> int:
        return (self.vision.image_size // self.vision.patch_size) ** 2


def build_processor(cfg: CriticConfig) -> LlavaProcessor:
    """Images are used at their size (64x64: resize and crop are identities) and scaled to [-1, 1]
    (mean = std = 0.5), as the generator sees them: the tower learns from scratch, so CLIP's
    natural-image statistics would mean nothing here."""
    side = cfg.vision.image_size
    images = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}, image_mean=[0.5] * 3,
        image_std=[0.5] * 3)
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = cfg.text.max_positions
    # (side / patch)^2 patches + CLS, minus CLS ("default" strategy): one <image> per patch
    return LlavaProcessor(
        image_processor=images, tokenizer=tokenizer, patch_size=cfg.vision.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)


def build_critic(cfg: CriticConfig | None = None) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A fresh (untrained) critic and its processor."""
    cfg = cfg or CriticConfig()
    if cfg.vision.image_size % cfg.vision.patch_size:
        raise ValueError(f"image size {cfg.vision.image_size} is not a multiple of patch size {cfg.vision.patch_size}")
    processor = build_processor(cfg)
    tok = processor.tokenizer
    v, t = cfg.vision, cfg.text
    vision = CLIPVisionConfig(
        hidden_size=v.hidden, intermediate_size=v.intermediate, num_hidden_layers=v.layers,
        num_attention_heads=v.heads, patch_size=v.patch_size, image_size=v.image_size, num_channels=3)
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=t.hidden, intermediate_size=t.intermediate, num_hidden_layers=t.layers,
        num_attention_heads=t.heads, num_key_value_heads=t.heads, max_position_embeddings=t.max_positions,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=cfg.image_tokens, vision_feature_select_strategy="default",
        vision_feature_layer=-1)  # the last layer: with two, LLaVA's -2 would leave one unused
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, processor


def critic_inputs(
    processor: LlavaProcessor,
    prompts: Sequence[str],
    images: np.ndarray | Sequence[np.ndarray],
    reflections: Sequence[str] | None = None,
) -> BatchFeature:
    """One batch from prompts and uint8 (H, W, 3) images. With reflections, for training: right
    padding, and `labels` supervise only what the critic writes (the reflection and its <eos>).
    Without, for `generate`: the chat ends at <critic> and rows are left-padded, so that every
    row's next token comes right after its prompt."""
    images = list(images)
    if len(images) != len(prompts) or (reflections is not None and len(reflections) != len(prompts)):
        raise ValueError(f"{len(prompts)} prompts, {len(images)} images"
                         + (f", {len(reflections)} reflections" if reflections is not None else ""))
    training = reflections is not None
    chats = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}] for p in prompts]
    if training:
        chats = [c + [{"role": "assistant", "content": [{"type": "text", "text": r}]}]
                 for c, r in zip(chats, reflections)]
    texts = processor.apply_chat_template(chats, add_generation_prompt=not training, tokenize=False)
    batch = processor(images=images, text=texts, padding=True, padding_side="right" if training else "left",
                      return_tensors="pt")
    limit = processor.tokenizer.model_max_length
    if batch["input_ids"].shape[1] > limit:
        raise ValueError(f"a row has {batch['input_ids'].shape[1]} tokens, more than the critic's {limit}")
    if training:
        batch["labels"] = reflection_labels(batch["input_ids"], batch["attention_mask"],
                                            processor.tokenizer.convert_tokens_to_ids(CRITIC_TOKEN))
    return batch


def reflection_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, critic_id: int) -> torch.Tensor:
    """The input ids after each row's <critic> token (padding excluded); IGNORE elsewhere."""
    after = (input_ids == critic_id).long().cumsum(dim=1) > 0
    keep = after & (input_ids != critic_id) & attention_mask.bool()
    return torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE))


def load_critic(path: str | Path) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A critic saved with `save_pretrained` (model and processor in one folder); never downloads."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no critic at {path}: config.json is missing")
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    return model, processor
