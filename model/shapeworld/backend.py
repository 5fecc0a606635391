"""The embedded generator/editor behind the Generator and Editor roles."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from model.shapeworld.pipeline import CACHES, DEFAULT_GENERATOR, DEFAULT_GUIDANCE, enable_cache, load_generator


class ShapeWorldImageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = None  # None: the shipped weights
    device: str = "cpu"
    steps: int = 20
    guidance: float = DEFAULT_GUIDANCE
    image_guidance: float = 1.5
    cache: str = "none"
    cache_threshold: float = 0.1


class ShapeWorldImageModel:
    """One pipeline, two roles: text-to-image and (image, instruction) -> image. The two roles'
    workers run in threads; a diffusers pipeline (its scheduler state) is not re-entrant, so
    calls take turns."""

    def __init__(self, cfg: ShapeWorldImageConfig):
        if cfg.cache not in CACHES:
            raise ValueError(f"unknown cache {cfg.cache!r}; choose from {', '.join(CACHES)}")
        self.cfg = cfg
        self.path = Path(cfg.path) if cfg.path else DEFAULT_GENERATOR
        self.pipe = load_generator(self.path, torch.device(cfg.device))
        enable_cache(self.pipe, cfg.cache, cfg.cache_threshold)
        self._lock = threading.Lock()

    def _run(self, texts: list[str], seeds: list[int], images: list[np.ndarray] | None) -> list[np.ndarray]:
        with self._lock:
            out = self.pipe(texts, image=images, seed=seeds, num_inference_steps=self.cfg.steps,
                            guidance_scale=self.cfg.guidance, image_guidance_scale=self.cfg.image_guidance)
        return list(out.images)

    def generate(self, prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        return self._run(prompts, seeds, None)

    def edit(self, images: list[np.ndarray], instructions: list[str], seeds: list[int]) -> list[np.ndarray]:
        return self._run(instructions, seeds, images)
