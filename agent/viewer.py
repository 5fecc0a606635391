"""`refloop view`: a local, read-only web viewer of run directories (standard library only).

Pages: `/` (the runs, or the overview when there is one), `/run/K/` (manifest, metrics, plots),
`/run/K/sessions?family=&outcome=&flips=&rounds=` (a list filtered on the server, by a plain GET form,
so it works without JavaScript), `/run/K/session/ID` (the timeline of rounds) and `/run/K/file/REL`
(images of the run). Every value read from a run is model- or user-written, so each one goes through
`esc()` before it reaches HTML; the Content-Security-Policy header (no scripts at all) is only a second
line of defence. `/file/` serves image files inside the run directory and nothing else. The run is
re-read on every request (never written), so a run still being written can be watched by reloading.
The HTTP server (and its Host-header check against DNS rebinding) is agent/viewer_http.py.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from agent.metrics import fmt
from agent.store import RunStore, StoreError
from agent.trajectory import is_safe_id
from agent.viewer_parts import (  # noqa: F401 - re-exported: the viewer's pieces, as before the split
    CSP,
    CSS,
    HTML_TYPE,
    IMAGE_TYPES,
    OUTCOMES,
    PLOTS,
    BadRequest,
    NotFound,
    Response,
    by_family,
    error_page,
    esc,
    filter_form,
    flip_count,
    fork_list,
    kv,
    load,
    mark,
    metrics_table,
    options,
    outcome_ids,
    page,
    plot_png,
    reward_means,
    round_card,
    run_nav,
    select,
    session_header,
    table,
    url,
    when,
)

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
                         str(m.sessions), fmt(m.acc0), fmt(m.acc_final), fmt(m.delta, signed=True)])
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
                 mark(r.rounds[0].correct if r.rounds else None) + " -&gt; " + mark(r.final_round.correct if r.rounds
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
