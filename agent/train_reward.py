"""Train and check the learned reward model (rewards/learned.py) on logged trajectories.

Every round of every session whose verifier verdict is known becomes a row (prompt, image,
"right"/"wrong"). Sessions are split into train and held-out by a hash of their id, so no image
of a held-out session is trained on. Training is the critic's recipe (transformers Trainer,
resumable from its checkpoints) with the one-word answer as the reflection.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from datasets import Dataset
from pydantic import BaseModel, Field
from scipy.stats import mannwhitneyu
from transformers import set_seed

from agent.store import RunStore
from model.critic.build import CriticConfig, LanguageModel, VisionTower, build_critic
from model.critic.data import FEATURES
from model.critic.train_critic import (
    CriticTrainConfig,
    check_work,
    command_line,
    export_critic,
    last_checkpoint,
    make_trainer,
    training_mix,
)
from model.recipe import YamlConfig, git_commit, pick_device
from rewards.learned import RIGHT, WRONG, LearnedReward

SMALL = CriticConfig(vision=VisionTower(hidden=64, layers=2), text=LanguageModel(hidden=96, layers=2, max_positions=96))


class RewardTrainConfig(YamlConfig):
    seed: int = 0
    model: CriticConfig = SMALL
    held_out: float = Field(0.1, gt=0, lt=1)  # share of sessions kept out of training
    steps: int = Field(600, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup: int = Field(50, ge=0)
    checkpoint_every: int = Field(200, ge=1)

    def trainer_config(self) -> CriticTrainConfig:
        """The critic recipe's settings for this training (no right-image repeats: rows are as logged)."""
        return CriticTrainConfig(seed=self.seed, model=self.model, steps=self.steps, batch_size=self.batch_size,
                                 lr=self.lr, warmup=self.warmup, checkpoint_every=self.checkpoint_every,
                                 data={"repeat_generated_right": 1})


class RewardReport(BaseModel):
    rows: int
    positives: int
    accuracy: float  # P(right) >= 0.5 against the verifier
    auc: float | None  # None when one class is missing
    mean_learned: float
    mean_verifier: float

    @property
    def gap(self) -> float:
        """How much the learned reward over-rates these images: > 0 is where hacking shows."""
        return self.mean_learned - self.mean_verifier


def is_held_out(run_id: str, session_id: str, share: float) -> bool:
    digest = hashlib.sha256(f"{run_id}/{session_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def trajectory_rows(run_dirs: Iterable[Path], held_out: float | None = None, want_held_out: bool = False) -> list[dict]:
    """One row per judged round: what the image shows against the prompt, as the verifier said.
    With `held_out`, only the training sessions (or, with want_held_out, only the held-out ones)."""
    rows = []
    for run_dir in run_dirs:
        store = RunStore.open(run_dir)
        for session in store.sessions():
            if held_out is not None and is_held_out(store.manifest.run_id, session.id, held_out) != want_held_out:
                continue
            for rnd in session.rounds:
                if rnd.correct is None:
                    continue
                rows.append({"prompt": session.prompt, "family": session.family or "",
                             "image": store.load_image(rnd.image), "reflection": RIGHT if rnd.correct else WRONG,
                             "verdict": RIGHT if rnd.correct else WRONG,
                             "source": "generated" if rnd.index == 0 else "edited"})
    return rows


def as_dataset(rows: list[dict]) -> Dataset:
    from PIL import Image

    return Dataset.from_list([{**r, "image": Image.fromarray(r["image"])} for r in rows], features=FEATURES)


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve: P(a right image outscores a wrong one), ties counting half."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return None
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def evaluate(reward: LearnedReward, prompts: list[str], images: list[np.ndarray], truth: list[bool],
             batch_size: int = 64) -> RewardReport:
    """The learned reward against the verifier's verdicts on the same images."""
    if not prompts:
        raise ValueError("nothing to evaluate: no judged images")
    p = np.concatenate([reward.probabilities(prompts[i:i + batch_size], images[i:i + batch_size])
                        for i in range(0, len(prompts), batch_size)])
    y = np.array(truth, dtype=bool)
    return RewardReport(rows=len(y), positives=int(y.sum()), accuracy=float(((p >= 0.5) == y).mean()), auc=auc(p, y),
                        mean_learned=float(p.mean()), mean_verifier=float(y.mean()))


def train_reward(cfg: RewardTrainConfig, run_dirs: list[Path], work: Path, export: Path, device: str | None = None,
                 log: Callable[[str], None] = print) -> tuple[Path, RewardReport]:
    """Train on the runs' training sessions, report on their held-out sessions, export the folder."""
    dev = pick_device(device)
    tcfg = cfg.trainer_config()
    check_work(work, tcfg)
    t0 = time.perf_counter()
    train_rows = trajectory_rows(run_dirs, cfg.held_out)
    test_rows = trajectory_rows(run_dirs, cfg.held_out, want_held_out=True)
    if not train_rows or len({r["verdict"] for r in train_rows}) < 2:
        raise ValueError(f"the runs give {len(train_rows)} training rows; both right and wrong images are needed")
    set_seed(cfg.seed)
    model, processor = build_critic(cfg.model)
    mix, mix_record = training_mix(as_dataset(train_rows), tcfg, processor)
    log(f"reward model: {len(mix)} training rows, {len(test_rows)} held out")
    ckpts = work / "checkpoints"
    trainer = make_trainer(tcfg, model, processor, mix, ckpts, dev)
    resume = last_checkpoint(ckpts)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    record = {"command": command_line(), "config": cfg.model_dump(), "runs": [str(r) for r in run_dirs],
              "steps": trainer.state.global_step, "data": mix_record,
              "wall_seconds": round(time.perf_counter() - t0, 1), "device": str(dev),
              "git_commit": git_commit(), "seed": cfg.seed}
    out = export_critic(trainer.model.to("cpu"), processor, export, record)
    report = None
    if test_rows:
        reward = LearnedReward(out)
        report = evaluate(reward, [r["prompt"] for r in test_rows], [r["image"] for r in test_rows],
                          [r["verdict"] == RIGHT for r in test_rows])
        (out / "eval_held_out.json").write_text(json.dumps(report.model_dump() | {"gap": report.gap}, indent=2) + "\n")
    return out, report
