"""The viewer's HTTP server: GET and HEAD through `Viewer.respond`, security headers on every answer,
and requests whose Host header is not localhost or an IP address refused (DNS rebinding)."""

from __future__ import annotations

import ipaddress
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.store import RunStore
from agent.viewer import CSP, Response, Viewer, error_page


def host_allowed(header: str | None, bound: str = "127.0.0.1") -> bool:
    """A Host header a browser sends for this viewer: localhost, an IP address (no DNS, so no
    rebinding) or the host the viewer was bound to, each with an optional port. A page of
    evil.example whose name was re-pointed at 127.0.0.1 sends 'evil.example' and is refused."""
    if not header or any(c.isspace() for c in header):
        return False
    host = header.lower()
    if host.startswith("["):  # [::1]:8765
        end = host.find("]")
        if end < 0 or (host[end + 1:] and not _port(host[end + 2:] if host[end + 1] == ":" else "x")):
            return False
        host = host[1:end]
    elif ":" in host:
        host, port = host.rsplit(":", 1)
        if not _port(port):
            return False
    if host in ("localhost", str(bound).lower()):
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _port(text: str) -> bool:
    return text.isdigit() and int(text) <= 65535


class Handler(BaseHTTPRequestHandler):
    """GET and HEAD through Viewer.respond; every other method is refused with 405."""

    server: ViewerServer
    server_version = "refloop-view"
    sys_version = ""

    def do_GET(self) -> None:
        self.answer(send_body=True)

    def do_HEAD(self) -> None:
        self.answer(send_body=False)

    def refuse(self) -> None:
        resp = error_page(405, "the viewer is read-only: GET and HEAD only")
        resp.headers["Allow"] = "GET, HEAD"
        self.send(resp, send_body=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = refuse

    def answer(self, send_body: bool) -> None:
        if not host_allowed(self.headers.get("Host"), self.server.server_address[0]):
            self.send(error_page(403, "this viewer answers only requests to localhost or an IP address "
                                      "(Host header refused: DNS rebinding protection)"), send_body)
            return
        try:
            resp = self.server.viewer.respond(self.path)
        except Exception as e:  # a bug or an unreadable file: a short page, the traceback only in the log
            self.log_error("error on %r: %r", self.path, e)
            resp = error_page(500, "internal error (see the viewer's log)")
        self.send(resp, send_body)

    def send(self, resp: Response, send_body: bool) -> None:
        self.send_response(resp.status)
        headers = {"Content-Type": resp.content_type, "Content-Length": str(len(resp.body)),
                   "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-store",
                   **resp.headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if send_body:
            self.wfile.write(resp.body)

    def log_message(self, format: str, *args: object) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], viewer: Viewer, quiet: bool = False):
        self.viewer, self.quiet = viewer, quiet
        super().__init__(address, Handler)


class ViewerServer6(ViewerServer):
    address_family = socket.AF_INET6


def make_server(stores: list[RunStore], host: str = "127.0.0.1", port: int = 8765,
                quiet: bool = False) -> ViewerServer:
    """A bound, not yet serving, server (port 0 picks a free one: see .server_port)."""
    cls = ViewerServer6 if ":" in host else ViewerServer
    return cls((host, port), Viewer(stores), quiet)


def server_url(server: ViewerServer) -> str:
    host, port = server.server_address[:2]
    return f"http://[{host}]:{port}/" if ":" in str(host) else f"http://{host}:{port}/"

