"""`refloop train policy`: the critic as a policy, trained with TRL's GRPOTrainer.

The critic (a LLaVA VLM) reads a prompt and an image and writes a reflection that ends in ONE
edit (policies/critique.py). GRPO samples several reflections per image; each is carried out
and judged by the reward model with the self-correction shaping of rewards/shaping.py:

    unreadable         -> shaping.unreadable
    verdict "right"    -> critique_reward(before, "right")          (stop here: was it right?)
    verdict "wrong"    -> the editor carries the edit out on the image ("regenerate": the
                          generator draws the prompt anew), the reward model scores the result,
                          critique_reward(before, "wrong", after)

`before` is the reward model's score of the row's image, computed once when the prompts are
built. The reward model is a learned one; the verifier is for evaluation (it is allowed here
only with `allow_verifier: true`, for ablations), and its verdicts are only logged.

Stages, each optional but the last, each resumable: an SFT warm start (TRL SFTTrainer on SFT
exports), DPO (TRL DPOTrainer on preference exports), then GRPO. A stage's result is a critic
folder in the work dir, so a rerun skips finished stages and resumes the current one at its last
checkpoint. LoRA (peft) applies to every stage through `peft_config`; adapters are merged when a
stage's critic is saved, so the next stage and the export are plain LLaVA checkpoints.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import os
import platform
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import peft
import torch
import transformers
import trl
from accelerate import PartialState
from accelerate.utils import is_peft_model
from datasets import Dataset, Features, Image, List, Value, load_from_disk
from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from PIL import Image as PILImage
from pydantic import Field, ValidationError, model_validator
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState, PrinterCallback
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from agent.export import grpo_dataset
from agent.store import RunStore, StoreError
from model.critic.backend import DEFAULT_CRITIC
from model.critic.build import load_critic
from model.critic.train_critic import CriticTrainer, command_line, export_critic, last_checkpoint
from model.recipe import Strict, git_commit, pick_device, read_yaml
from model.roles import Editor, Generator
from model.unified.config import UnifiedBackendConfig
from policies.critique import REGENERATE, Critique, CritiqueError
from rewards.base import Reward
from rewards.learned import LearnedReward
from rewards.shaping import Shaping
from rewards.verifier import VerifierReward
from tasks.shapeworld import parse_critique
from world import check_image, suite
from world.spec import FAMILIES


class PolicyTrainError(ValueError):
    """Bad input to a policy run (config, critic folder, data, work dir): the CLI exits 2 on it."""


class ImageModel(Editor, Generator, Protocol):
    """One model in both roles, as the embedded ShapeWorld pipeline is: it edits, and it draws fresh
    rows and "regenerate"."""


# -- config ------------------------------------------------------------------------------------
class RewardConfig(Strict):
    """The reward model. `learned`: the folder `refloop train reward` exported (rewards/learned.py).
    `verifier`: the exact verifier, for ablations only."""

    kind: Literal["learned", "verifier"]
    path: str | None = None
    allow_verifier: bool = False

    @model_validator(mode="after")
    def _usable(self) -> RewardConfig:
        if self.kind == "learned" and not self.path:
            raise ValueError("a learned reward needs its path (reward.path)")
        if self.kind == "verifier" and not self.allow_verifier:
            raise ValueError("the verifier is for evaluation: training on it is an ablation, say so with "
                             "reward.allow_verifier: true")
        return self


class DataConfig(Strict):
    """Where the GRPO prompts come from; each row is a task prompt and the image a critique is about."""

    runs: list[str] = []  # run directories: their sessions' images (agent.export.grpo_dataset)
    exports: list[str] = []  # GRPO exports of run directories (agent.export.export(kind="grpo"))
    rounds: Literal["first", "all"] = "first"  # which rounds of the runs' sessions
    fresh: int = Field(64, ge=0)  # train-suite prompts drawn now by the embedded generator
    batch_size: int = Field(32, ge=1)  # generator and reward-model batch while building

    @model_validator(mode="after")
    def _some(self) -> DataConfig:
        if not (self.runs or self.exports or self.fresh):
            raise ValueError("no prompts: give data.runs, data.exports or data.fresh > 0")
        return self


class Stage(Strict):
    """What every TRL stage takes; `args` passes any other field of the stage's TRL config
    (bf16, gradient_checkpointing, deepspeed, ...)."""

    steps: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)  # per device
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr: float = Field(1e-5, gt=0)
    warmup_steps: int = Field(0, ge=0)
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    args: dict[str, Any] = {}

    trl_config: ClassVar[type] = SFTConfig  # the TRL config class `args` is checked against
    managed: ClassVar[tuple[str, ...]] = (  # set from the fields above: not in `args`
        "output_dir", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
        "warmup_steps", "logging_steps", "save_steps", "save_total_limit", "seed", "data_seed", "use_cpu", "report_to")

    @model_validator(mode="after")
    def _known_args(self) -> Stage:
        known = {f.name for f in dataclasses.fields(self.trl_config)}
        for key in self.args:
            if key not in known:
                raise ValueError(f"args.{key} is not a field of TRL's {self.trl_config.__name__}")
            if key in self.managed:
                raise ValueError(f"args.{key} is set by refloop; use this section's own field for it")
        return self


class SFTStage(Stage):
    exports: list[str] = Field(min_length=1)  # SFT exports (agent.export.export(kind="sft"))
    keep: Literal["all", "verdict_matches"] = "verdict_matches"  # rows whose verdict the verifier confirms
    lr: float = Field(1e-4, gt=0)


class DPOStage(Stage):
    exports: list[str] = Field(min_length=1)  # preference exports (agent.export.export(kind="preference"))
    beta: float = Field(0.1, gt=0)
    trl_config: ClassVar[type] = DPOConfig
    managed: ClassVar[tuple[str, ...]] = (*Stage.managed, "beta")


class GRPOStage(Stage):
    steps: int = Field(200, ge=1)
    num_generations: int = Field(4, ge=2)  # reflections sampled per image (the group)
    generation_batch_size: int | None = Field(None, ge=2)  # completions per generation, all processes
    max_completion_length: int = Field(160, ge=8)
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.04, ge=0)  # KL to the starting critic
    trl_config: ClassVar[type] = GRPOConfig
    managed: ClassVar[tuple[str, ...]] = (
        *Stage.managed, "num_generations", "generation_batch_size", "max_completion_length", "temperature", "beta")

    @model_validator(mode="after")
    def _groups(self) -> GRPOStage:
        per_step = self.batch_size * self.gradient_accumulation_steps
        if self.generation_batch_size is None and per_step % self.num_generations:
            raise ValueError(f"batch_size x gradient_accumulation_steps ({per_step}) must be a multiple of "
                             f"num_generations ({self.num_generations}): a step holds whole groups")
        if self.generation_batch_size is not None and self.generation_batch_size % self.num_generations:
            raise ValueError(f"generation_batch_size ({self.generation_batch_size}) must be a multiple of "
                             f"num_generations ({self.num_generations})")
        return self


class LoraSettings(Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    # the attention projections of the language model (o_proj) and the vision tower (out_proj is left out);
    # never lm_head: GRPO computes log-probabilities from its weight directly
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]

    @model_validator(mode="after")
    def _no_head(self) -> LoraSettings:
        if "lm_head" in self.target_modules:
            raise ValueError("lora.target_modules cannot hold lm_head (TRL reads its weight directly)")
        return self

    def peft_config(self) -> peft.LoraConfig:
        return peft.LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                               target_modules=list(self.target_modules), task_type="CAUSAL_LM")


class PolicyTrainConfig(Strict):
    seed: int = 0
    critic: str | None = None  # the critic folder to start from; None: the shipped critic
    editor: UnifiedBackendConfig = UnifiedBackendConfig()  # also draws fresh rows and carries out "regenerate"
    reward: RewardConfig
    shaping: Shaping = Shaping()
    data: DataConfig = DataConfig()
    sft_warm_start: SFTStage | None = None
    dpo: DPOStage | None = None
    grpo: GRPOStage = GRPOStage()
    lora: LoraSettings | None = None

    @classmethod
    def load(cls, path: str | Path) -> PolicyTrainConfig:
        """YAML -> config; PolicyTrainError says what is wrong, field by field."""
        try:
            data = read_yaml(path)
        except ValueError as e:
            raise PolicyTrainError(str(e)) from None
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            where = "; ".join(".".join(map(str, err["loc"])) + f": {err['msg']}" for err in e.errors())
            raise PolicyTrainError(f"invalid policy config {path}: {where}") from None

    def resumable_with(self, other: PolicyTrainConfig) -> bool:
        """A work dir belongs to one config, but for grpo.steps: rerun with more steps to train on."""
        strip = {"grpo": {"steps"}}
        return self.model_dump(exclude=strip) == other.model_dump(exclude=strip)


def critic_folder(cfg: PolicyTrainConfig) -> Path:
    path = Path(cfg.critic) if cfg.critic else DEFAULT_CRITIC
    if not (path / "config.json").is_file():
        hint = ("the shipped critic is not trained yet: train one (refloop world train critic) or give its folder "
                "as `critic:` in the config") if cfg.critic is None else "give the folder of a saved critic"
        raise PolicyTrainError(f"no critic at {path}: {hint}")
    return path


# -- the reward model --------------------------------------------------------------------------
def build_reward(cfg: RewardConfig) -> Reward:
    """The reward model named by the config: the verifier (ablations), or a learned one."""
    if cfg.kind == "verifier":
        return VerifierReward(check_image)
    try:
        reward = LearnedReward(cfg.path)
    except (OSError, ValueError) as e:
        raise PolicyTrainError(f"cannot load the learned reward at {cfg.path}: {e}") from None
    return reward


# -- GRPO prompts ------------------------------------------------------------------------------
MESSAGES = List({"role": Value("string"), "content": Value("string")})
PROMPT_FEATURES = Features({
    "images": List(Image()), "prompt": MESSAGES, "task_prompt": Value("string"), "family": Value("string"),
    "source": Value("string"), "next_seed": Value("int64"), "before": Value("float64"), "correct": Value("bool"),
})


def user_turn(task_prompt: str) -> list[dict]:
    """The critic's question is the bare task prompt after the image, as critic_inputs asks it
    (the exports' wording is for general VLMs: the critic's word-level vocabulary lacks it)."""
    return [{"role": "user", "content": task_prompt}]


def pixels(image) -> np.ndarray:
    """A row's image (PIL, array, or a one-image list) as uint8 (H, W, 3)."""
    if isinstance(image, list | tuple):
        image = image[0]
    return np.asarray(image.convert("RGB")) if isinstance(image, PILImage.Image) else np.asarray(image, np.uint8)


