"""`refloop world ...`: the embedded ShapeWorld, from the command line.

Exit codes: 0 success (or "satisfied"), 1 "not satisfied", 2 bad input.
The model commands (generate, edit, train, eval) live in agent/cli_models.py and are imported only
when one of them runs, so that sample, check, suite and bench start without torch; each command
imports world/ itself, so that the rest of `refloop` (an open-task run, say) never loads it.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import time
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from agent.errors import UsageError, check_finite, check_new_out, check_whole, fail, refusals

# name -> (attribute of agent.cli_models, its one-line help for `refloop world --help`)
MODEL_COMMANDS = {
    "generate": ("generate_cmd", "Draw prompts with the embedded unified model (a neural network)."),
    "edit": ("edit_cmd", "Edit an image with the embedded unified model (the same network)."),
    "reflect": ("reflect_cmd", "The embedded unified model's reflection on an image (seen, wrong, verdict, edit)."),
    "train": ("train_app", "Train the embedded unified model (seeded, resumable)."),
    "eval": ("eval_app", "Evaluate the embedded unified model against the world's verifier."),
}


class LazyModelCommands(TyperGroup):
    """A group whose model commands are imported when they run (their help listing is static)."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.commands, *(n for n in MODEL_COMMANDS if n not in self.commands)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands or name not in MODEL_COMMANDS:
            return self.commands.get(name)
        attr, short_help = MODEL_COMMANDS[name]
        if self._listing:
            return click.Command(name, help=short_help, short_help=short_help)
        self.commands[name] = model_command(name, getattr(importlib.import_module("agent.cli_models"), attr))
        return self.commands[name]

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            return super().format_help(ctx, formatter)
        finally:
            self._listing = False


def model_command(name: str, target) -> click.Command:
    if isinstance(target, typer.Typer):
        cmd = typer.main.get_group(target)
    else:
        one = typer.Typer(add_completion=False)
        one.command(name)(guarded(target))
        cmd = typer.main.get_command(one)
    cmd.name = name
    return cmd


def guarded(fn):
    """A model command with its numbers, paths and model folder checked before it runs, and a
    model folder that cannot be loaded reported in a line (exit 2), not as a traceback."""

    @functools.wraps(fn)
    def run(**kwargs):
        with refusals():
            for key, value in kwargs.items():
                if isinstance(value, float):
                    check_finite(f"--{key.replace('_', '-')}", value)
            if kwargs.get("out") is not None:
                check_new_out(kwargs["out"])
            model = kwargs.get("model")
            if model is not None and not Path(model).is_dir():
                raise UsageError(f"--model {model} is not a model folder; give the folder the model was saved to")
        try:
            return fn(**kwargs)
        except (typer.Exit, click.exceptions.Exit, click.ClickException):
            raise
        except (OSError, ValueError, KeyError) as e:  # from_pretrained on a folder it cannot read
            where = f"--model {kwargs['model']}" if kwargs.get("model") is not None else "the shipped model"
            why = f"{type(e).__name__}: {e}" if isinstance(e, KeyError) else str(e)
            raise fail(f"cannot load {where}: {why}; check the folder, or retrain it") from None

    return run


world_app = typer.Typer(help="The embedded ShapeWorld: sample, check, benchmark, prompt suites, its models.",
                        no_args_is_help=True, cls=LazyModelCommands)
console = Console()
errors = Console(stderr=True, soft_wrap=True)


def bad_input(message: str) -> typer.Exit:
    return fail(message)


