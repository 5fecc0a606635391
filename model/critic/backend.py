"""The embedded critic behind the Critic role: batched greedy generation of reflections."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_CRITIC = Path(__file__).parent / "weights" / "critic"


class CriticBackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = None  # None: the shipped critic
    device: str = "cpu"
    max_new_tokens: int | None = Field(None, ge=1)  # None: as many as the critic's positions hold


class ShapeWorldCritic:
    def __init__(self, cfg: CriticBackendConfig):
        path = Path(cfg.path) if cfg.path else DEFAULT_CRITIC
        if cfg.path is None and not (path / "config.json").is_file():
            raise FileNotFoundError(f"no embedded critic at {path} yet: train one, or give a critic path in the "
                                    "run config (models.critic.path)")
        self.cfg, self.path = cfg, path
        from model.critic.build import load_critic  # the world's canvas size: only when used

        self.model, self.processor = load_critic(path)
        self.model.to(cfg.device).eval()
        self._lock = threading.Lock()  # one generate at a time (a worker thread per role)

    def room(self, input_length: int) -> int:
        """New tokens a reflection may take: what the positions leave after the input (a reflection
        cut short loses its verdict), or less when the config caps it."""
        left = self.model.config.text_config.max_position_embeddings - input_length
        if left < 1:
            raise ValueError(f"the critic's input ({input_length} tokens) fills all its positions")
        return min(left, self.cfg.max_new_tokens or left)

    @torch.inference_mode()
    def critique(self, prompts: list[str], images: list[np.ndarray], history=None) -> list[str]:
        if history is not None and any(history):
            raise ValueError("the embedded ShapeWorld critic reads one image; it takes no history")
        from model.critic.build import critic_inputs

        batch = critic_inputs(self.processor, prompts, images).to(self.cfg.device)
        with self._lock:
            out = self.model.generate(**batch, max_new_tokens=self.room(batch["input_ids"].shape[1]),
                                      do_sample=False)
        new = out[:, batch["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
