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


@train_app.command("critic")
def train_critic_cmd(
    config: Path = typer.Option(None, "--config", "-c", help="YAML recipe (default: configs/critic.yaml's values)."),
    work: Path = typer.Option(Path("runs/train-critic"), help="Data chunks and checkpoints; rerun to resume."),
    export: Path = typer.Option(None, help="Critic folder to write (default: the shipped critic's folder)."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
) -> None:
    """Train the critic: reflection data from the generator, its editor and rendered scenes, then fine-tuning."""
    from model.critic.train_critic import CriticTrainConfig, check_work, train_critic

    try:
        cfg = CriticTrainConfig.load(config)
        check_work(work, cfg)
    except ValueError as e:
        raise bad_input(str(e)) from None
    out = train_critic(cfg, work, export, device, log=console.print)
    console.print(f"wrote {out}")


@eval_app.command("critic")
def eval_critic_cmd(
    split: str = typer.Option("dev", help="Prompt suite: dev or test (or train)."),
    model: Path = typer.Option(None, help="Critic folder (default: the shipped critic)."),
    generator: Path = typer.Option(None, help="Pipeline folder of the generator/editor (default: the shipped one)."),
    per_family: int = typer.Option(None, min=1, help="Prompts per family (default: the whole suite)."),
    batch_size: int = typer.Option(32, min=1),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
    json_out: Path = typer.Option(None, "--json-out", help="Also write the report as JSON here."),
) -> None:
    """Verdicts, parse rate and fix rate of the critic on the generator's images, judged by the verifier."""
    from model.critic.backend import DEFAULT_CRITIC
    from model.critic.data import Sampling
    from model.critic.eval_critic import evaluate_critic, load_eval_critic, write_report
    from model.shapeworld.train_generator import pick_device
    from world import suite

    dev = pick_device(device)
    try:
        items = suite(split, per_family)
        critic = load_eval_critic(model, str(dev))
    except (ValueError, FileNotFoundError) as e:
        raise bad_input(str(e)) from None
    report = evaluate_critic(critic, _load(generator, device), items, split, Sampling(batch_size=batch_size),
                             str(generator or "shipped"), per_family)
    print_critic_report(report)
    if json_out:
        console.print(f"wrote {write_report(report, json_out)}")
    shipped = model is None or model.resolve() == DEFAULT_CRITIC.resolve()
    if shipped and per_family is None and generator is None:  # the shipped critic's report card, on the whole suite
        console.print(f"wrote {write_report(report, DEFAULT_CRITIC / f'eval_{split}.json')}")


def print_critic_report(report) -> None:
    from rich.table import Table

    table = Table("family", "n", "right images", "verdict accuracy", "false right", "false wrong", "parsed",
                  title=f"critic verdicts on the generator's {report.split} images")

    def row(name: str, s) -> None:
        table.add_row(name, str(s.n), str(s.right_images), f"{s.accuracy:.3f}",
                      f"{s.false_right}/{s.n - s.right_images}", f"{s.false_wrong}/{s.right_images}",
                      f"{s.parse_rate:.3f}")

    for family, score in report.by_family.items():
        row(family, score)
    row("[bold]overall", report.overall)
    if report.held_out.n:
        row("held-out compositions", report.held_out)
    console.print(table)
    o = report.overall
    console.print(f"verdict accuracy {o.accuracy:.3f}; false right rate {o.false_right_rate:.3f} (of wrong images), "
                  f"false wrong rate {o.false_wrong_rate:.3f} (of right images); reflections parsed {o.parse_rate:.3f}")
    table = Table("instructions", "wrong images edited", "made right", "fix rate",
                  title="edits carried out by the embedded editor, judged by the verifier")
    for name, fix in (("the critic's", report.fix), ("ideal (label_critique's)", report.fix_ideal)):
        table.add_row(name, str(fix.n), str(fix.fixed), f"{fix.rate:.3f}")
    console.print(table)
    console.print(f"regenerate asked on {report.regenerate} wrong images; critic's edit = ideal edit on "
                  f"{report.edit_agreement:.3f} of wrong images that have one; {report.seconds_per_reflection:.3f} s "
                  "per reflection")


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
