"""`refloop world train|eval|generate|edit|reflect`: the embedded unified model's recipe, report card
and direct use. Imported only when one of these commands runs (torch is heavy)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

train_app = typer.Typer(help="Train the embedded ShapeWorld model (seeded, resumable).", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate the embedded ShapeWorld model against the world's verifier.",
                       no_args_is_help=True)
console = Console()
errors = Console(stderr=True, soft_wrap=True)


def bad_input(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    return typer.Exit(2)


def load_model(path: Path | None, device: str | None, guidance: float | None = None,
               right_threshold: float | None = None, temperature: float | None = None,
               verdict_votes: int | None = None):
    import math

    from model.recipe import pick_device
    from model.unified.bundle import Sampling, UnifiedModel

    if guidance is not None and (not math.isfinite(guidance) or guidance < 0):
        raise bad_input(f"--guidance must be a finite number >= 0, not {guidance}")
    if temperature is not None and not (math.isfinite(temperature) and 0 <= temperature <= 10):
        raise bad_input(f"--temperature must be between 0 and 10, not {temperature}")
    if right_threshold is not None and not 0 <= right_threshold <= 1:
        raise bad_input(f"--right-threshold must be between 0 and 1, not {right_threshold}")
    if verdict_votes is not None and not 0 <= verdict_votes <= 64:
        raise bad_input(f"--verdict-votes must be between 0 and 64, not {verdict_votes}")
    try:
        with console.status("loading the unified model"):
            return UnifiedModel.load(path, str(pick_device(device)),
                                     Sampling(guidance=guidance, temperature=temperature,
                                              right_threshold=right_threshold, verdict_votes=verdict_votes))
    except (FileNotFoundError, OSError, ValueError) as e:
        raise bad_input(str(e).splitlines()[0]) from None


@train_app.command("unified")
def train_unified_cmd(
    config: Path = typer.Option(None, "--config", "-c",
                                help="YAML recipe (default: built in; configs/unified.yaml made the shipped model)."),
    work: Path = typer.Option(Path("runs/train-unified"), help="Checkpoints; rerun the same command to resume."),
    export: Path = typer.Option(None, help="Model folder to write (default: the shipped model's folder)."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
    only: str = typer.Option(None, help="Run one stage alone: vq, or decoder (beside the main run, on another core)."),
) -> None:
    """The whole recipe: VQ image tokenizer, the LM on draw/reflect/revise/edit, decoder sharpening, self-play."""
    from pydantic import ValidationError

    from agent.errors import plain_errors
    from model.unified.config import UnifiedConfig
    from model.unified.train import STAGES, train_unified

    if only is not None and only not in STAGES:
        raise bad_input(f"--only must be one of {', '.join(STAGES)}, not {only!r}")
    try:
        cfg = UnifiedConfig.load(config)
    except ValidationError as e:  # names the setting, not just "1 validation error"
        raise bad_input(plain_errors(e, str(config))) from None
    except ValueError as e:
        raise bad_input(str(e).splitlines()[0]) from None
    try:
        out = train_unified(cfg, work, export, device, log=console.print, only=only)
    except ValueError as e:
        raise bad_input(str(e)) from None
    if out is not None:  # under torchrun, rank 0 writes and says so
        console.print(f"wrote {out}")


@eval_app.command("unified")
def eval_unified_cmd(
    split: str = typer.Option("dev", help="Prompt suite: dev or test (or train)."),
    model: Path = typer.Option(None, help="Model folder (default: the shipped model)."),
    per_family: int = typer.Option(None, help="Prompts per family (default: the whole suite)."),
    guidance: float = typer.Option(None, help="Classifier-free guidance of drawings (default: the folder's, "
                                   "sampling.json)."),
    temperature: float = typer.Option(None, help="Temperature of drawings (default: the folder's)."),
    right_threshold: float = typer.Option(None, help="Verdict gate: P(right) needed to say right (default: the "
                                          "folder's calibrated value, reflect.json)."),
    verdict_votes: int = typer.Option(None, help="P(right) as the share of this many reflections sampled at "
                                      "temperature 1 that say right; 0: the greedy one's (default: reflect.json)."),
    batch_size: int = typer.Option(32, help="Rows per model call, 1 to 1024."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the report as JSON here."),
) -> None:
    """One-shot drawing, reflections (parse, verdicts, false right), revisions, edits, speed, by family."""
    from model.unified.bundle import DEFAULT_MODEL
    from model.unified.evaluate import evaluate, summary
    from world import suite

    if not 1 <= batch_size <= 1024:
        raise bad_input(f"--batch-size must be between 1 and 1024, not {batch_size}")
    if per_family is not None and not 1 <= per_family <= 1000:
        raise bad_input(f"--per-family must be between 1 and 1000, not {per_family}")
    try:
        items = suite(split, per_family)
    except ValueError as e:
        raise bad_input(str(e)) from None
    m = load_model(model, device, guidance, right_threshold, temperature, verdict_votes)
    report = evaluate(m, items, split, batch_size, log=console.print)
    card = {"split": split, "per_family": per_family, "guidance": m.settings.guidance,
            "temperature": m.settings.temperature,
            "right_threshold": m.calibrated_threshold if right_threshold is None else right_threshold,
            "verdict_votes": m.calibrated_votes if verdict_votes is None else verdict_votes,
            **summary(report),
            "seconds": round(report.seconds)}
    print_card(card)
    text = json.dumps(card, indent=2)
    if json_out:
        json_out.write_text(text)
    if (model is None or model.resolve() == DEFAULT_MODEL.resolve()) and per_family is None \
            and all(x is None for x in (right_threshold, guidance, temperature, verdict_votes)):
        (DEFAULT_MODEL / f"eval_{split}.json").write_text(text)  # the shipped model's report card


def print_card(card: dict) -> None:
    from rich.table import Table

    for section in ("one_shot", "vq_round_trip", "reflection", "revision", "edits_rendered", "speed"):
        table = Table("", section.replace("_", " "), title=None)
        for k, v in card[section].items():
            table.add_row(k, str(v))
        console.print(table)


def _prompts(prompts: list[str]) -> list[str]:
    from world import PromptError, parse_prompt

    try:
        return [parse_prompt(p).text for p in prompts]
    except PromptError as e:
        raise bad_input(str(e)) from None


def generate_cmd(
    prompts: list[str] = typer.Argument(..., help="One or more prompts."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG to write (a grid when several prompts)."),
    seed: int = typer.Option(0, help="Seed of the first prompt; the next ones use seed+1, ..."),
    guidance: float = typer.Option(None, help="Classifier-free guidance (1: none; default: the folder's)."),
    temperature: float = typer.Option(None, help="Sampling temperature (default: the folder's)."),
    model: Path = typer.Option(None, help="Model folder (default: the shipped model)."),
    device: str = typer.Option(None),
) -> None:
    """Draw prompts with the embedded model (a neural network; the world only checks its images)."""
    import numpy as np

    from world.io import grid, save_png

    texts = _prompts(prompts)
    m = load_model(model, device, guidance, temperature=temperature)
    images = m.draw(texts, [seed + i for i in range(len(texts))])
    save_png(out, images[0] if len(images) == 1 else grid(np.stack(images)))
    console.print(f"wrote {out}")


def _image(path: Path):
    from world.io import load_png

    try:
        return load_png(path)
    except (ValueError, OSError) as e:
        raise bad_input(f"cannot read the image {path}: {str(e).splitlines()[0]}") from None


def edit_cmd(
    image: Path = typer.Argument(..., help="A 64x64 PNG."),
    instruction: str = typer.Argument(..., help="An edit, e.g. 'make the green triangle red'."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG to write."),
    prompt: str = typer.Option(None, help="The prompt the image was drawn for: a revision instead of a plain edit."),
    seed: int = typer.Option(0),
    model: Path = typer.Option(None, help="Model folder (default: the shipped model)."),
    device: str = typer.Option(None),
) -> None:
    """Edit an image with the embedded model: everything the instruction does not name is kept."""
    from world import PromptError, parse_edit
    from world.io import save_png

    try:
        text = parse_edit(instruction).text
    except (PromptError, ValueError) as e:
        raise bad_input(str(e)) from None
    source = _image(image)
    m = load_model(model, device)
    if prompt:
        result = m.revise(_prompts([prompt]), [source], [text], [seed])[0]
    else:
        result = m.edit([source], [text], [seed])[0]
    save_png(out, result)
    console.print(f"wrote {out}")


def reflect_cmd(
    prompt: str = typer.Argument(..., help="The prompt the image should satisfy."),
    image: Path = typer.Argument(..., help="A 64x64 PNG."),
    model: Path = typer.Option(None, help="Model folder (default: the shipped model)."),
    verdict_votes: int = typer.Option(None, help="Reflections sampled to vote on the verdict (default: the "
                                      "folder's, reflect.json; 0: the greedy one's P(right))."),
    device: str = typer.Option(None),
) -> None:
    """The embedded model's reflection on an image: what it sees, what is wrong, its verdict, one edit."""
    source = _image(image)
    texts, p_right = load_model(model, device, verdict_votes=verdict_votes).reflect(_prompts([prompt]), [source])
    console.print(texts[0], markup=False, highlight=False)
    if p_right[0] is not None:
        console.print(f"P(right) = {p_right[0]:.3f}")