def fresh_rows(n: int, generator: Generator, batch_size: int) -> list[dict]:
    """n train-suite prompts, families in turn, drawn by the embedded generator. The correction
    of a round-0 image uses seed + 1, as the loop does (round r's seed is seed + r)."""
    if n == 0:
        return []
    per_family = math.ceil(n / len(FAMILIES))
    items = suite("train", per_family=per_family)
    items = [items[f * per_family + i] for i in range(per_family) for f in range(len(FAMILIES))][:n]
    rows = []
    for k in range(0, len(items), batch_size):
        chunk = items[k:k + batch_size]
        images = generator.generate([it.prompt for it in chunk], [it.seed for it in chunk])
        rows += [{"image": img, "task_prompt": it.prompt, "family": it.family, "source": "fresh",
                  "next_seed": it.seed + 1} for it, img in zip(chunk, images)]
    return rows


def grpo_export_rows(ds: Dataset, source: str) -> list[dict]:
    """Rows of a GRPO export (agent.export.grpo_dataset): its images and task prompts."""
    return [{"image": pixels(r["images"]), "task_prompt": r["task_prompt"], "family": r["family"],
             "source": f"{source}:{r['run_id']}", "next_seed": r["seed"] + r["round"] + 1} for r in ds]


def source_rows(cfg: DataConfig, generator: Generator) -> list[dict]:
    rows = []
    for run in cfg.runs:
        try:
            rows += grpo_export_rows(grpo_dataset(RunStore.open(run), rounds=cfg.rounds), "run")
        except (StoreError, FileNotFoundError) as e:
            raise PolicyTrainError(f"cannot read run {run}: {e}") from None
    for path in cfg.exports:
        if not Path(path).is_dir():
            raise PolicyTrainError(f"no GRPO export at {path}")
        rows += grpo_export_rows(load_from_disk(path), "export")
    return rows + fresh_rows(cfg.fresh, generator, cfg.batch_size)


