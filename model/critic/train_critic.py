"""Training recipe of the embedded critic: build the reflection data (model/critic/data.py), then
fine-tune the LLaVA critic on it with transformers' `Trainer`.

Seeded; resumable at both stages (data chunks, then Trainer checkpoints every `checkpoint_every`
steps; rerun the same command); CPU by default, CUDA when present. The exported folder holds
model and processor (`save_pretrained`) and `training.json`, the record of how it was made.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from datasets import Dataset
from pydantic import Field
from transformers import LlavaProcessor, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ExportableState

from model.critic.backend import DEFAULT_CRITIC
from model.critic.build import CriticConfig, build_critic, critic_inputs
from model.critic.data import SOURCES, CriticDataConfig, build_data, build_seconds, verdict_counts
from model.shapeworld.config import YamlConfig, pin_config
from model.shapeworld.pipeline import load_generator
from model.shapeworld.train_generator import git_commit, pick_device

CHAT_OVERHEAD = 4  # <bos> <user> <critic> <eos> around the image tokens, the prompt and the reflection


class CriticTrainConfig(YamlConfig):
    seed: int = 0
    model: CriticConfig = CriticConfig()
    data: CriticDataConfig = CriticDataConfig()
    steps: int = Field(3000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup: int = Field(200, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    checkpoint_every: int = Field(250, ge=1)
    log_every: int = Field(50, ge=1)


# -- the training mix ------------------------------------------------------------------------
def row_lengths(data: Dataset, processor: LlavaProcessor, image_tokens: int) -> np.ndarray:
    """Tokens each row takes in a training batch (critic_inputs' chat, unpadded)."""
    tok = processor.tokenizer
    prompts = tok(list(data["prompt"]), add_special_tokens=False)["input_ids"]
    reflections = tok(list(data["reflection"]), add_special_tokens=False)["input_ids"]
    return np.array([image_tokens + len(p) + len(r) + CHAT_OVERHEAD for p, r in zip(prompts, reflections)])


def training_mix(data: Dataset, cfg: CriticTrainConfig, processor: LlavaProcessor) -> tuple[Dataset, dict]:
    """The rows the Trainer samples from: rows too long for the critic left out, the generator's
    rare right images repeated (verdict balance). Returns the dataset (with a `length` column
    for length-grouped batches) and what was done, for training.json."""
    lengths = row_lengths(data, processor, cfg.model.image_tokens)
    fits = lengths <= cfg.model.text.max_positions
    repeat = np.where((np.array(data["source"]) == "generated") & (np.array(data["verdict"]) == "right"),
                      cfg.data.repeat_generated_right, 1)
    indices = np.repeat(np.flatnonzero(fits), repeat[fits])
    mix = data.select(indices).add_column("length", lengths[indices].tolist())
    dropped = Counter(s for s, ok in zip(data["source"], fits) if not ok)
    return mix, {"rows_built": verdict_counts(data), "rows_in_mix": verdict_counts(mix),
                 "left_out_too_long": dict(dropped), "longest_row_tokens": int(lengths.max())}


@dataclass
class CriticCollator:
    """Rows -> one training batch (critic_inputs), plus each row's source for the tally."""

    processor: LlavaProcessor

    def __call__(self, rows: list[dict]) -> dict:
        batch = critic_inputs(self.processor, [r["prompt"] for r in rows], [np.asarray(r["image"]) for r in rows],
                              [r["reflection"] for r in rows])
        batch["source_ids"] = torch.tensor([SOURCES.index(r["source"]) for r in rows])
        return batch


class Tally(TrainerCallback, ExportableState):
    """Examples trained on per source and training wall time; saved in every checkpoint's
    trainer_state.json, so a resumed run goes on counting."""

    def __init__(self):
        self.seen: dict[str, int] = {}
        self.seconds = 0.0
        self._since = time.perf_counter()

    def count(self, source_ids: torch.Tensor) -> None:
        for i in source_ids.tolist():
            self.seen[SOURCES[i]] = self.seen.get(SOURCES[i], 0) + 1

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self._since

    def state(self) -> dict:
        return {"args": {}, "attributes": {"seen": dict(self.seen), "seconds": self.elapsed()}}


class CriticTrainer(Trainer):
    """Trainer that counts what it trains on (the collator's `source_ids` never reach the model)."""

    def tally(self) -> Tally:
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, Tally))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        source_ids = inputs.pop("source_ids")
        if model.training:
            self.tally().count(source_ids)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Checkpoints are written by save_pretrained, which renames LLaVA's keys to the original
        layout; Trainer reads them back with a plain load_state_dict(strict=False) that matches
        none of them and resumes from random weights (transformers #43701). Read them the way
        from_pretrained does, and strictly."""
        saved = type(self.model).from_pretrained(resume_from_checkpoint, local_files_only=True)
        (model or self.model).load_state_dict(saved.state_dict())


# -- work dir, checkpoints, export -----------------------------------------------------------
def check_work(work: Path, cfg: CriticTrainConfig) -> None:
    """A work dir belongs to one config: resuming it with another would mix two runs."""
    pin_config(work / "config.json", cfg)


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete Trainer checkpoint. Trainer writes trainer_state.json last, so a
    checkpoint without a readable one was cut off mid-save: it is removed."""
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ckpt in found:
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return ckpt
        except (OSError, ValueError):
            shutil.rmtree(ckpt)
    return None


def training_args(cfg: CriticTrainConfig, out: Path, device: torch.device) -> TrainingArguments:
    report = ["tensorboard"] if importlib.util.find_spec("tensorboard") else "none"
    return TrainingArguments(
        output_dir=str(out), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup, lr_scheduler_type="cosine", weight_decay=cfg.weight_decay,
        max_grad_norm=1.0, logging_steps=cfg.log_every, logging_first_step=True, save_steps=cfg.checkpoint_every,
        save_total_limit=2, seed=cfg.seed, data_seed=cfg.seed, use_cpu=device.type == "cpu",
        dataloader_pin_memory=device.type == "cuda", remove_unused_columns=False, report_to=report,
        train_sampling_strategy="group_by_length", length_column_name="length",
        restore_callback_states_from_checkpoint=True)


def make_trainer(cfg: CriticTrainConfig, model, processor: LlavaProcessor, mix: Dataset, out: Path,
                 device: torch.device) -> CriticTrainer:
    """The Trainer of the recipe: length-grouped batches of critic_inputs, checkpoints in `out`."""
    return CriticTrainer(model=model, args=training_args(cfg, out, device), train_dataset=mix,
                         data_collator=CriticCollator(processor), processing_class=processor, callbacks=[Tally()])


def export_critic(model, processor: LlavaProcessor, out: Path, record: dict) -> Path:
    """save_pretrained into a temp folder, then swap it in: a crash never leaves half a critic."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def command_line() -> str:
    return " ".join(["refloop", *sys.argv[1:]]) if Path(sys.argv[0]).name == "refloop" else " ".join(sys.argv)


# -- the recipe --------------------------------------------------------------------------------
def train_critic(cfg: CriticTrainConfig, work: Path, export: Path | None = None, device: str | None = None,
                 log: Callable[[str], None] = print) -> Path:
    dev = pick_device(device)
    work = Path(work)
    check_work(work, cfg)
    t0 = time.perf_counter()
    generator = Path(cfg.data.generator) if cfg.data.generator else None
    data = build_data(cfg.data, work / "data", cfg.seed, lambda: load_generator(generator, dev), log)
    t_data = time.perf_counter() - t0

    set_seed(cfg.seed)
    model, processor = build_critic(cfg.model)
    mix, mix_record = training_mix(data, cfg, processor)
    right = sum(c.get("right", 0) for c in mix_record["rows_in_mix"].values())
    log(f"training mix: {len(mix)} rows ({right / len(mix):.0%} right), {len(data)} built")
    ckpts = work / "checkpoints"
    trainer = make_trainer(cfg, model, processor, mix, ckpts, dev)
    resume = last_checkpoint(ckpts)
    if resume is not None:
        log(f"resuming the critic at {resume.name}")
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    tally = trainer.tally()
    record = {
        "command": command_line(),
        "config": cfg.model_dump(),
        "steps": trainer.state.global_step,
        "batch_size": cfg.batch_size,
        "examples_seen": {"total": sum(tally.seen.values()), **{s: tally.seen.get(s, 0) for s in SOURCES}},
        "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        "data": mix_record,
        "wall_seconds": {**{f"data_{s}": t for s, t in build_seconds(work / "data", cfg.data).items()},
                         "train": round(tally.elapsed(), 1)},
        "this_session_seconds": {"data": round(t_data, 1), "train": round(result.metrics.get("train_runtime", 0), 1),
                                 "total": round(time.perf_counter() - t0, 1)},
        "parameters": sum(p.numel() for p in model.parameters()),
        "generator": str(generator or "shipped"),
        "device": str(dev) + ("" if dev.type == "cpu" else f" ({torch.cuda.get_device_name(dev)})"),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "seed": cfg.seed,
    }
    return export_critic(trainer.model.to("cpu"), processor, Path(export) if export else DEFAULT_CRITIC, record)
