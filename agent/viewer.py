"""`refloop view`: a local, read-only web viewer of run directories (standard library only).

Pages: `/` (the runs, or the overview when there is one), `/run/K/` (manifest, metrics, plots),
`/run/K/sessions?family=&outcome=&flips=&rounds=` (a list filtered on the server, by a plain GET form,
so it works without JavaScript), `/run/K/session/ID` (the timeline of rounds) and `/run/K/file/REL`
(images of the run). Every value read from a run is model- or user-written, so each one goes through
`esc()` before it reaches HTML; the Content-Security-Policy header (no scripts at all) is only a second
line of defence. `/file/` serves image files inside the run directory and nothing else. The run is
re-read on every request (never written), so a run still being written can be watched by reloading.
Requests whose Host header is not localhost or an IP address are refused (DNS rebinding).
"""

from __future__ import annotations

import hashlib
import html
import ipaddress
import math
import socket
import time
from base64 import b64encode
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from agent import plots
from agent.metrics import Metrics, by_family, flips
from agent.store import RunStore, StoreError
from agent.trajectory import RoundRecord, SessionRecord, is_safe_id

OUTCOMES = ("all", "correct", "wrong", "fixed", "broken", "failed")
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}
PLOTS = ("accuracy", "rewards", "stops")
HTML_TYPE = "text/html; charset=utf-8"

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 16px 40px;color:#222}
header{border-bottom:1px solid #ddd;margin-bottom:12px;padding:10px 0}
header a{margin-right:14px}
a{color:#1f5fa8;text-decoration:none} a:hover{text-decoration:underline}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} td.n{text-align:right;font-variant-numeric:tabular-nums}
.plots img{border:1px solid #eee;margin:4px}
.round{border:1px solid #ddd;border-radius:6px;padding:10px;margin:12px 0;display:flex;gap:16px}
.round img.main{width:192px;height:192px;image-rendering:pixelated;border:1px solid #ccc}
.cands{display:flex;flex-wrap:wrap;max-width:200px} .cands figure{margin:2px;text-align:center;font-size:11px}
.cands img{width:48px;height:48px;image-rendering:pixelated;border:1px solid #ccc}
.body{flex:1;min-width:0} pre{white-space:pre-wrap;background:#f7f7f7;padding:6px;margin:4px 0}
.ok{color:#17803d;font-weight:600} .bad{color:#b42318;font-weight:600} .muted{color:#777}
form label{margin-right:12px} .err{background:#fdecea;padding:6px}
"""
# Only this exact stylesheet may apply; no script of any kind may run, not even one that slipped through.
CSS_HASH = b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
CSP = (f"default-src 'none'; img-src 'self'; style-src 'sha256-{CSS_HASH}'; script-src 'none'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def esc(value: object) -> str:
    """HTML-escape anything (quotes included, so it is also safe inside attributes)."""
    return html.escape(str(value), quote=True)


def url(*parts: object, **query: str) -> str:
    """An absolute viewer URL, each part percent-encoded (a '/' inside a part stays a '/')."""
    path = "/" + "/".join(quote(str(p), safe="/") for p in parts)
    return path + ("?" + urlencode(query) if query else "")


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = HTML_TYPE
    headers: dict[str, str] = field(default_factory=dict)


class NotFound(Exception):
    """Anything that does not exist or must not be served: answered 404 with a short reason."""


class BadRequest(Exception):
    """A query parameter the viewer does not understand: answered 400."""


# -- reading runs ----------------------------------------------------------------------------------


def load(store: RunStore) -> tuple[list[SessionRecord], list[str]]:
    """Every readable session, and one message per session file that could not be read (shown, not fatal)."""
    records, problems = [], []
    for sid in store.session_ids():
        try:
            records.append(store.get(sid))
        except StoreError as e:
            problems.append(str(e))
    return records, problems


def flip_count(record: SessionRecord) -> int:
    """How often ground-truth correctness changed from one round to the next."""
    seen = [r.correct for r in record.rounds if r.correct is not None]
    return sum(a != b for a, b in zip(seen, seen[1:]))


def outcome_ids(records: list[SessionRecord], outcome: str) -> set[str]:
    """Ids of the sessions with an outcome, using metrics.flips for the flip groups."""
    groups = flips(records)
    judged = [r for r in records if r.rounds and r.rounds[-1].correct is not None]
    chosen = {
        "all": records,
        "correct": [r for r in judged if r.rounds[-1].correct],
        "wrong": groups["wrong at the end"],
        "fixed": groups["wrong -> right"],
        "broken": groups["right -> wrong"],
        "failed": [r for r in records if r.status == "failed"],
    }[outcome]
    return {r.id for r in chosen}


def reward_means(records: list[SessionRecord]) -> dict[str, list[float]]:
    """Mean of each reward at round 0, 1, ... over the sessions that reached that round (NaN: none had it)."""
    totals: dict[str, Counter] = {}
    counts: dict[str, Counter] = {}
    for r in records:
        for rnd in r.rounds:
            for name, value in rnd.rewards.items():
                totals.setdefault(name, Counter())[rnd.index] += value
                counts.setdefault(name, Counter())[rnd.index] += 1
    depth = max((len(r.rounds) for r in records), default=0)
    return {name: [totals[name][k] / counts[name][k] if counts[name][k] else math.nan for k in range(depth)]
            for name in sorted(totals)}


def plot_png(records: list[SessionRecord], name: str) -> bytes:
    if name == "accuracy":
        return plots.accuracy_by_round_png({f: m.acc_by_round for f, m in by_family(records).items() if m.judged})
    if name == "rewards":
        return plots.reward_curves_png(reward_means(records))
    return plots.stop_reasons_png(by_family(records)["overall"].stop_reasons)


# -- HTML pieces -----------------------------------------------------------------------------------


def page(title: str, body: str, nav: str = "") -> bytes:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><header><a href=\"/\">refloop view</a>{nav}</header>"
            f"<h1>{esc(title)}</h1>{body}</body></html>").encode()


def error_page(status: int, message: str) -> Response:
    return Response(status, page(f"{status}", f"<p class=err>{esc(message)}</p>"))


def run_nav(k: int, name: str) -> str:
    return f"<a href=\"{url('run', k, '')}\">run {esc(name)}</a><a href=\"{url('run', k, 'sessions')}\">sessions</a>"


def table(head: list[str], rows: list[list[str]]) -> str:
    """Cells are already HTML (callers escape); numbers get the right-aligned class."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def mark(ok: bool | None) -> str:
    return "<span class=muted>?</span>" if ok is None else ("<span class=ok>right</span>" if ok
                                                             else "<span class=bad>wrong</span>")


def metrics_table(fams: dict[str, Metrics]) -> str:
    """Accuracies of a family with no judged session read '-' (metrics() would report 0.000)."""
    rows = []
    for f, m in fams.items():
        accs = [f"{m.acc0:.3f}", f"{m.acc_final:.3f}", f"{m.delta:+.3f}", f"{m.i_to_c:.3f}", f"{m.c_to_i:.3f}"]
        rows.append([esc(f), str(m.sessions), str(m.judged), *(accs if m.judged else ["-"] * 5),
                     f"{m.mean_rounds:.2f}", f"{m.seconds_per_session:.2f}"])
    return table(["family", "n", "judged", "Acc@0", "Acc@final", "delta", "i-&gt;c", "c-&gt;i", "rounds",
                  "s/session"], rows)


def kv(pairs: dict[str, float] | dict[str, int], fmt: str = "{:.3f}") -> str:
    return ", ".join(f"{esc(k)} {fmt.format(v)}" for k, v in pairs.items()) or "<span class=muted>-</span>"


def when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


# -- pages -----------------------------------------------------------------------------------------


class Viewer:
    """The pages of one or more runs, as a function from a request target to a Response (no sockets here)."""

    def __init__(self, stores: list[RunStore]):
        self.stores = stores
        self.names = [s.root.name for s in stores]

    def respond(self, target: str) -> Response:
        """Route a request target ('/run/0/sessions?family=x'); NotFound -> 404, BadRequest -> 400."""
        parts = urlsplit(target)
        try:
            return self.route(parts.path, parse_qs(parts.query))
        except NotFound as e:
            return error_page(404, f"not found: {e}")
        except BadRequest as e:
            return error_page(400, f"bad request: {e}")

    def route(self, path: str, query: dict[str, list[str]]) -> Response:
        if path == "/":
            return self.overview(0) if len(self.stores) == 1 else self.index()
        segments = path.split("/")  # '', 'run', K, view, rest...; still percent-encoded
        if len(segments) < 3 or segments[1] != "run":
            raise NotFound(path)
        k = self.run_index(segments[2])
        view, rest = (segments[3] if len(segments) > 3 else ""), "/".join(segments[4:])
        if view == "" and not rest:
            return self.overview(k)
        if view == "sessions" and not rest:
            return self.session_list(k, query)
        if view == "session" and rest:
            return self.session(k, unquote(rest))
        if view == "plot" and rest:
            return self.plot(k, unquote(rest))
        if view == "file" and rest:
            return self.file(k, unquote(rest))
        raise NotFound(path)

    def run_index(self, text: str) -> int:
        if not text.isdigit() or int(text) >= len(self.stores):
            raise NotFound(f"run {text!r}")
        return int(text)

    def index(self) -> Response:
        rows = []
        for k, store in enumerate(self.stores):
            records, _ = load(store)
            m = by_family(records)["overall"]
            rows.append([f"<a href=\"{url('run', k, '')}\">{esc(self.names[k])}</a>", esc(store.manifest.run_id),
                         str(m.sessions), f"{m.acc0:.3f}", f"{m.acc_final:.3f}", f"{m.delta:+.3f}"])
        return Response(200, page("runs", table(["run", "run id", "sessions", "Acc@0", "Acc@final", "delta"], rows)))

    def overview(self, k: int) -> Response:
        store, name = self.stores[k], self.names[k]
        records, problems = load(store)
        man = store.manifest
        models = "".join(f"<li>{esc(role)}: {esc(info.get('path', info))}</li>" for role, info in man.models.items())
        summary = table(["run id", "created", "seed", "refloop", "git commit", "directory"], [[
            esc(man.run_id), esc(when(man.created_at)), esc(man.seed), esc(man.refloop_version),
            esc(man.git_commit or "-"), esc(store.root)]])
        fams = by_family(records)
        stops = kv(fams["overall"].stop_reasons, "{}")
        imgs = "".join(f"<img src=\"{url('run', k, 'plot', p + '.png')}\" alt=\"{p} plot\">" for p in PLOTS)
        shortcuts = " | ".join(f"<a href=\"{url('run', k, 'sessions', outcome=o)}\">{o}</a>" for o in OUTCOMES)
        body = (f"{summary}<ul>{models}</ul>"
                + "".join(f"<p class=err>{esc(p)}</p>" for p in problems)
                + f"<h2>self-correction by family</h2>{metrics_table(fams)}<p>stop reasons: {stops}</p>"
                + f"<p>sessions: {shortcuts}</p><div class=plots>{imgs}</div>")
        return Response(200, page(f"run {name}", body, run_nav(k, name)))

    def plot(self, k: int, name: str) -> Response:
        stem = name.removesuffix(".png")
        if stem not in PLOTS or not name.endswith(".png"):
            raise NotFound(f"plot {name!r}")
        records, _ = load(self.stores[k])
        return Response(200, plot_png(records, stem), "image/png")

    def session_list(self, k: int, query: dict[str, list[str]]) -> Response:
        records, _ = load(self.stores[k])
        chosen = {key: (query.get(key) or [""])[0] for key in ("family", "outcome", "flips", "rounds")}
        shown = select(records, **chosen)
        rows = [[f"<a href=\"{url('run', k, 'session', r.id)}\">{esc(r.id)}</a>", esc(r.family or "-"), esc(r.prompt),
                 str(len(r.rounds)), str(flip_count(r)),
                 mark(r.rounds[0].correct if r.rounds else None) + " -&gt; " + mark(r.rounds[-1].correct if r.rounds
                                                                                   else None),
                 esc(r.status), esc(r.stop_reason or "-"),
                 f"<a href=\"{url('run', k, 'session', r.parent_id)}\">{esc(r.parent_id)}</a>" if r.parent_id else ""]
                for r in shown]
        body = (filter_form(k, records, chosen) + f"<p>{len(shown)} of {len(records)} sessions</p>"
                + table(["session", "family", "prompt", "rounds", "flips", "first -&gt; last", "status", "stop",
                         "forked from"], rows))
        return Response(200, page(f"sessions of {self.names[k]}", body, run_nav(k, self.names[k])))

    def session(self, k: int, sid: str) -> Response:
        store, name = self.stores[k], self.names[k]
        if not is_safe_id(sid):
            raise NotFound(f"session {sid!r}")
        try:
            record = store.get(sid)
        except StoreError as e:
            raise NotFound(str(e)) from None
        records, _ = load(store)
        forks = [r for r in records if r.parent_id == sid]
        body = session_header(k, record, {r.id for r in records}) + fork_list(k, forks)
        body += "".join(round_card(k, rnd, record.fork_round) for rnd in record.rounds)
        return Response(200, page(f"session {sid}", body, run_nav(k, name)))

    def file(self, k: int, rel: str) -> Response:
        """An image inside the run: RunStore.image_path refuses '..', absolute paths and symlinks out."""
        store = self.stores[k]
        try:
            path = store.image_path(rel)
        except (StoreError, ValueError) as e:  # ValueError: a NUL byte in the path
            raise NotFound(f"file {rel!r}: {e}") from None
        kind = IMAGE_TYPES.get(path.suffix.lower())
        if kind is None or not path.is_file():
            raise NotFound(f"file {rel!r}")
        return Response(200, path.read_bytes(), kind)


def select(records: list[SessionRecord], family: str = "", outcome: str = "", flips: str = "",
           rounds: str = "") -> list[SessionRecord]:
    """The sessions matching every filter given; '' means any. flips: a count, or '1+' for at least one."""
    outcome = outcome or "all"
    if outcome not in OUTCOMES:
        raise BadRequest(f"outcome must be one of {', '.join(OUTCOMES)}")
    if flips and flips != "1+" and not flips.isdigit():
        raise BadRequest("flips must be a number or 1+")
    if rounds and not rounds.isdigit():
        raise BadRequest("rounds must be a number")
    keep = outcome_ids(records, outcome)
    return [r for r in records if r.id in keep
            and (not family or (r.family or "unknown") == family)
            and (not rounds or len(r.rounds) == int(rounds))
            and (not flips or (flip_count(r) >= 1 if flips == "1+" else flip_count(r) == int(flips)))]


def options(name: str, values: list[str], chosen: str, any_label: str = "any") -> str:
    opts = [("", any_label)] + [(v, v) for v in values]
    inner = "".join(f"<option value=\"{esc(v)}\"{' selected' if v == chosen else ''}>{esc(label)}</option>"
                    for v, label in opts)
    return f"<label>{name} <select name={name}>{inner}</select></label>"


def filter_form(k: int, records: list[SessionRecord], chosen: dict[str, str]) -> str:
    families = sorted({r.family or "unknown" for r in records})
    counts = sorted({flip_count(r) for r in records})
    depths = sorted({len(r.rounds) for r in records})
    return (f"<form method=get action=\"{url('run', k, 'sessions')}\">"
            + options("family", families, chosen["family"])
            + options("outcome", list(OUTCOMES[1:]), chosen["outcome"], "all")
            + options("flips", ["1+"] + [str(c) for c in counts], chosen["flips"])
            + options("rounds", [str(d) for d in depths], chosen["rounds"])
            + "<button type=submit>filter</button></form>")


def session_header(k: int, r: SessionRecord, known: set[str]) -> str:
    duration = f"{r.finished_at - r.started_at:.2f} s" if r.started_at and r.finished_at else "-"
    rows = [["prompt", esc(r.prompt)], ["family", esc(r.family or "-")], ["seed", esc(r.seed)],
            ["status", esc(r.status)], ["stop reason", esc(r.stop_reason or "-")],
            ["started", esc(when(r.started_at))], ["duration", duration]]
    if r.error:
        rows.append(["error", f"<pre>{esc(r.error)}</pre>"])
    if r.parent_id:
        parent = (f"<a href=\"{url('run', k, 'session', r.parent_id)}\">{esc(r.parent_id)}</a>"
                  if r.parent_id in known else f"{esc(r.parent_id)} <span class=muted>(not in this run)</span>")
        rows.append(["forked from", f"{parent} at round {esc(r.fork_round)}"])
    if r.final_image:
        rows.append(["final image", f"<a href=\"{url('run', k, 'file', r.final_image)}\">{esc(r.final_image)}</a>"])
    return "<table>" + "".join(f"<tr><th>{a}</th><td>{b}</td></tr>" for a, b in rows) + "</table>"


def fork_list(k: int, forks: list[SessionRecord]) -> str:
    if not forks:
        return ""
    items = "".join(f"<li><a href=\"{url('run', k, 'session', f.id)}\">{esc(f.id)}</a> from round "
                    f"{esc(f.fork_round)}</li>" for f in forks)
    return f"<h2>forks</h2><ul class=forks>{items}</ul>"


def round_card(k: int, rnd: RoundRecord, fork_round: int | None) -> str:
    """One round: its image and candidates, what the critic said and asked, rewards, timings, calls."""
    note = ""
    if fork_round is not None and rnd.index <= fork_round:  # replay copies the parent's rounds up to the fork
        note = " <span class=muted>(" + ("from the parent" if rnd.index < fork_round else
                                          "image from the parent; forked here") + ")</span>"
    scores = [f"{v:.2f}" for v in rnd.candidate_scores] + [""] * len(rnd.candidates)
    cands = "".join(f"<figure><a href=\"{url('run', k, 'file', c)}\"><img src=\"{url('run', k, 'file', c)}\" "
                    f"alt=\"candidate\"></a><figcaption>{s}</figcaption></figure>"
                    for c, s in zip(rnd.candidates, scores))
    text = [f"<h3>round {rnd.index}{note}</h3><p>ground truth: {mark(rnd.correct)}; critic verdict: "
            f"{esc(rnd.verdict or '-')}</p>"]
    if rnd.critique is not None:
        by = " (written by a person)" if rnd.critique_by == "human" else ""
        text.append(f"<p>critique{by}:</p><pre class=critique>{esc(rnd.critique)}</pre>")
    if rnd.instruction is not None:
        text.append(f"<p>instruction:</p><pre class=instruction>{esc(rnd.instruction)}</pre>")
    if rnd.judge_reason is not None:
        text.append(f"<p>judge:</p><pre class=judge>{esc(rnd.judge_reason)}</pre>")
    if rnd.critique_error is not None:
        text.append(f"<p class=err>critique unreadable: {esc(rnd.critique_error)}</p>")
    text.append(f"<p>rewards: {kv(rnd.rewards)}<br>timings: {kv(rnd.timings, '{:.2f} s')}<br>"
                f"calls: {kv(rnd.calls, '{}')}</p>")
    img = f"<img class=main src=\"{url('run', k, 'file', rnd.image)}\" alt=\"round {rnd.index} image\">"
    return (f"<div class=round id=round-{rnd.index}><div>{img}<div class=cands>{cands}</div></div>"
            f"<div class=body>{''.join(text)}</div></div>")


# -- HTTP --------------------------------------------------------------------------------------------


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