def build_prompts(cfg: DataConfig, generator: Generator | None, reward: Reward | None, out: Path,
                  log: Callable[[str], None]) -> Dataset:
    """The GRPO dataset, built once and saved in the work dir (sampling the generator is slow):
    each row's `before` is the reward model's score of its image; `correct` is the verifier's
    verdict, logged against the critic's verdicts (evaluation only, never a reward)."""
    if out.is_dir():
        return load_from_disk(str(out))
    t0 = time.perf_counter()
    rows = source_rows(cfg, generator)
    if not rows:
        raise PolicyTrainError("the runs and exports given hold no sessions")
    before = []
    for k in range(0, len(rows), cfg.batch_size):
        chunk = rows[k:k + cfg.batch_size]
        before += [s.value for s in reward.score([r["task_prompt"] for r in chunk], [r["image"] for r in chunk])]
    data = Dataset.from_dict({
        "images": [[PILImage.fromarray(r["image"])] for r in rows],  # PNG in the dataset: lossless
        "prompt": [user_turn(r["task_prompt"]) for r in rows],
        "task_prompt": [r["task_prompt"] for r in rows], "family": [r["family"] for r in rows],
        "source": [r["source"] for r in rows], "next_seed": [r["next_seed"] for r in rows], "before": before,
        "correct": [check_image(r["task_prompt"], r["image"]).ok for r in rows],
    }, features=PROMPT_FEATURES)
    save_dataset(data, out)
    log(f"prompts: {len(data)} rows ({sum(data['correct'])} right by the verifier), mean reward before "
        f"{np.mean(before):.3f}, built in {time.perf_counter() - t0:.1f}s")
    return data


