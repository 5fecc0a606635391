"""`refloop train policy`: TRL's GRPOTrainer on the unified model; a completion is the repair step.

Arguments come from one YAML read by TrlParser into TRL's own GRPOConfig and ModelConfig
(model_name_or_path: the unified folder; use_peft / lora_*: LoRA through `peft_config`) and
PolicyArguments below (configs/grpo.yaml, configs/grpo-lora.yaml). The prompts are images of the
task's train suite, drawn now by the model, plus the images of logged runs; each prompt's image is
scored once by the reward model (`before`). GRPO samples repair steps (policies/rollout.py), the
reward function decodes and scores what they made (policies/repair_reward.py). Resumable after
a kill (rerun the command: the last complete checkpoint); several processes with torchrun or
accelerate. The export is a unified model folder (LoRA merged) with training.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.recipe import log_lines, pin_args, quiet, quiet_libraries, run_record, tensorboard, train_or_resume
from policies.repair_reward import ShapedRepairReward
from policies.rollout import RepairLogps, RepairRollout
from rewards.shaping import Shaping


@dataclass
class PolicyArguments:
    """What GRPO trains on and how it is rewarded (the rest of the YAML is TRL's GRPOConfig / ModelConfig)."""

    reward_model: str | None = field(default=None, metadata={"help": "learned reward folder (refloop train reward)"})
    reward_kind: str = field(default="learned", metadata={"help": "learned, or verifier (ablation only)"})
    allow_verifier: bool = field(default=False, metadata={"help": "say that training on the verifier is meant"})
    fresh_per_family: int = field(default=16, metadata={"help": "train-suite prompts per family drawn now"})
    rounds: str = field(default="first", metadata={"help": "which rounds of the runs' sessions: first or all"})
    wrong_share: float | None = field(default=None, metadata={
        "help": "resample the images so that this share of them scores below 0.5 by the reward (null: as drawn): "
                "a group of repair steps on an image all of them leave right teaches nothing"})
    draw_batch_size: int = 32
    max_reflection: int = field(default=96, metadata={"help": "tokens of a sampled reflection, at most"})
    image_temperature: float = field(default=1.0, metadata={"help": "sampling temperature of image codes"})
    regenerate_guidance: float = field(default=1.0, metadata={"help": "guidance of an `edit: regenerate` drawing"})
    shaping_alpha: float = 1.0
    shaping_flip_penalty: float = 1.0
    shaping_false_right_penalty: float = 1.0
    shaping_premature_penalty: float = 0.25
    shaping_confident: float = 0.8
    shaping_threshold: float = 0.5
    shaping_unreadable: float = -1.0

    def __post_init__(self):
        if self.reward_kind not in ("learned", "verifier"):
            raise ValueError(f"reward_kind must be learned or verifier, not {self.reward_kind!r}")
        if self.reward_kind == "learned" and not self.reward_model:
            raise ValueError("a learned reward needs its folder: reward_model (refloop train reward writes it)")
        if self.reward_kind == "verifier" and not self.allow_verifier:
            raise ValueError("the verifier is for evaluation: training on it is an ablation, say so with "
                             "allow_verifier: true")
        if self.wrong_share is not None and not 0 < self.wrong_share < 1:
            raise ValueError(f"wrong_share must be between 0 and 1 (exclusive), or null; got {self.wrong_share}")
        if self.rounds not in ("first", "all"):
            raise ValueError(f"rounds must be first or all, not {self.rounds!r}")

    def shaping(self) -> Shaping:
        return Shaping(**{f.name[8:]: getattr(self, f.name) for f in dataclasses.fields(self)
                          if f.name.startswith("shaping_")})


def parse_args(config: Path | None, work: Path, overrides: list[str] = ()):
    """(PolicyArguments, trl.GRPOConfig, trl.ModelConfig) from the YAML, then command-line overrides."""
    from trl import GRPOConfig, ModelConfig, TrlParser

    if config is not None and not Path(config).is_file():
        raise ValueError(f"no such config file: {config}")
    argv = (["--config", str(config)] if config else []) + [*overrides, "--output_dir", str(work / "checkpoints")]
    return TrlParser((PolicyArguments, GRPOConfig, ModelConfig)).parse_args_and_config(argv)


def build_reward(args: PolicyArguments, device: str):
    if args.reward_kind == "verifier":
        from rewards.verifier import VerifierReward
        from tasks import load_task

        return VerifierReward(load_task("shapeworld").verify)  # the prompts are ShapeWorld's (build_prompts)
    from rewards.learned import LearnedReward

    return LearnedReward(args.reward_model, device)


def build_prompts(model, reward, rows: list[dict], args: PolicyArguments, out: Path, log: Callable[[str], None]):
    """The GRPO dataset, built once into the work folder: per image its reflect prefix (`prompt`),
    the reward model's score (`before`) and the verifier's verdict (`correct`, logged only)."""
    from datasets import Dataset, load_from_disk

    from model.unified.bundle import as_canvas
    from model.unified.vq import encode
    from world import check_image, suite

    if out.is_dir():
        return load_from_disk(str(out))
    t0 = time.time()
    items = suite("train", args.fresh_per_family) if args.fresh_per_family else []
    prompts = [it.prompt for it in items] + [r["task_prompt"] for r in rows]
    families = [it.family for it in items] + [r["family"] or "" for r in rows]
    images = [im for k in range(0, len(items), args.draw_batch_size)
              for im in model.draw([it.prompt for it in items[k:k + args.draw_batch_size]],
                                   [it.seed for it in items[k:k + args.draw_batch_size]])]
    images += [np.asarray(r["images"][0].convert("RGB")) for r in rows]
    if not images:
        raise ValueError("no prompts: give runs, or fresh_per_family > 0")
    codes = [c for k in range(0, len(images), 64) for c in encode(model.vq, as_canvas(images[k:k + 64])).tolist()]
    before = [s.value for k in range(0, len(images), 64)
              for s in reward.score(prompts[k:k + 64], images[k:k + 64])]
    data = Dataset.from_dict({
        "prompt": [model.tok.decode(model.layout.reflect_prefix(p, c)) for p, c in zip(prompts, codes)],
        "task_prompt": prompts, "family": families, "before": before,
        "correct": [check_image(p, im).ok for p, im in zip(prompts, images)],
        "source": ["fresh"] * len(items) + [f"run:{r['run_id']}" for r in rows]})
    data.save_to_disk(str(out))
    log(f"prompts: {len(data)} images ({sum(data['correct'])} right by the verifier), mean reward "
        f"{np.mean(before):.3f}, built in {time.time() - t0:.0f}s")
    return data


def rebalance(data, wrong_share: float | None, seed: int):
    """The images resampled (without repeats) so that `wrong_share` of them score below 0.5 by the reward."""
    if wrong_share is None:
        return data
    low = [k for k, b in enumerate(data["before"]) if b < 0.5]
    high = [k for k, b in enumerate(data["before"]) if b >= 0.5]
    rng = np.random.default_rng([seed, 17])
    n_low, n_high = len(low), round(len(low) * (1 - wrong_share) / wrong_share)
    if n_high > len(high):  # too few right images: all of them, and the wrong ones cut to the share
        n_low, n_high = min(len(low), round(len(high) * wrong_share / (1 - wrong_share))), len(high)
    keep = [*rng.choice(low, n_low, replace=False), *rng.choice(high, n_high, replace=False)]
    return data.select(sorted(int(k) for k in keep))


def make_trainer(args: PolicyArguments, grpo, model_args, data, reward, start: Path, log: Callable[[str], None]):
    import torch
    from diffusers import VQModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer, get_peft_config

    from model.unified.sequences import Layout
    from model.unified.vq import decode

    class PolicyGRPOTrainer(RepairLogps, GRPOTrainer):
        pass

    tok = AutoTokenizer.from_pretrained(start)
    lm = AutoModelForCausalLM.from_pretrained(start)
    vq = VQModel.from_pretrained(start / "vq").eval()
    layout = Layout(tok)

    def decode_codes(codes: list[list[int]]) -> list[np.ndarray]:
        return list(decode(vq, torch.tensor(codes)))

    rollout = RepairRollout(layout, args.max_reflection, grpo.temperature, args.image_temperature,
                            args.regenerate_guidance)
    # TRL reads where a completion may end from here: after a reflection, or after an image
    ends = lm.generation_config.eos_token_id
    lm.generation_config.eos_token_id = [layout.eos, layout.eoi]
    trainer = PolicyGRPOTrainer(
        model=lm, reward_funcs=ShapedRepairReward(reward, decode_codes, args.shaping()), args=grpo,
        train_dataset=data, processing_class=tok, peft_config=get_peft_config(model_args), rollout_func=rollout,
        callbacks=[log_lines("grpo", ("loss", "reward", "reward_std", "repair/right", "repair/wrong",
                                      "repair/unreadable", "shaping/after", "eval/repaired", "eval/broke",
                                      "eval/verdict_matches_verifier", "kl"), log)])
    lm.generation_config.eos_token_id = ends  # the exported model's own, unchanged
    trainer.segment_starts = (layout.task["revise"], layout.task["draw"])
    return quiet(trainer)


def train_policy(args: PolicyArguments, grpo, model_args, rows: list[dict], runs: list[str], work: Path,
                 export: Path | None = None, log: Callable[[str], None] = print, reward=None) -> Path:
    """GRPO from the unified model named by model_args.model_name_or_path (None: the shipped one);
    returns the exported unified folder (default WORK/policy). `reward` replaces the configured one."""
    from accelerate import PartialState
    from accelerate.utils import is_peft_model

    from model.unified.bundle import DEFAULT_MODEL, UnifiedModel

    started = time.time()
    quiet_libraries()
    state = PartialState(cpu=grpo.use_cpu)
    log = log if state.is_main_process else (lambda _: None)
    work = Path(work)
    start = Path(model_args.model_name_or_path) if model_args.model_name_or_path else DEFAULT_MODEL
    with state.main_process_first():
        if state.is_main_process:
            work.mkdir(parents=True, exist_ok=True)
            pin_args(work / "args.json", {"policy": dataclasses.asdict(args), "grpo": grpo.to_dict(),
                                          "model": dataclasses.asdict(model_args), "runs": runs},
                     may_change=("max_steps", "logging_dir", "output_dir"))
    device = "cpu" if grpo.use_cpu else str(state.device)
    reward = reward if reward is not None else build_reward(args, device)
    with state.main_process_first():
        data = build_prompts(UnifiedModel.load(start), reward, rows, args, work / "prompts", log)
    data = rebalance(data, args.wrong_share, grpo.seed)
    trainer = make_trainer(args, grpo, model_args, data, reward, start, log)
    log(f"grpo: {len(data)} images x {grpo.num_generations} repair steps, {grpo.max_steps} steps on "
        f"{state.num_processes} process(es), from {start}")
    train_or_resume(trainer, log, "grpo")
    out = Path(export) if export else work / "policy"
    if state.is_main_process:
        lm = trainer.accelerator.unwrap_model(trainer.model)
        lm = lm.merge_and_unload() if is_peft_model(lm) else lm
        logs = [h for h in trainer.state.log_history if "train_runtime" not in h]
        record = run_record(started, started_from=str(start), steps=trainer.state.global_step, runs=runs,
                            config={"policy": dataclasses.asdict(args), "grpo": grpo.to_dict(),
                                    "model": dataclasses.asdict(model_args)},
                            prompts={"images": len(data), "right_by_verifier": int(sum(data["correct"])),
                                     "mean_reward_before": float(np.mean(data["before"]))},
                            last_log=logs[-1] if logs else {}, processes=state.num_processes,
                            device=device, tensorboard=tensorboard())
        policy = UnifiedModel.load(start)  # the starting folder with the trained LM: its VQ, tokenizer and the rest
        policy.lm = lm.to("cpu")
        policy.save(out, {"training.json": json.dumps(record, indent=2, default=str)})
        log(f"grpo: done, {trainer.state.global_step} steps; policy exported to {out}")
    state.wait_for_everyone()
    return out
