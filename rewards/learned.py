"""A learned reward model: P(the image satisfies the prompt), from the unified model's own LM.

The model is the unified LM with a scalar head (`LlamaForSequenceClassification`, trained with
TRL's RewardTrainer on verifier-ranked pairs, rewards/train.py). It reads the image the way the
unified model reflects on it, as text: `<reflect> prompt <boi> <c12> ... <c40> <eoi> <eos>`, the
codes from the VQ saved beside it. A Bradley-Terry score is only defined up to a shift, so the
folder also holds a Platt calibration (calibration.json: P(right) = sigmoid(a * score + b),
fitted on the training images' verifier labels) that makes the score a probability the loop's
thresholds and the hacking gap can use. The verifier is never called here.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from rewards.base import Scored

CALIBRATION = "calibration.json"


class LearnedRewardConfig(BaseModel):
    """A learned reward model as the loop's judge (models.judge in a run config)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["learned"] = "learned"
    path: str
    device: str = "cpu"


def reward_texts(tokenizer, prompts: list[str], codes: list[list[int]]) -> list[str]:
    """The reward model's input per image: the unified reflect layout, as a string."""
    from model.unified.sequences import Layout

    layout = Layout(tokenizer)
    return [tokenizer.decode([*layout.reflect_prefix(p, list(c)), layout.eos]) for p, c in zip(prompts, codes)]


class LearnedReward:
    """Batched scoring of (prompt, image) pairs with a reward folder (rewards/train.py exports it)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        import torch  # noqa: F401  (model-free commands import this module for its config)
        from diffusers import VQModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()
        self.path = Path(path)
        for need in ("config.json", "tokenizer.json", "vq/config.json"):
            if not (self.path / need).is_file():
                raise FileNotFoundError(f"{self.path} is not a learned reward folder (no {need}); train one with "
                                        "`refloop train reward RUN...`")
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path).to(device).eval()
        self.tok = AutoTokenizer.from_pretrained(self.path)
        self.vq = VQModel.from_pretrained(self.path / "vq").to(device).eval()
        cal = self.path / CALIBRATION
        fit = json.loads(cal.read_text()) if cal.is_file() else {"a": 1.0, "b": 0.0}
        self.a, self.b = float(fit["a"]), float(fit["b"])
        self.device = device
        self._lock = threading.Lock()

    def codes(self, images: list[np.ndarray]) -> list[list[int]]:
        from model.unified.bundle import as_canvas
        from model.unified.vq import encode

        with self._lock:
            return encode(self.vq, as_canvas(images)).tolist()

    def raw_scores(self, prompts: list[str], codes: list[list[int]], batch_size: int = 64) -> np.ndarray:
        """The head's scalar per (prompt, codes) pair (uncalibrated)."""
        import torch

        out = []
        for k in range(0, len(prompts), batch_size):
            texts = reward_texts(self.tok, prompts[k:k + batch_size], codes[k:k + batch_size])
            batch = self.tok(texts, padding=True, return_tensors="pt").to(self.device)
            with self._lock, torch.inference_mode():
                out.append(self.model(**batch).logits[:, 0].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def calibrated(self, raw: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * raw + self.b)))

    def probabilities(self, prompts: list[str], images: list[np.ndarray]) -> np.ndarray:
        """P(right) per pair."""
        return self.calibrated(self.raw_scores(prompts, self.codes(images)))

    def score(self, prompts: list[str], images: list[np.ndarray]) -> list[Scored]:
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
        return [Scored(value=float(p), reason=f"learned reward: P(right) = {p:.3f}")
                for p in self.probabilities(prompts, images)]