def save_dataset(data: Dataset, out: Path) -> None:
    """Atomically, without a progress bar in the training log."""
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    quiet = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        data.save_to_disk(str(tmp))
    finally:
        if not quiet:
            enable_progress_bars()
    os.replace(tmp, out)


# -- the GRPO reward function ------------------------------------------------------------------
def completion_text(completion) -> str:
    """TRL passes conversational completions as [{"role": "assistant", "content": text}]."""
    return completion[-1]["content"] if isinstance(completion, list) else completion


def read(text: str) -> Critique | None:
    try:
        return parse_critique(text)
    except CritiqueError:
        return None


class ShapedCritiqueReward:
    """TRL reward function (`reward_func(prompts, completions, **columns)`): each critique carried out
    and shaped. The editor and the reward model run once per call on the completions that said
    "wrong" (deduplicated: a group often repeats an instruction), so a step costs one batched edit,
    at most one batched regeneration, and one batched scoring."""

    __name__ = "shaped_critique"  # TRL names the logged reward after it

    def __init__(self, reward: Reward, editor: Editor, generator: Generator, shaping: Shaping):
        self.reward, self.editor, self.generator, self.shaping = reward, editor, generator, shaping

    def __call__(self, prompts: list, completions: list, images: list, task_prompt: list[str], before: list[float],
                 next_seed: list[int], correct: list[bool] | None = None,
                 log_metric: Callable[[str, float], None] | None = None, **_) -> list[float]:
        critiques = [read(completion_text(c)) for c in completions]
        wrong = [i for i, c in enumerate(critiques) if c is not None and c.verdict == "wrong"]
        after = self.carry_out(wrong, critiques, images, task_prompt, next_seed)
        shaped = [self.shaping.critique_reward(before[i], c.verdict if c else None, after.get(i))
                  for i, c in enumerate(critiques)]
        if log_metric is not None:
            for name, value in self.parts(critiques, before, after, shaped, correct):
                log_metric(name, value)
        return shaped

    def carry_out(self, wrong: list[int], critiques: list[Critique | None], images: list, task_prompt: list[str],
                  next_seed: list[int]) -> dict[int, float]:
        """Reward-model score of the image each wrong critique's instruction makes, by completion index."""
        jobs: dict[tuple, list[int]] = {}  # one edit or regeneration per distinct (image, instruction, seed)
        for i in wrong:
            instruction = critiques[i].instruction
            source = None if instruction == REGENERATE else pixels(images[i])
            key = (task_prompt[i] if source is None else source.tobytes(), instruction, next_seed[i])
            jobs.setdefault(key, []).append(i)
        edits = [(k, v[0]) for k, v in jobs.items() if k[1] != REGENERATE]
        regens = [(k, v[0]) for k, v in jobs.items() if k[1] == REGENERATE]
        made: dict[tuple, np.ndarray] = {}
        if edits:
            out = self.editor.edit([pixels(images[i]) for _, i in edits], [critiques[i].instruction for _, i in edits],
                                   [next_seed[i] for _, i in edits])
            made.update(zip([k for k, _ in edits], out))
        if regens:
            out = self.generator.generate([task_prompt[i] for _, i in regens], [next_seed[i] for _, i in regens])
            made.update(zip([k for k, _ in regens], out))
        if not made:
            return {}
        keys = list(made)
        scores = self.reward.score([task_prompt[jobs[k][0]] for k in keys], [made[k] for k in keys])
        return {i: s.value for k, s in zip(keys, scores) for i in jobs[k]}

    def parts(self, critiques: list[Critique | None], before: list[float], after: dict[int, float],
              shaped: list[float], correct: list[bool] | None) -> list[tuple[str, float]]:
        """Per-completion values for TRL's log_metric (averaged over completions and processes): what
        the critic said, and the shaped reward's parts. Penalties are read off the shaped value
        (total minus its base and improvement), so they always agree with rewards/shaping.py."""
        out = []
        alpha = self.shaping.alpha
        for i, c in enumerate(critiques):
            verdict = c.verdict if c else None
            out += [("critique/unreadable", float(c is None)), ("critique/right", float(verdict == "right")),
                    ("critique/wrong", float(verdict == "wrong")), ("shaping/before", before[i]),
                    ("shaping/reward", shaped[i])]
            if verdict == "wrong":
                improvement = alpha * (after[i] - before[i])
                out += [("critique/regenerate", float(c.instruction == REGENERATE)), ("shaping/after", after[i]),
                        ("shaping/improvement", improvement),
                        ("shaping/flip_penalty", after[i] + improvement - shaped[i])]
            if verdict == "right":
                out.append(("shaping/false_right_penalty", before[i] - shaped[i]))
            if correct is not None and verdict is not None:
                out.append(("eval/verdict_matches_verifier", float((verdict == "right") == correct[i])))
        return out


