"""The `refloop` command: one typer app, sub-commands grouped by what users do."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import typer

from agent.cli_bench import bench_cmd
from agent.cli_export import export_cmd
from agent.cli_inspect import inspect_cmd
from agent.cli_replay import replay_cmd
from agent.cli_run import run_cmd
from agent.cli_train import eval_app, train_app
from agent.cli_view import view_cmd
from agent.cli_world import world_app
from agent.errors import EXIT_CODES_HELP

app = typer.Typer(
    help="refloop: generate -> critique -> revise loops on local models, and the tools around them.\n\n"
         + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("run")(run_cmd)
app.command("inspect")(inspect_cmd)
app.command("bench")(bench_cmd)
app.command("replay")(replay_cmd)
app.command("view")(view_cmd)
app.command("export")(export_cmd)
app.add_typer(world_app, name="world")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(version("refloop"))
        except PackageNotFoundError:
            typer.echo("refloop (not installed)")
        raise typer.Exit()


@app.callback()
def main(
    _: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """refloop: an agentic reflection loop orchestrator."""


if __name__ == "__main__":
    app()
