"""`refloop train ...`: training jobs with TRL on refloop's trajectories (seeded, resumable).

Exit codes: 0 done, 2 bad input (config, critic folder, data, work dir of another config).
Several processes: `torchrun --nproc_per_node N -m agent.cli train policy ...` or
`accelerate launch --config_file configs/accelerate-multigpu.yaml -m agent.cli train policy ...`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

train_app = typer.Typer(help="Train the policy (the critic, with TRL) on refloop's loop.", no_args_is_help=True)
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
    config: Path = typer.Option(..., "--config", "-c", help="YAML (see configs/policy-grpo.yaml)."),
    work: Path = typer.Option(Path("runs/train-policy"), help="Prompts, stages and checkpoints; rerun to resume."),
    export: Path = typer.Option(None, help="Critic folder to write (default: WORK/critic)."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
) -> None:
    """GRPO on the critic: each sampled reflection's edit is carried out by the editor and scored by
    the reward model with self-correction shaping; optional SFT warm start, DPO and LoRA."""
    from agent.train_policy import PolicyTrainConfig, PolicyTrainError, train_policy

    try:
        cfg = PolicyTrainConfig.load(config)
        train_policy(cfg, work, export, device, log=console.print)  # logs where the critic went
    except PolicyTrainError as e:
        raise bad_input(str(e)) from None


@train_app.command("reward")
def reward_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories whose rounds the verifier judged."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML (see configs/reward.yaml; default: its values)."),
    work: Path = typer.Option(Path("runs/train-reward"), help="Checkpoints; rerun to resume."),
    export: Path = typer.Option(None, help="Reward model folder to write (default: WORK/reward)."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
) -> None:
    """The learned reward model: P(image satisfies prompt), trained on the runs' verifier labels;
    reports accuracy and AUC against the verifier on held-out sessions."""
    from agent.store import StoreError
    from agent.train_reward import RewardTrainConfig, train_reward

    try:
        cfg = RewardTrainConfig.load(config)
        out, report = train_reward(cfg, runs, work, export or work / "reward", device, log=console.print)
    except (ValueError, StoreError, OSError) as e:
        raise bad_input(str(e)) from None
    console.print(f"wrote {out}")
    if report is not None:
        print_reward_reports({"held-out sessions": report})


eval_app = typer.Typer(help="Check learned models against the exact verifier.", no_args_is_help=True)


@eval_app.callback()
def eval_main() -> None:
    """Evaluations of learned models (the verifier is the ground truth)."""


@eval_app.command("reward")
def eval_reward_cmd(
    model: Path = typer.Option(..., "--model", help="Reward model folder (refloop train reward)."),
    runs: list[Path] = typer.Argument(None, help="Run directories to score too, e.g. runs of an RL-trained critic."),
    split: str = typer.Option("dev", help="Prompt suite of the fresh images."),
    per_family: int = typer.Option(20, min=1, help="Fresh images per family."),
    generator: Path = typer.Option(None, help="Model folder that draws the fresh images (default: the shipped one)."),
) -> None:
    """The hacking gap: mean learned reward minus the verifier's accuracy, with accuracy and AUC,
    on fresh generator images and on the images of the runs given."""
    from agent.store import StoreError
    from agent.train_reward import evaluate, trajectory_rows
    from model.unified.bundle import UnifiedModel
    from rewards.learned import LearnedReward
    from world import check_image, suite

    try:
        reward = LearnedReward(model)
        items = suite(split, per_family)
        drawer = UnifiedModel.load(generator)
    except (ValueError, OSError) as e:
        raise bad_input(str(e)) from None
    prompts = [i.prompt for i in items]
    images = [img for k in range(0, len(items), 32)
              for img in drawer.draw(prompts[k:k + 32], [i.seed for i in items[k:k + 32]])]
    reports = {f"fresh {split} images": evaluate(reward, prompts, images, [check_image(p, im).ok
                                                                          for p, im in zip(prompts, images)])}
    for run in runs or []:
        try:
            rows = trajectory_rows([run])
            reports[f"run {run}"] = evaluate(reward, [r["prompt"] for r in rows], [r["image"] for r in rows],
                                             [r["verdict"] == "right" for r in rows])
        except (ValueError, StoreError) as e:
            raise bad_input(f"{run}: {e}") from None
    print_reward_reports(reports)


def print_reward_reports(reports: dict) -> None:
    from rich.table import Table

    table = Table("images", "n", "right", "accuracy", "AUC", "mean learned", "verifier", "gap",
                  title="learned reward vs verifier")
    for name, r in reports.items():
        auc = "-" if r.auc is None else f"{r.auc:.3f}"
        table.add_row(name, str(r.rows), str(r.positives), f"{r.accuracy:.3f}", auc, f"{r.mean_learned:.3f}",
                      f"{r.mean_verifier:.3f}", f"{r.gap:+.3f}")
    console.print(table)