# -- trainers ----------------------------------------------------------------------------------
class LlavaResume:
    """Resuming a full-model run: Trainer reads a checkpoint with a plain load_state_dict that
    matches none of LLaVA's saved keys and goes on from the starting weights (transformers #43701);
    the critic recipe's fix reads it as from_pretrained does. Adapters (LoRA) load fine as they are."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if is_peft_model(model or self.model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        return CriticTrainer._load_from_checkpoint(self, resume_from_checkpoint, model)


class PolicySFTTrainer(LlavaResume, SFTTrainer):
    pass


class PolicyDPOTrainer(LlavaResume, DPOTrainer):
    pass


class PolicyGRPOTrainer(LlavaResume, GRPOTrainer):
    pass


def tensorboard() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


# transformers 5 renamed gradient_checkpointing (TRL turns it on by default; the critic is too small to need it)
CHECKPOINTING = next(f.name for f in dataclasses.fields(GRPOConfig)
                     if f.name in ("activation_checkpointing", "gradient_checkpointing"))


def trl_args(stage: Stage, out: Path, device: torch.device, seed: int, **extra) -> Any:
    """The stage's TRL config: CPU-safe defaults (fp32, no gradient checkpointing: the critic is
    small), then the stage's own `args`."""
    defaults = {"bf16": False, "disable_tqdm": True, "dataloader_pin_memory": device.type == "cuda",
                "restore_callback_states_from_checkpoint": True}
    if not {"gradient_checkpointing", "activation_checkpointing"} & set(stage.args):
        defaults[CHECKPOINTING] = False
    return stage.trl_config(
        output_dir=str(out), max_steps=stage.steps, per_device_train_batch_size=stage.batch_size,
        gradient_accumulation_steps=stage.gradient_accumulation_steps, learning_rate=stage.lr,
        warmup_steps=stage.warmup_steps, logging_steps=stage.logging_steps, save_steps=stage.save_steps,
        save_total_limit=stage.save_total_limit, seed=seed, data_seed=seed, use_cpu=device.type == "cpu",
        report_to=["tensorboard"] if tensorboard() else "none", **{**defaults, **extra, **stage.args})


