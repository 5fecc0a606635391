"""The viewer's pieces: constants, escaping, reading runs, and the HTML of each part of a page.
agent/viewer.py routes requests to pages built from these."""

from __future__ import annotations

import hashlib
import html
import math
import time
from base64 import b64encode
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from agent import plots
from agent.metrics import Metrics, by_family, flips, fmt
from agent.store import RunStore, StoreError
from agent.trajectory import RoundRecord, SessionRecord

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
    judged = [r for r in records if r.rounds and r.final_round.correct is not None]
    chosen = {
        "all": records,
        "correct": [r for r in judged if r.final_round.correct],
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
    """Accuracies of a family with no judged session read '-' (metrics() reports None: unknown)."""
    rows = []
    for f, m in fams.items():
        accs = [fmt(m.acc0), fmt(m.acc_final), fmt(m.delta, signed=True), fmt(m.i_to_c), fmt(m.c_to_i)]
        rows.append([esc(f), str(m.sessions), str(m.judged), *(accs if m.judged else ["-"] * 5),
                     f"{m.mean_rounds:.2f}", f"{m.seconds_per_session:.2f}"])
    return table(["family", "n", "judged", "Acc@0", "Acc@final", "delta", "i-&gt;c", "c-&gt;i", "rounds",
                  "s/session"], rows)


def kv(pairs: dict[str, float] | dict[str, int], fmt: str = "{:.3f}") -> str:
    return ", ".join(f"{esc(k)} {fmt.format(v)}" for k, v in pairs.items()) or "<span class=muted>-</span>"


def when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


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
