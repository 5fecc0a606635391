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


STEP_KEYS = ("steps", "decoder_steps", "rounds")  # counts a continued run may grow
PER_ROUND_KEYS = ("guidance", "temperature", "balance_verdicts")  # lists of one value per round: they may grow


def pin_config(path: Path, cfg: BaseModel) -> None:
    """A work folder belongs to one config: the first run writes it, a resumed run must bring the
    same one, or two runs would be mixed. Step (and round) counts alone may grow: training continues
    from the saved state on the longer schedule, and the pinned config records the new counts."""
    if path.is_file():
        pinned = type(cfg).model_validate_json(path.read_text())
        if pinned == cfg:
            return
        old, new = _split_steps(pinned.model_dump()), _split_steps(cfg.model_dump())
        if old[0] != new[0] or not all(_grew(v, new[1][k]) for k, v in old[1].items()):
            raise ValueError(f"{path.parent} was started with another config ({path}); use a new --work folder "
                             "or delete that one (only step and round counts may grow, and per-round lists "
                             "by new rounds)")
    atomic_write(path, cfg.model_dump_json(indent=2))


def _grew(old, new) -> bool:
    """A count may grow; a per-round list may gain rounds, each old round's count grown or kept and
    every other value kept (the rounds already trained were trained with them)."""
    if isinstance(old, list) and isinstance(new, list):
        return len(new) >= len(old) and all(_grew(o, n) for o, n in zip(old, new))
    return new >= old if type(old) is int and type(new) is int else new == old


def _split_steps(d: dict, at: str = "") -> tuple[dict, dict]:
    """(the config without its step counts, {'lm.steps': 5000, ...})."""
    rest, steps = {}, {}
    for k, v in d.items():
        if isinstance(v, dict):
            rest[k], inner = _split_steps(v, f"{at}{k}.")
            steps.update(inner)
        elif k in STEP_KEYS + PER_ROUND_KEYS:
            steps[f"{at}{k}"] = v
        else:
            rest[k] = v
    return rest, steps


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


# -- TRL trainers (the learned reward and the policy) ------------------------------------------
def command_line() -> str:
    return " ".join(["refloop", *sys.argv[1:]]) if Path(sys.argv[0]).name == "refloop" else " ".join(sys.argv)


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete Trainer checkpoint. Trainer writes trainer_state.json last, so a
    checkpoint without a readable one was cut off mid-save (a kill): it is removed."""
    import shutil

    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ckpt in found:
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return ckpt
        except (OSError, ValueError):
            shutil.rmtree(ckpt, ignore_errors=True)
    return None


def tensorboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def pin_args(path: Path, args: dict, may_change: tuple[str, ...] = ("max_steps",)) -> None:
    """pin_config for TRL's dataclass configs: a work folder belongs to one set of arguments
    (but `may_change`, at any depth: rerun with more steps to train on)."""
    def comparable(d):
        if isinstance(d, dict):
            return {k: comparable(v) for k, v in d.items() if k not in may_change}
        return d

    args = json.loads(json.dumps(args, default=str))
    if path.is_file():
        if comparable(json.loads(path.read_text())) != comparable(args):
            raise ValueError(f"{path.parent} was started with other arguments ({path}); use a new --work folder "
                             "or delete that one")
        return
    atomic_write(path, json.dumps(args, indent=2))


def run_record(started: float, **fields) -> dict:
    """What every training record holds besides its own fields: the command, commit, versions, time."""
    import platform

    import torch
    import transformers
    import trl

    return {"command": command_line(), "git_commit": git_commit(), "wall_seconds": round(time.time() - started, 1),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
            "platform": platform.platform(), "cpu_threads": torch.get_num_threads(), **fields}


def log_lines(stage: str, keys: tuple[str, ...], log=print):
    """A Trainer callback: one line per logging step on the main process (the keys that are there),
    instead of Trainer's dump of every metric."""
    from transformers import TrainerCallback

    class LogLines(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "train_runtime" in logs:
                return
            parts = [f"{k.split('/')[-1]} {logs[k]:.3g}" for k in keys if isinstance(logs.get(k), int | float)]
            log(f"{stage} step {state.global_step}/{state.max_steps}: " + ", ".join(parts))

    return LogLines()


def quiet_libraries() -> None:
    """No progress bars or load reports in a training log (datasets, transformers, TRL's notices)."""
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging

    disable_progress_bar()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func: used knowingly


def quiet(trainer):
    """Drop Trainer's PrinterCallback (it prints every metric again under disable_tqdm)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def train_or_resume(trainer, log=print, stage: str = "train") -> None:
    """Train, going on from the last complete checkpoint in args.output_dir. A run whose checkpoint
    already reached max_steps only loads it (Trainer would take one more step)."""
    from transformers import TrainerState

    resume = last_checkpoint(Path(trainer.args.output_dir))
    if resume is not None:
        state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
        if state.global_step >= trainer.args.max_steps:
            log(f"{stage}: done earlier ({resume.name})")
            trainer._load_from_checkpoint(str(resume))
            trainer.state = state
            return
        log(f"{stage}: resuming at {resume.name}")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