class Clock(TrainerCallback, ExportableState):
    """Training wall time, kept in every checkpoint so that a resumed run goes on counting."""

    def __init__(self):
        self.seconds = 0.0
        self._since = time.perf_counter()

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self._since

    def state(self) -> dict:
        return {"args": {}, "attributes": {"seconds": self.elapsed()}}


class Progress(TrainerCallback):
    """One line per logging step on the main process: the shaped reward, what the critic said, time."""

    def __init__(self, stage: str, log: Callable[[str], None]):
        self.stage, self.log = stage, log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        shown = ["loss", "reward", "reward_std", "critique/right", "critique/wrong", "critique/unreadable",
                 "shaping/after", "eval/verdict_matches_verifier", "rewards/margins", "step_time"]
        parts = [f"{k.split('/')[-1]} {logs[k]:.3g}" for k in shown if isinstance(logs.get(k), int | float)]
        self.log(f"{self.stage} step {state.global_step}/{state.max_steps}: " + ", ".join(parts))


def quiet(trainer):
    """Progress prints one line per log; Trainer's PrinterCallback (disable_tqdm) would print every metric again."""
    trainer.remove_callback(PrinterCallback)
    return trainer


def clock(trainer) -> Clock:
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, Clock))


def run(trainer, checkpoints: Path, state: PartialState, log: Callable[[str], None], stage: str) -> None:
    """Train, resuming at the last complete checkpoint (the main process clears cut-off ones first)."""
    with state.main_process_first():
        resume = last_checkpoint(checkpoints)
    if resume is not None:
        log(f"{stage}: resuming at {resume.name}")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)


def merged(trainer):
    """The trained critic as a plain LLaVA model: LoRA adapters merged in."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return model.merge_and_unload() if is_peft_model(model) else model


def save_stage(trainer, processor, out: Path, record: dict, state: PartialState) -> Path:
    """The stage's critic, written once by the main process; every process waits for it."""
    if state.is_main_process:
        export_critic(merged(trainer).to("cpu"), processor, out, record)
    state.wait_for_everyone()
    return out


def stage_record(trainer, stage: str, start: Path) -> dict:
    logs = [h for h in trainer.state.log_history if "train_runtime" not in h]
    return {"stage": stage, "started_from": str(start), "steps": trainer.state.global_step,
            "wall_seconds": round(clock(trainer).elapsed(), 1), "last_log": logs[-1] if logs else {}}


# -- SFT and DPO -------------------------------------------------------------------------------
def load_exports(paths: Sequence[str], kind: str) -> list[Dataset]:
    missing = [p for p in paths if not Path(p).is_dir()]
    if missing:
        raise PolicyTrainError(f"no {kind} export at {', '.join(missing)}")
    return [load_from_disk(p) for p in paths]


def sft_data(stage: SFTStage) -> Dataset:
    """SFT exports as prompt-completion rows in the critic's own chat (TRL's vision collator then
    builds exactly critic_inputs' batches, loss on the reflection only). With keep=verdict_matches,
    only critiques whose verdict the verifier confirms (labelling training data)."""
    rows = {"images": [], "prompt": [], "completion": []}
    for ds in load_exports(stage.exports, "SFT"):
        for r in ds:
            if stage.keep == "verdict_matches" and (r["verdict"] is None or (r["verdict"] == "right") != r["correct"]):
                continue
            answer = r["messages"][-1] if "messages" in r else r["completion"][-1]
            rows["images"].append(r["images"])
            rows["prompt"].append(user_turn(r["task_prompt"]))
            rows["completion"].append([{"role": "assistant", "content": answer["content"]}])
    if not rows["images"]:
        raise PolicyTrainError("the SFT exports hold no rows to train on"
                               + (" (keep: verdict_matches left none)" if stage.keep == "verdict_matches" else ""))
    return Dataset.from_dict(rows, features=Features({"images": List(Image()), "prompt": MESSAGES,
                                                      "completion": MESSAGES}))


