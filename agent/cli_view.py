"""`refloop view RUN_DIR...`: serve the read-only web viewer of runs until Ctrl-C."""

from __future__ import annotations

import ipaddress
import webbrowser
from pathlib import Path

import typer
from rich.console import Console

from agent.errors import UsageError, fail, refusals

errors = Console(stderr=True, soft_wrap=True)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def view_cmd(
    runs: list[Path] = typer.Argument(..., help="One or more run directories."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default keeps the runs private."),
    port: int = typer.Option(8765, "--port", help="Port to listen on (0: any free one)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the viewer in the default browser."),
) -> None:
    """A local web viewer: run overview with plots, a filterable session list, each session's rounds.

    It only reads the runs (a run still being written can be watched), and answers only requests
    addressed to localhost or an IP address (Host header), so a web page cannot reach it by DNS rebinding.
    """
    from agent.store import RunStore

    with refusals():
        if not 0 <= port <= 65535:
            raise UsageError(f"--port must be between 0 and 65535, got {port}")
        stores = [RunStore.open(run) for run in runs]
    from agent.viewer_http import make_server, server_url

    try:
        server = make_server(stores, host, port)
    except OSError as e:
        raise fail(f"cannot listen on {host}:{port}: {(e.strerror or str(e)).lower()}; choose another --port "
                   "(0: any free one)") from None
    except (UnicodeError, ValueError) as e:
        raise fail(f"--host {host!r} is not an address to listen on ({e})") from None
    if not _is_loopback(host):
        errors.print(f"[yellow]warning:[/] bound to {host}: anyone who can reach it can read these runs",
                     highlight=False)
    url = server_url(server)
    typer.echo(f"refloop view: {url}  (Ctrl-C to stop)")
    if open_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()