@world_app.command()
def sample(
    prompts: list[str] = typer.Argument(..., help="One or more prompts, e.g. 'two red circles above a blue square'."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write (a grid when several prompts)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same scenes."),
) -> None:
    """Render one correct scene per prompt."""
    import numpy as np

    from world import parse_prompt, render, scene_for_prompt
    from world.grammar import PromptError
    from world.io import grid, save_png

    with refusals(PromptError):
        parsed = [parse_prompt(p) for p in prompts]
        check_new_out(out)
        check_whole("--seed", seed, 0, 2**63 - 1)
    rng = np.random.default_rng(seed)
    images = render([scene_for_prompt(p, rng) for p in parsed])
    with refusals():
        save_png(out, images[0] if len(images) == 1 else grid(images))
    console.print(f"wrote {out} ({len(images)} scene{'s' if len(images) > 1 else ''})")


@world_app.command()
def check(
    prompt: str = typer.Argument(..., help="The prompt the image should satisfy."),
    image: Path = typer.Argument(..., help="A 64x64 PNG."),
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
) -> None:
    """Judge an image against a prompt: exit 0 when satisfied, 1 when not, 2 on bad input."""
    from world import check_image, parse_prompt
    from world.grammar import PromptError
    from world.io import load_png

    with refusals(PromptError, ValueError):
        verdict = check_image(parse_prompt(prompt), load_png(image))
    if as_json:
        typer.echo(json.dumps(verdict.model_dump() | {"reason": verdict.reason}, indent=2))
    else:
        mark = "[green]satisfied[/]" if verdict.ok else "[red]not satisfied[/]"
        console.print(f"{mark}: {verdict.prompt!r} ({verdict.family})", highlight=False)
        table = Table("shape", "colour", "centroid (x, y)", "box (x0, y0, x1, y1)", title="objects read")
        for o in verdict.objects:
            table.add_row(o.shape, o.color, f"{o.centroid[0]:.1f}, {o.centroid[1]:.1f}", ", ".join(map(str, o.box)))
        console.print(table)
        console.print(f"reason: {verdict.reason}", highlight=False)
    raise typer.Exit(0 if verdict.ok else 1)


@world_app.command("suite")
def suite_cmd(
    split: str = typer.Argument(..., help="train, dev or test."),
    out: Path = typer.Option(None, "--out", "-o", help="JSONL file to write (default: print)."),
    per_family: int = typer.Option(None, help="Prompts per family (default: the split's size)."),
) -> None:
    """Export a fixed prompt suite as JSONL (id, prompt, family, seed, held_out)."""
    from world import suite

    with refusals(ValueError):
        if per_family is not None:
            check_whole("--per-family", per_family, 1, 100_000)
        items = suite(split, per_family)
        if out is not None:
            check_new_out(out)
    lines = "".join(item.model_dump_json() + "\n" for item in items)
    if out is None:
        typer.echo(lines, nl=False)
        return
    from agent.files import atomic_write

    with refusals():
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lines.encode())
    console.print(f"wrote {len(items)} prompts to {out}")


def _one_core() -> None:
    """Pin this process to one CPU so that the figure is per core."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


@world_app.command()
def bench(
    scenes: int = typer.Option(20_000, help="Scenes to sample and render (100 to 10,000,000)."),
    parse_images: int = typer.Option(2_000, help="Images to parse and verify (10 to 1,000,000)."),
    seed: int = typer.Option(0),
) -> None:
    """Throughput of the world on one core: scene sampling, rendering, parsing + verifying."""
    import numpy as np

    from world import check_image, parse_image, parse_prompt, random_scene, render, scene_for_prompt, suite
    from world.parse import same_objects
    from world.render import degrade
    from world.spec import FAMILIES

    with refusals():
        check_whole("--scenes", scenes, 100, 10_000_000)
        check_whole("--parse-images", parse_images, 10, 1_000_000)
        check_whole("--seed", seed, 0, 2**63 - 1)
    _one_core()
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    batch = [random_scene(rng) for _ in range(scenes)]
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, scenes, 1024):
        images = render(batch[i : i + 1024])
    t_render = time.perf_counter() - t0
    items = suite("dev", per_family=max(1, parse_images // len(FAMILIES)))
    prompts = [parse_prompt(it.prompt) for it in items]
    images = render([scene_for_prompt(p, rng) for p in prompts])
    t0 = time.perf_counter()
    correct = sum(check_image(p, img).ok for p, img in zip(prompts, images))
    t_check = time.perf_counter() - t0
    table = Table("stage", "items", "seconds", "per second", title="ShapeWorld on one core")
    table.add_row("sample scenes", str(scenes), f"{t_sample:.2f}", f"{scenes / t_sample:,.0f}")
    table.add_row("render scenes", str(scenes), f"{t_render:.2f}", f"{scenes / t_render:,.0f}")
    table.add_row("parse + verify images", str(len(images)), f"{t_check:.2f}", f"{len(images) / t_check:,.0f}")
    console.print(table)
    console.print(f"sanity: {correct}/{len(images)} rendered dev scenes verified correct")
    robustness = Table("images", "blur sigma", "noise sigma", "scenes read exactly", title="parser accuracy")
    truth = batch[:parse_images]
    clean = render(truth)
    for blur, noise in [(0.0, 0.0), (0.8, 20.0), (1.2, 20.0)]:
        read = [parse_image(degrade(img, rng, blur, noise) if blur else img) for img in clean]
        exact = np.mean([same_objects(s, p) for s, p in zip(truth, read)])
        robustness.add_row(str(len(truth)), f"{blur}", f"{noise}", f"{exact:.1%}")
    console.print(robustness)
