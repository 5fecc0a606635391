"""The unified model behind the loop's roles: generator, editor, critic and judge are one network
(loaded once per folder and device, shared by the roles' worker threads, one call at a time)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import astuple
from functools import lru_cache

import numpy as np

from model.unified.bundle import DEFAULT_MODEL, Sampling, UnifiedModel
from model.unified.config import UnifiedBackendConfig

MEMORY = 4096  # reflections remembered per model


@lru_cache(maxsize=4)
def _shared(path: str | None, device: str) -> tuple[UnifiedModel, threading.Lock, OrderedDict]:
    return UnifiedModel.load(path, device), threading.Lock(), OrderedDict()


class UnifiedRoles:
    """One object, every role; `path` names the folder for the run manifest. Its revise draws afresh (the
    generator's own drawing, same seed) for `regenerate`, so a round's redraws and edits share a batch."""

    redraws = True

    def __init__(self, cfg: UnifiedBackendConfig):
        self.cfg = cfg
        self.path = cfg.path or str(DEFAULT_MODEL)
        self.model, self._lock, self._reflections = _shared(cfg.path, cfg.device)
        self.sampling = Sampling(guidance=cfg.guidance, temperature=cfg.temperature, top_k=cfg.top_k,
                                 right_threshold=cfg.right_threshold, change_temperature=cfg.change_temperature,
                                 verdict_votes=cfg.verdict_votes)

    def _call(self, fn, *args):
        with self._lock:
            self.model.sampling = self.sampling
            return fn(*args)

    def generate(self, prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        return self._call(self.model.draw, prompts, seeds)

    def edit(self, images: list[np.ndarray], instructions: list[str], seeds: list[int]) -> list[np.ndarray]:
        return self._call(self.model.edit, images, instructions, seeds)

    def revise(self, prompts: list[str], images: list[np.ndarray], instructions: list[str],
               seeds: list[int]) -> list[np.ndarray]:
        return self._call(self.model.revise, prompts, images, instructions, seeds)

    def critique(self, prompts: list[str], images: list[np.ndarray]) -> list[str]:
        return [text for text, _ in self._reflect(prompts, images)]

    def score(self, prompts: list[str], images: list[np.ndarray]) -> list[float]:
        """The judge: P(right) of the model's own reflection (0 without a verdict), or its verdict votes' share."""
        return [0.0 if p is None else p for _, p in self._reflect(prompts, images)]

    def forget(self) -> None:
        """Drop the remembered reflections (a timing of the same sessions twice must call the model)."""
        with self._lock:
            self._reflections.clear()

    def _reflect(self, prompts: list[str], images: list[np.ndarray]) -> list[tuple[str, float | None]]:
        """(text, P(right)) per image, remembered: a run's judge and critic reflect on the same images,
        and with the same settings the answer is the same (every row is seeded by itself)."""
        keys = [(astuple(self.sampling), p, hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest())
                for p, im in zip(prompts, images)]
        with self._lock:
            todo = [k for k, key in enumerate(keys) if key not in self._reflections]
            if todo:
                self.model.sampling = self.sampling
                texts, p_right = self.model.reflect([prompts[k] for k in todo], [images[k] for k in todo])
                for k, text, p in zip(todo, texts, p_right):
                    self._reflections[keys[k]] = (text, p)
            out = [self._reflections[key] for key in keys]
            while len(self._reflections) > MEMORY:
                self._reflections.popitem(last=False)
            return out
