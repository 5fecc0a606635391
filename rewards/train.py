"""`refloop train reward RUN...`: the learned reward, trained with TRL's RewardTrainer.

The model is the unified model's LM with a new scalar head (AutoModelForSequenceClassification,
num_labels=1: the body loads from the unified folder, the head starts random); it learns
Bradley-Terry preferences between a right and a wrong image of the same prompt (rewards/pairs.py).
Arguments are TRL's own RewardConfig plus RewardDataArguments, read from one YAML by TrlParser
(configs/reward.yaml). Resumable: the judged images are built once into the work folder, and a
rerun goes on from the last complete checkpoint. The export is a folder rewards/learned.py loads:
the model, the tokenizer, the VQ, a Platt calibration and training.json / eval_held_out.json.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.recipe import (
    atomic_write,
    log_lines,
    pin_args,
    quiet,
    quiet_libraries,
    run_record,
    tensorboard,
    train_or_resume,
)
from rewards import pairs as P
from rewards.learned import CALIBRATION, LearnedReward, reward_texts
from rewards.metrics import RewardReport, platt, report


@dataclass
class RewardDataArguments:
    """What the reward learns from (the rest of the YAML is TRL's RewardConfig)."""

    unified_model: str | None = field(default=None, metadata={"help": "unified model folder (default: shipped)"})
    held_out: float = field(default=0.1, metadata={"help": "share of sessions / prompts kept out of training"})
    fresh_per_family: int = field(default=20, metadata={"help": "train-suite prompts per family drawn now"})
    samples_per_prompt: int = field(default=4, metadata={"help": "drawings per fresh prompt (seeds)"})
    rendered_per_prompt: int = field(default=1, metadata={"help": "rendered correct scenes per fresh prompt"})
    near_misses_per_prompt: int = field(default=2, metadata={"help": "rendered near misses per fresh prompt"})
    max_pairs_per_group: int = field(default=8, metadata={"help": "pairs per session or prompt, at most"})
    draw_batch_size: int = field(default=32, metadata={"help": "batch of the unified model while drawing"})

    def __post_init__(self):
        if not 0 < self.held_out < 1:
            raise ValueError(f"held_out must be in (0, 1), not {self.held_out}")
        for name in ("fresh_per_family", "samples_per_prompt", "rendered_per_prompt", "near_misses_per_prompt"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_pairs_per_group < 1 or self.draw_batch_size < 1:
            raise ValueError("max_pairs_per_group and draw_batch_size must be >= 1")


def parse_args(config: Path | None, work: Path, overrides: list[str] = ()):
    """(RewardDataArguments, trl.RewardConfig) from the YAML, then command-line overrides; the
    checkpoints go to WORK/checkpoints."""
    from trl import RewardConfig, TrlParser

    if config is not None and not Path(config).is_file():
        raise ValueError(f"no such config file: {config}")
    argv = (["--config", str(config)] if config else []) + [*overrides, "--output_dir", str(work / "checkpoints")]
    return TrlParser((RewardDataArguments, RewardConfig)).parse_args_and_config(argv)


def pinned(data: RewardDataArguments, args, runs: list[str]) -> dict:
    trl_args = {k: v for k, v in args.to_dict().items() if k not in ("logging_dir", "output_dir")}
    return {"data": dataclasses.asdict(data), "trl": trl_args, "runs": runs}


def judged_items(data: RewardDataArguments, rows: list[dict], cache: Path, seed: int,
                 log: Callable[[str], None]) -> list[dict]:
    """Trajectory rounds and fresh drawings with their verifier labels, as codes; built once."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from model.unified.bundle import UnifiedModel, as_canvas
    from model.unified.vq import encode

    t0 = time.time()
    model = UnifiedModel.load(data.unified_model)
    items = P.trajectory_items(rows, lambda imgs: encode(model.vq, as_canvas(imgs)).tolist())
    items += P.fresh_items(model, data.fresh_per_family, data.samples_per_prompt, data.rendered_per_prompt, seed,
                           data.draw_batch_size, log, data.near_misses_per_prompt)
    atomic_write(cache, json.dumps(items))
    log(f"reward data: {len(items)} judged images ({sum(i['correct'] for i in items)} right) "
        f"in {time.time() - t0:.0f}s")
    return items


def pair_dataset(tokenizer, pair_list: list[tuple[dict, dict]]):
    from datasets import Dataset

    def texts(side: int) -> list[str]:
        return reward_texts(tokenizer, [p[side]["prompt"] for p in pair_list], [p[side]["codes"] for p in pair_list])

    return Dataset.from_dict({"chosen": texts(0), "rejected": texts(1)})


def evaluate(reward: LearnedReward, items: list[dict], pair_list: list, seed: int = 0) -> RewardReport:
    """The reward against the verifier on these judged images and pairs."""
    raw = reward.raw_scores([i["prompt"] for i in items], [i["codes"] for i in items])
    by_id = {id(i): r for i, r in zip(items, raw)}
    pair_raw = (np.array([by_id[id(b)] for b, _ in pair_list]), np.array([by_id[id(w)] for _, w in pair_list]))
    return report(reward.calibrated(raw), np.array([i["correct"] for i in items]), pair_raw, seed)


def train_reward(data: RewardDataArguments, args, rows: list[dict], runs: list[str], work: Path, export: Path,
                 log: Callable[[str], None] = print) -> tuple[Path, RewardReport | None]:
    """Train on the training groups' pairs, calibrate, report on the held-out groups, export."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardTrainer

    from model.unified.bundle import DEFAULT_MODEL

    started = time.time()
    quiet_libraries()
    work, export = Path(work), Path(export)
    work.mkdir(parents=True, exist_ok=True)
    pin_args(work / "args.json", pinned(data, args, runs))
    items = judged_items(data, rows, work / "items.json", args.seed, log)
    train, held = P.split(items, data.held_out)
    train_pairs = P.pairs(train, data.max_pairs_per_group, args.seed)
    held_pairs = P.pairs(held, data.max_pairs_per_group, args.seed)
    if not train_pairs:
        raise ValueError(f"no training pairs in {len(train)} judged images: a pair needs a right and a wrong image "
                         "of the same session or prompt (give runs whose sessions were repaired, or raise "
                         "fresh_per_family / samples_per_prompt / rendered_per_prompt)")
    source = Path(data.unified_model) if data.unified_model else DEFAULT_MODEL
    tok = AutoTokenizer.from_pretrained(source)
    set_seed(args.seed)  # the new head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    log(f"reward: {len(train_pairs)} training pairs, {len(held_pairs)} held out; {args.max_steps} steps")
    trainer = quiet(RewardTrainer(
        model=model, args=args, train_dataset=pair_dataset(tok, train_pairs),
        eval_dataset=pair_dataset(tok, held_pairs) if held_pairs and args.eval_strategy != "no" else None,
        processing_class=tok, callbacks=[log_lines("reward", ("loss", "accuracy", "margin", "eval_accuracy"), log)]))
    train_or_resume(trainer, log, "reward")
    out = save(trainer, tok, source, export)

    reward = LearnedReward(out)
    raw = reward.raw_scores([i["prompt"] for i in train], [i["codes"] for i in train])
    reward.a, reward.b = platt(raw, np.array([i["correct"] for i in train]))
    atomic_write(out / CALIBRATION, json.dumps({"a": reward.a, "b": reward.b}) + "\n")
    fit = evaluate(reward, train, train_pairs, args.seed)
    held_report = evaluate(reward, held, held_pairs, args.seed) if held else None
    if held_report is not None:
        atomic_write(out / "eval_held_out.json", json.dumps(held_report.model_dump() | {"gap": held_report.gap},
                                                            indent=2) + "\n")
    atomic_write(out / "training.json", json.dumps(run_record(
        started, config=pinned(data, args, runs), steps=trainer.state.global_step, started_from=str(source),
        data={"train": P.summary(train, train_pairs), "held_out": P.summary(held, held_pairs)},
        fit=fit.model_dump(), tensorboard=tensorboard(), device=str(args.device)), indent=2, default=str) + "\n")
    return out, held_report


def save(trainer, tok, source: Path, export: Path) -> Path:
    """Written beside, then swapped in: a reader never sees half a reward folder."""
    tmp = export.with_name(f".{export.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.unwrap_model(trainer.model).to("cpu").save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.copytree(source / "vq", tmp / "vq")
    if export.exists():
        shutil.rmtree(export)
    tmp.rename(export)
    return export