def dpo_data(stage: DPOStage) -> Dataset:
    """Preference exports, the prompt rewritten in the critic's own chat."""
    rows = {"images": [], "prompt": [], "chosen": [], "rejected": []}
    for ds in load_exports(stage.exports, "preference"):
        for r in ds:
            rows["images"].append(r["images"])
            rows["prompt"].append(user_turn(r["task_prompt"]))
            rows["chosen"].append(r["chosen"])
            rows["rejected"].append(r["rejected"])
    if not rows["images"]:
        raise PolicyTrainError("the preference exports hold no pairs")
    return Dataset.from_dict(rows, features=Features({"images": List(Image()), "prompt": MESSAGES,
                                                      "chosen": MESSAGES, "rejected": MESSAGES}))


def supervised_stage(name: str, cfg: PolicyTrainConfig, start: Path, work: Path, device: torch.device,
                     state: PartialState, log: Callable[[str], None]) -> Path:
    """SFT warm start or DPO from `start`; returns the folder of the critic it made (reused on rerun)."""
    stage = cfg.sft_warm_start if name == "sft" else cfg.dpo
    out, checkpoints = work / name / "critic", work / name / "checkpoints"
    if (out / "config.json").is_file():
        log(f"{name}: done earlier ({out})")
        return out
    model, processor = load_critic(start)
    peft_config = cfg.lora.peft_config() if cfg.lora else None
    callbacks = [Clock(), Progress(name, log)]
    if name == "sft":
        args = trl_args(stage, checkpoints, device, cfg.seed, max_length=None)
        trainer = PolicySFTTrainer(model=model, args=args, train_dataset=sft_data(stage), processing_class=processor,
                                   peft_config=peft_config, callbacks=callbacks)
    else:
        args = trl_args(stage, checkpoints, device, cfg.seed, max_length=None, beta=stage.beta)
        trainer = PolicyDPOTrainer(model=model, args=args, train_dataset=dpo_data(stage), processing_class=processor,
                                   peft_config=peft_config, callbacks=callbacks)
    quiet(trainer)
    log(f"{name}: {len(trainer.train_dataset)} rows, {stage.steps} steps from {start}")
    run(trainer, checkpoints, state, log, name)
    return save_stage(trainer, processor, out, stage_record(trainer, name, start), state)


# -- GRPO --------------------------------------------------------------------------------------
def check_lengths(processor, model, data: Dataset, max_completion_length: int) -> None:
    """A prompt (image tokens included) plus the longest completion must fit the critic."""
    limit = model.config.get_text_config().max_position_embeddings
    image_tokens = model.config.image_seq_length
    longest = max(len(ids) for ids in processor.tokenizer(list(set(data["task_prompt"])))["input_ids"])
    need = image_tokens + longest + 3 + max_completion_length  # <bos> <user> <critic>
    if need > limit:
        raise PolicyTrainError(f"grpo.max_completion_length {max_completion_length} is too long for this critic: "
                               f"{image_tokens} image tokens + a prompt of up to {longest} + 3 specials + "
                               f"{max_completion_length} > its {limit} positions")


def make_grpo_trainer(cfg: PolicyTrainConfig, start: Path, data: Dataset, reward_func: ShapedCritiqueReward,
                      out: Path, device: torch.device, log: Callable[[str], None] = print) -> PolicyGRPOTrainer:
    """TRL's GRPOTrainer on the critic: conversational prompts with an `images` column, the critic's
    processor as processing_class (its chat template puts <image> where TRL puts the image part)."""
    g = cfg.grpo
    model, processor = load_critic(start)
    check_lengths(processor, model, data, g.max_completion_length)
    args = trl_args(g, out, device, cfg.seed, num_generations=g.num_generations,
                    generation_batch_size=g.generation_batch_size, max_completion_length=g.max_completion_length,
                    temperature=g.temperature, beta=g.beta, log_completions=False)
    return quiet(PolicyGRPOTrainer(
        model=model, reward_funcs=reward_func, args=args, train_dataset=data, processing_class=processor,
        peft_config=cfg.lora.peft_config() if cfg.lora else None, callbacks=[Clock(), Progress("grpo", log)]))


