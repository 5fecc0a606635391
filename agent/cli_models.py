"""`refloop world train ...` and `refloop world eval ...`: the embedded models' recipes and report cards."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from model.shapeworld.pipeline import DEFAULT_GUIDANCE

train_app = typer.Typer(help="Train the embedded ShapeWorld models (seeded, resumable).", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate the embedded ShapeWorld models against the world's verifier.",
                       no_args_is_help=True)
console = Console()
errors = Console(stderr=True, soft_wrap=True)


def bad_input(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


@train_app.command("generator")
def train_generator_cmd(
    config: Path = typer.Option(None, "--config", "-c", help="YAML recipe (default: configs/generator.yaml's values)."),
    work: Path = typer.Option(Path("runs/train-generator"), help="Checkpoints; rerun the same command to resume."),
    export: Path = typer.Option(None, help="Pipeline folder to write (default: the shipped generator's folder)."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
    export_only: bool = typer.Option(False, help="Export the latest checkpoints as they are; train nothing."),
) -> None:
    """Train the generator/editor: autoencoder, denoiser + text encoder, decoder sharpening."""
    from model.shapeworld.config import GeneratorConfig
    from model.shapeworld.pipeline import DEFAULT_GENERATOR
    from model.shapeworld.train_generator import export_checkpoint, train_generator

    try:
        cfg = GeneratorConfig.load(config)
    except ValueError as e:
        raise bad_input(str(e)) from None
    if export_only:
        if not (work / "denoiser.pt").is_file():
            raise bad_input(f"no denoiser checkpoint in {work} to export")
        out = export_checkpoint(cfg, work, export or DEFAULT_GENERATOR)
    else:
        out = train_generator(cfg, work, export or DEFAULT_GENERATOR, device, log=console.print)
    console.print(f"wrote {out}")


@eval_app.command("generator")
def eval_generator_cmd(
    split: str = typer.Option("dev", help="Prompt suite: dev or test (or train)."),
    model: Path = typer.Option(None, help="Pipeline folder (default: the shipped generator)."),
    per_family: int = typer.Option(None, min=1, help="Prompts per family (default: the whole suite)."),
    steps: int = typer.Option(20, min=1, help="Denoising steps."),
    guidance: float = typer.Option(DEFAULT_GUIDANCE, help="Text guidance scale."),
    image_guidance: float = typer.Option(1.5, help="Source-image guidance scale (edits)."),
    batch_size: int = typer.Option(32, min=1),
    edits: bool = typer.Option(True, help="Also evaluate editing (rendered sources and the model's own images)."),
    cache: str = typer.Option("none", help="Also run text-to-image with a step cache: first_block or taylorseer."),
    cache_threshold: float = typer.Option(0.1, help="FirstBlockCache threshold."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Per-family accuracy judged by the world verifier, editing success, speed, cache speed-up."""
    from model.shapeworld.eval_generator import Sampling, evaluate_generator
    from model.shapeworld.pipeline import CACHES, load_generator
    from model.shapeworld.train_generator import pick_device
    from world import suite

    if cache not in CACHES:
        raise bad_input(f"unknown cache {cache!r}; choose from {', '.join(CACHES)}")
    try:
        items = suite(split, per_family)
        pipe = load_generator(model, pick_device(device))
    except (ValueError, FileNotFoundError) as e:
        raise bad_input(str(e)) from None
    sampling = Sampling(steps=steps, guidance=guidance, image_guidance=image_guidance, batch_size=batch_size)
    report = evaluate_generator(pipe, items, split, sampling, edits=edits, cache=cache,
                                cache_threshold=cache_threshold)
    print_report(report)
    if json_out:
        json_out.write_text(report.model_dump_json(indent=2))


