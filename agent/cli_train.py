"""`refloop train ...`: training jobs with TRL on refloop's trajectories (seeded, resumable).

Exit codes: 0 done, 2 bad input (config, model folder, data, work dir of another config).
Several processes: `torchrun --nproc_per_node N -m agent.cli train policy ...` or
`accelerate launch --config_file configs/accelerate-multigpu.yaml -m agent.cli train policy ...`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

train_app = typer.Typer(help="Train the learned reward and the policy (the unified model) with TRL.",
                        no_args_is_help=True)
console = Console()
errors = Console(stderr=True, soft_wrap=True)


@train_app.callback()
def train_main() -> None:
    """Training jobs with TRL: rerun a command with the same --work to resume it."""


def bad_input(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


@train_app.command("policy")
def policy_cmd(
    runs: list[Path] = typer.Argument(None, help="Run directories whose images are prompts too (optional)."),
    config: Path = typer.Option(..., "--config", "-c", help="YAML (see configs/grpo.yaml, configs/grpo-lora.yaml)."),
    work: Path = typer.Option(Path("runs/train-policy"), help="Prompts and checkpoints; rerun to resume."),
    export: Path = typer.Option(None, help="Unified model folder to write (default: WORK/policy)."),
    sets: list[str] = typer.Option(None, "--set", help="key=value over the YAML (repeatable), e.g. --set max_steps=5"),
) -> None:
    """GRPO on the unified model: each completion is a repair step (reflection, then the revised
    image), decoded and scored by the learned reward with self-correction shaping; LoRA optional."""
    from agent.store import StoreError
    from policies.grpo import parse_args, train_policy

    try:
        args, grpo, model_args = parse_args(config, work, overrides(sets))
        rows = [r for r in run_rows(runs or []) if args.rounds == "all" or r["round"] == 0]
        train_policy(args, grpo, model_args, rows, [str(r) for r in runs or []], work, export, log=console.print)
    except (ValueError, StoreError, OSError) as e:
        raise bad_input(str(e)) from None


def overrides(pairs: list[str] | None) -> list[str]:
    """--set key=value ... -> TrlParser's command-line form (--key value), which wins over the YAML."""
    out = []
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"--set {pair!r}: expected key=value, e.g. --set max_steps=50")
        out += [f"--{key}", value]
    return out


SET_HELP = "key=value over the YAML (repeatable), e.g. --set max_steps=50"


def run_rows(runs: list[Path]) -> list[dict]:
    """Every judged round of the runs' sessions (agent.export.grpo_dataset rows, images as PIL)."""
    from agent.export import grpo_dataset
    from agent.store import RunStore

    return [r for run in runs for r in grpo_dataset(RunStore.open(run), rounds="all", include_unfinished=True)]


@train_app.command("reward")
def reward_cmd(
    runs: list[Path] = typer.Argument(None, help="Run directories whose rounds the verifier judged."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML (see configs/reward.yaml; default: its values)."),
    work: Path = typer.Option(Path("runs/train-reward"), help="Judged images and checkpoints; rerun to resume."),
    export: Path = typer.Option(None, help="Reward folder to write (default: WORK/reward)."),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """The learned reward (TRL RewardTrainer on the unified LM with a scalar head): right-vs-wrong pairs
    of the runs' sessions and of fresh drawings, labelled by the verifier; reports held-out pairwise
    accuracy, AUC, calibration and the gap."""
    from agent.store import StoreError
    from rewards.train import parse_args, train_reward

    try:
        data, args = parse_args(config, work, overrides(sets))
        rows = run_rows(runs or [])
        out, report = train_reward(data, args, rows, [str(r) for r in runs or []], work, export or work / "reward",
                                   log=console.print)
    except (ValueError, StoreError, OSError) as e:
        raise bad_input(str(e)) from None
    console.print(f"wrote {out}")
    if report is not None:
        print_reward_reports({"held-out sessions and prompts": report})


eval_app = typer.Typer(help="Check learned models against the exact verifier.", no_args_is_help=True)


@eval_app.callback()
def eval_main() -> None:
    """Evaluations of learned models (the verifier is the ground truth)."""


@eval_app.command("reward")
def eval_reward_cmd(
    model: Path = typer.Option(..., "--model", help="Reward folder (refloop train reward)."),
    runs: list[Path] = typer.Argument(None, help="Run directories to score too, e.g. runs of the RL-trained policy."),
    split: str = typer.Option("dev", help="Prompt suite of the fresh images."),
    per_family: int = typer.Option(20, min=1, help="Fresh images per family."),
    generator: Path = typer.Option(None, help="Unified model that draws the fresh images (default: the shipped one)."),
    policy: Path = typer.Option(None, help="RL-trained unified model: its drawings and its repairs of them too."),
) -> None:
    """The hacking gap: mean learned P(right) minus the verifier's rate, with accuracy, AUC and ECE,
    on fresh drawings, on an RL-trained policy's drawings and repairs, and on the runs' rounds."""
    import numpy as np

    from agent.store import StoreError
    from model.unified.bundle import UnifiedModel
    from rewards.hacking import hacking_gap
    from rewards.learned import LearnedReward

    try:
        reward = LearnedReward(model)
        drawer = UnifiedModel.load(generator)
        rl = UnifiedModel.load(policy) if policy else None
        logged = {}
        for run in runs or []:
            rows = [r for r in run_rows([run]) if r["correct"] is not None]
            if not rows:
                raise ValueError(f"{run}: no round the verifier judged")
            logged[f"run {run.name}"] = ([r["task_prompt"] for r in rows],
                                         [np.asarray(r["images"][0].convert("RGB")) for r in rows])
        reports = hacking_gap(reward, drawer, rl, split, per_family, logged)
    except (ValueError, OSError, StoreError) as e:
        raise bad_input(str(e)) from None
    print_reward_reports(reports)


def print_reward_reports(reports: dict) -> None:
    from rich.table import Table

    table = Table("images", "n", "right", "accuracy", "AUC", "ECE", "pairs acc", "mean learned", "verifier", "gap",
                  title="learned reward vs verifier")
    for name, r in reports.items():
        auc = "-" if r.auc is None else f"{r.auc:.3f}"
        pairs = "-" if r.pair_accuracy is None else f"{r.pair_accuracy:.3f} ({r.pairs})"
        table.add_row(name, str(r.images), str(r.right), f"{r.accuracy:.3f}", auc, f"{r.ece:.3f}", pairs,
                      f"{r.mean_learned:.3f}", f"{r.mean_verifier:.3f}", f"{r.gap:+.3f}")
    console.print(table)
