"""The training kit shared by every recipe: YAML configs, work-folder pinning, device choice,
the training record (command, config, git commit, steps, examples, wall time) and progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file; ValueError says what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such config file: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


class YamlConfig(Strict):
    """A recipe read from YAML: defaults when no file is given, every key validated."""

    @classmethod
    def load(cls, path: str | Path | None = None):
        return cls() if path is None else cls.model_validate(read_yaml(path))


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def pin_config(path: Path, cfg: BaseModel) -> None:
    """A work folder belongs to one config: the first run writes it, a resumed run must bring the
    same one, or two runs would be mixed."""
    if path.is_file():
        if type(cfg).model_validate_json(path.read_text()) != cfg:
            raise ValueError(f"{path.parent} was started with another config ({path}); use a new --work folder "
                             "or delete that one")
        return
    atomic_write(path, cfg.model_dump_json(indent=2))


def pick_device(name: str | None = None):
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def training_record(path: Path, cfg: BaseModel, stages: dict) -> None:
    """What made the weights in a folder: anyone can rerun the command with the config."""
    atomic_write(path, json.dumps({"command": " ".join(["refloop", *sys.argv[1:]]) if sys.argv else None,
                                   "config": cfg.model_dump(mode="json"), "git_commit": git_commit(),
                                   "stages": stages}, indent=2))


class Progress:
    """One line every `every` seconds: step, loss, steps/s and ETA."""

    def __init__(self, name: str, total: int, start: int = 0, log=print, every: float = 20.0):
        self.name, self.total, self.start, self.log, self.every = name, total, start, log, every
        self.t0 = self.last = time.time()

    def __call__(self, step: int, **metrics: float) -> None:
        now = time.time()
        if now - self.last < self.every and step < self.total:
            return
        self.last = now
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        self.log(f"{self.name} {step}/{self.total} {shown} {rate:.2f} steps/s eta {eta / 60:.1f} min")