def print_report(report) -> None:
    from rich.table import Table

    t2i, cached = report.t2i, report.t2i_cached
    table = Table("family", "n", "one-shot accuracy", *(["with cache"] if cached else []),
                  title=f"text-to-image on {report.split} ({report.sampling.steps} steps, "
                        f"guidance {report.sampling.guidance})")
    for family, score in t2i.by_family.items():
        extra = [f"{cached.by_family[family].accuracy:.3f}"] if cached else []
        table.add_row(family, str(score.n), f"{score.accuracy:.3f}", *extra)
    extra = [f"{cached.overall.accuracy:.3f}"] if cached else []
    table.add_row("[bold]overall", str(t2i.overall.n), f"[bold]{t2i.overall.accuracy:.3f}", *extra)
    if t2i.held_out.n:
        extra = [f"{cached.held_out.accuracy:.3f}"] if cached else []
        table.add_row("held-out compositions", str(t2i.held_out.n), f"{t2i.held_out.accuracy:.3f}", *extra)
    console.print(table)
    speed = f"speed: {t2i.images_per_second:.2f} images/s at batch {report.sampling.batch_size}"
    if cached:
        speed += (f"; with {report.cache} cache {cached.images_per_second:.2f} images/s "
                  f"({cached.images_per_second / t2i.images_per_second:.2f}x), accuracy "
                  f"{cached.overall.accuracy - t2i.overall.accuracy:+.3f}")
    console.print(speed)
    for name, result in (("rendered scenes", report.edit_rendered), ("the generator's own images", report.edit_own)):
        if result is None:
            continue
        table = Table("action", "n", "carried out, rest kept", title=f"edits of {name}")
        for action, score in sorted(result.by_action.items()):
            table.add_row(action, str(score.n), f"{score.accuracy:.3f}")
        table.add_row("[bold]overall", str(result.overall.n), f"[bold]{result.overall.accuracy:.3f}")
        console.print(table)


def _load(model: Path | None, device: str | None):
    from model.shapeworld.pipeline import load_generator
    from model.shapeworld.train_generator import pick_device

    try:
        return load_generator(model, pick_device(device))
    except FileNotFoundError as e:
        raise bad_input(str(e)) from None


def generate_cmd(
    prompts: list[str] = typer.Argument(..., help="One or more prompts."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG to write (a grid when several prompts)."),
    seed: int = typer.Option(0, help="Seed of the first prompt; the next ones use seed+1, ..."),
    steps: int = typer.Option(20, min=1),
    guidance: float = typer.Option(DEFAULT_GUIDANCE),
    model: Path = typer.Option(None, help="Pipeline folder (default: the shipped generator)."),
    device: str = typer.Option(None),
) -> None:
    """Generate images with the embedded generator (a neural network; the world only checks them)."""
    from world import PromptError, parse_prompt
    from world.io import grid, save_png

    try:
        texts = [parse_prompt(p).text for p in prompts]
    except PromptError as e:
        raise bad_input(str(e)) from None
    images = _load(model, device)(texts, seed=seed, num_inference_steps=steps, guidance_scale=guidance).images
    save_png(out, images[0] if len(images) == 1 else grid(images))
    console.print(f"wrote {out}")


def edit_cmd(
    image: Path = typer.Argument(..., help="A 64x64 PNG."),
    instruction: str = typer.Argument(..., help="An edit, e.g. 'make the green triangle red'."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG to write."),
    seed: int = typer.Option(0),
    steps: int = typer.Option(20, min=1),
    guidance: float = typer.Option(DEFAULT_GUIDANCE),
    image_guidance: float = typer.Option(1.5),
    model: Path = typer.Option(None, help="Pipeline folder (default: the shipped generator)."),
    device: str = typer.Option(None),
) -> None:
    """Edit an image with the embedded editor (the same network as the generator)."""
    from world import PromptError, parse_edit
    from world.io import load_png, save_png

    try:
        text = parse_edit(instruction).text
        source = load_png(image)
    except (PromptError, ValueError) as e:
        raise bad_input(str(e)) from None
    pipe = _load(model, device)
    result = pipe(text, image=source, seed=seed, num_inference_steps=steps, guidance_scale=guidance,
                  image_guidance_scale=image_guidance).images[0]
    save_png(out, result)
    console.print(f"wrote {out}")
