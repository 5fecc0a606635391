"""Stand-in models for the orchestration tests: numpy functions behind the roles' interfaces, so that
the run, the store, the lock and the CLI are tested whatever embedded model ships.

`use_fake_models(monkeypatch, root)` makes `refloop run/replay/bench` load these instead of the
models a run config names (the config is still read and checked as usual)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np


def _image(key: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


class FakeImageModel:
    """Pixels are a function of (prompt, seed) or (image, instruction, seed): a restarted process
    draws the same images."""

    def __init__(self, path: Path, delay: float = 0.0):
        self.path, self.delay = Path(path), delay

    def generate(self, prompts, seeds):
        time.sleep(self.delay)
        return [_image(f"{p}|{s}") for p, s in zip(prompts, seeds)]

    def edit(self, images, instructions, seeds):
        time.sleep(self.delay)
        return [_image(f"{hashlib.sha256(np.asarray(i).tobytes()).hexdigest()}|{t}|{s}")
                for i, t, s in zip(images, instructions, seeds)]


class FakeCritic:
    """A reflection that is a function of the image alone; `fail_on` prompts raise (a failed session)."""

    def __init__(self, path: Path, delay: float = 0.0, fail_on: str | None = None):
        self.path, self.delay, self.fail_on = Path(path), delay, fail_on

    def critique(self, prompts, images):
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in prompts:
            raise RuntimeError(f"the critic broke on {self.fail_on!r}")
        return ["verdict: right" if int(np.asarray(img, np.int64).sum()) % 3 == 0
                else "verdict: wrong\nedit: add a circle" for img in images]


def fake_models(root: Path, delay: float = 0.0, fail_on: str | None = None):
    (root / "image").mkdir(parents=True, exist_ok=True)
    (root / "critic").mkdir(parents=True, exist_ok=True)
    return FakeImageModel(root / "image", delay), FakeCritic(root / "critic", delay, fail_on), None


def use_fake_models(monkeypatch, root: Path, delay: float = 0.0, fail_on: str | None = None) -> None:
    import agent.runner
    from rewards.verifier import VerifierReward
    from world import check_image

    models = fake_models(root, delay, fail_on)
    monkeypatch.setattr(agent.runner, "load_models", lambda cfg: models)
    # a judge for the search arms: the verifier stands in for a model judge too
    monkeypatch.setattr(agent.runner, "make_judge",
                        lambda cfg: VerifierReward(check_image) if cfg.search.judge else None)
