"""A learned reward model: P(the image satisfies the prompt), from a small VLM trained from scratch.

It is the critic's architecture (a LLaVA built from transformers classes) trained to answer one
word, "right" or "wrong", after the prompt and the image; the reward is the probability of
"right" against "wrong" at that position (VQAScore-style). It learns from the verifier's labels on
logged trajectories, so it can stand in for the verifier where the verifier must not be used (RL
training) and be checked against it (the hacking gap).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from rewards.base import Scored

RIGHT, WRONG = "right", "wrong"  # the two answers; single tokens of the critic's tokenizer


class LearnedRewardConfig(BaseModel):
    """A learned reward model as the loop's judge (models.judge in a run config)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["learned"] = "learned"
    path: str
    device: str = "cpu"


class LearnedReward:
    """Batched scoring of (prompt, image) pairs with a reward model folder (save_pretrained)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        self.path = Path(path)
        from model.critic.build import load_critic  # the world's canvas size: only when used

        self.model, self.processor = load_critic(self.path)
        self.model.to(device).eval()
        self.device = device
        tok = self.processor.tokenizer
        self.answer_ids = [tok.convert_tokens_to_ids(w) for w in (RIGHT, WRONG)]
        if tok.unk_token_id in self.answer_ids:
            raise ValueError(f"{self.path}: the tokenizer has no single token for {RIGHT!r} and {WRONG!r}")
        self._lock = threading.Lock()

    @torch.inference_mode()
    def probabilities(self, prompts: list[str], images: list[np.ndarray]) -> np.ndarray:
        """P(right) per pair: softmax over the two answer tokens at the first answer position
        (rows are left-padded, so that position is the last one for every row)."""
        from model.critic.build import critic_inputs

        batch = critic_inputs(self.processor, prompts, images).to(self.device)
        with self._lock:
            logits = self.model(**batch).logits[:, -1, self.answer_ids]
        return logits.float().softmax(dim=-1)[:, 0].cpu().numpy()

    def score(self, prompts: list[str], images: list[np.ndarray]) -> list[Scored]:
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
        return [Scored(value=float(p), reason=f"learned reward: P(right) = {p:.3f}")
                for p in self.probabilities(prompts, images)]