# -- the run -----------------------------------------------------------------------------------
def check_work(work: Path, cfg: PolicyTrainConfig, write: bool = True) -> None:
    """A work dir belongs to one config (grpo.steps may grow): resuming it with another would mix runs."""
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "config.json"
    if saved.is_file():
        if not PolicyTrainConfig.model_validate_json(saved.read_text()).resumable_with(cfg):
            raise PolicyTrainError(f"{work} was started with another config ({saved}); use a new --work folder "
                                   "or delete that one")
    if not write:
        return
    tmp = saved.with_name(f".{saved.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(cfg.model_dump_json(indent=2))
    os.replace(tmp, saved)


def device_name(dev: torch.device) -> str:
    return str(dev) + ("" if dev.type == "cpu" else f" ({torch.cuda.get_device_name(dev)})")


def training_record(cfg: PolicyTrainConfig, trainer, data: Dataset, reward: Reward, stages: dict, dev: torch.device,
                    processes: int, session_seconds: float) -> dict:
    """training.json: how the exported critic was made."""
    return {
        "command": command_line(),
        "config": cfg.model_dump(),
        "stages": stages,
        "steps": trainer.state.global_step,
        "prompts": {"rows": len(data), "right_by_verifier": int(sum(data["correct"])),
                    "mean_reward_before": float(np.mean(data["before"]))},
        "reward_model": {**cfg.reward.model_dump(), "object": type(reward).__name__},
        "wall_seconds": {"grpo": round(clock(trainer).elapsed(), 1), "this_session": round(session_seconds, 1)},
        "tensorboard": tensorboard(),
        "device": device_name(dev),
        "processes": processes,
        "cpu_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "peft": peft.__version__},
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "seed": cfg.seed,
    }


def embedded_images(cfg: PolicyTrainConfig, dev: torch.device):
    """The embedded unified model as editor and generator, on the training device unless the config
    pins it elsewhere."""
    from model.unified.backend import UnifiedRoles

    pinned = "device" in cfg.editor.model_fields_set
    return UnifiedRoles(cfg.editor if pinned else cfg.editor.model_copy(update={"device": str(dev)}))


def train_policy(cfg: PolicyTrainConfig, work: Path, export: Path | None = None, device: str | None = None,
                 log: Callable[[str], None] = print, reward: Reward | None = None,
                 images: ImageModel | None = None) -> Path:
    """Every stage of the config, resumable; returns the exported critic folder (default work/critic).
    `reward` and `images` replace the config's reward model and editor (tests, notebooks)."""
    t0 = time.perf_counter()
    work, start, dev = Path(work), critic_folder(cfg), pick_device(device)
    state = PartialState(cpu=dev.type == "cpu")
    if state.num_processes > 1 and dev.type == "cuda":
        dev = state.device  # each process trains, edits and generates on its own GPU
    log = log if state.is_main_process else (lambda _: None)  # one log, not one per process
    with state.main_process_first():
        check_work(work, cfg, write=state.is_main_process)
    if not tensorboard():
        log("tensorboard is not installed: no TensorBoard logs (pip install tensorboard); metrics are in "
            "the checkpoints' trainer_state.json and training.json")
    reward = reward if reward is not None else build_reward(cfg.reward)
    images = images if images is not None else embedded_images(cfg, dev)
    with state.main_process_first():
        data = build_prompts(cfg.data, images, reward, work / "prompts", log)

    stages = {}
    for name, stage in (("sft", cfg.sft_warm_start), ("dpo", cfg.dpo)):
        if stage is not None:
            start = supervised_stage(name, cfg, start, work, dev, state, log)
            stages[name] = json.loads((start / "training.json").read_text())

    checkpoints = work / "grpo" / "checkpoints"
    trainer = make_grpo_trainer(cfg, start, data, ShapedCritiqueReward(reward, images, images, cfg.shaping),
                                checkpoints, dev, log)
    log(f"grpo: {len(data)} prompts x {cfg.grpo.num_generations} reflections, {cfg.grpo.steps} steps on "
        f"{state.num_processes} process(es), from {start}")
    run(trainer, checkpoints, state, log, "grpo")
    stages["grpo"] = stage_record(trainer, "grpo", start)
    record = training_record(cfg, trainer, data, reward, stages, dev, state.num_processes, time.perf_counter() - t0)
    out = save_stage(trainer, trainer.processing_class, Path(export) if export else work / "critic", record, state)
    log(f"grpo: done, {trainer.state.global_step} steps; critic exported to {out}")
    return out
