"""`refloop view`: escaping, path refusal over real HTTP, filters, plots, forks, the CLI; and, marked slow,
the same pages in a real headless Chromium (installed with apt when missing and running as root)."""

import http.client
import io
import os
import re
import signal
import subprocess
import sys
import threading
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from agent import plots
from agent.cli import app
from agent.store import RunStore
from agent.viewer import Viewer
from agent.viewer_http import make_server
from tests.viewer_run import ROOT, SECRET, fetch, listed, make_run, tags


@pytest.fixture
def run(tmp_path) -> RunStore:
    return make_run(tmp_path / "run")


@pytest.fixture
def server(run):
    """A live viewer on a free port, stopped after the test."""
    srv = make_server([run], "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


# -- fast ---------------------------------------------------------------------------------------------


def test_plots_are_deterministic_pngs():
    series = {"colors": [0.5, 1.0], "counting": [0.5, 0.0, 0.0], "overall": [0.5, 0.5, 0.5]}
    data = plots.accuracy_by_round_png(series)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data == plots.accuracy_by_round_png(series)
    assert data != plots.accuracy_by_round_png(series, title="other")
    with Image.open(io.BytesIO(data)) as im:
        colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
        assert im.size == (500, 320) and len(colours) > 10  # lines and text were drawn
    for png in (plots.reward_curves_png({"judge": [0.5, float("nan")]}), plots.stop_reasons_png({"max_rounds": 3}),
                plots.accuracy_by_round_png({}), plots.stop_reasons_png({})):
        assert Image.open(io.BytesIO(png)).format == "PNG"
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # nothing left in pyplot's global registry


def test_save_png(tmp_path):
    path = plots.save_png(plots.stop_reasons_png({"a": 1}), tmp_path / "sub" / "stops.png")
    assert Image.open(path).format == "PNG"


def test_model_text_is_escaped(run):
    viewer = Viewer([run])
    page = viewer.respond("/run/0/session/s1").body.decode()
    assert "two circles &lt;script&gt;document.title=&#x27;pwned&#x27;" in page
    assert "remove &lt;b&gt;one&lt;/b&gt; red circle" in page and "&lt;i&gt;the circle&lt;/i&gt; is red" in page
    failed = viewer.respond("/run/0/session/s5").body.decode()
    assert "&lt;img src=x onerror=" in failed and "two squares &lt;i&gt;" in failed
    for text in (page, failed, viewer.respond("/run/0/sessions").body.decode(), viewer.respond("/").body.decode()):
        parsed = tags(text)
        assert not {"script", "b", "i"} & set(parsed.tags) and not any(a.startswith("on") for a in parsed.attrs)
    assert "run&lt;b&gt;1&lt;/b&gt;" in viewer.respond("/").body.decode()


def test_session_timeline(run):
    page = Viewer([run]).respond("/run/0/session/s4").body.decode()
    assert page.count('<div class=round id=round-') == 3
    assert "verifier 0.000, judge 0.700" in page and "critique 0.50 s, edit 0.25 s" in page
    assert "max_rounds" in page and 'src="/run/0/file/images/' in page
    assert page.count("<figcaption>0.90</figcaption>") == 3  # the judge's score under each first candidate


def test_fork_links_both_ways(run):
    viewer = Viewer([run])
    fork = viewer.respond("/run/0/session/s1.fork1").body.decode()
    assert 'forked from</th><td><a href="/run/0/session/s1">s1</a> at round 0' in fork
    assert "image from the parent; forked here" in fork and fork.count("critique (written by a person):") == 1
    parent = viewer.respond("/run/0/session/s1").body.decode()
    assert '<a href="/run/0/session/s1.fork1">s1.fork1</a> from round 0' in parent
    assert "<h2>forks</h2>" not in viewer.respond("/run/0/session/s2").body.decode()


@pytest.mark.parametrize("query, expected", [
    ("", ["s1", "s1.fork1", "s2", "s3", "s4", "s5"]),
    ("family=colors", ["s1", "s1.fork1", "s2"]),
    ("outcome=correct", ["s1", "s1.fork1", "s2"]),
    ("outcome=wrong", ["s3", "s4"]),
    ("outcome=fixed", ["s1", "s1.fork1"]),
    ("outcome=broken", ["s3"]),
    ("outcome=failed", ["s5"]),
    ("flips=0", ["s2", "s4", "s5"]),
    ("flips=1%2B", ["s1", "s1.fork1", "s3"]),
    ("rounds=3", ["s4"]),
    ("family=counting&outcome=wrong&rounds=2&flips=1", ["s3"]),
    ("family=colors&outcome=broken", []),
])
def test_filters(run, query, expected):
    resp = Viewer([run]).respond(f"/run/0/sessions?{query}")
    assert resp.status == 200 and listed(resp.body.decode()) == expected
    assert f"{len(expected)} of 6 sessions" in resp.body.decode()


def test_filter_form_keeps_the_choice_and_refuses_nonsense(run):
    viewer = Viewer([run])
    page = viewer.respond("/run/0/sessions?outcome=fixed&family=colors").body.decode()
    assert '<form method=get action="/run/0/sessions">' in page
    assert '<option value="fixed" selected>' in page and '<option value="colors" selected>' in page
    for bad in ("outcome=nope", "rounds=two", "flips=-1"):
        assert viewer.respond(f"/run/0/sessions?{bad}").status == 400


def test_overview_and_index(run, tmp_path):
    page = Viewer([run]).respond("/").body.decode()
    assert "self-correction by family" in page and "<td>overall</td>" in page and "/m/critic" in page
    assert "<td>overall</td><td>6</td><td>5</td><td>0.400</td><td>0.600</td><td>+0.200</td>" in page
    assert "<td>position</td><td>1</td><td>0</td><td>-</td>" in page  # nothing judged: no accuracy to show
    for name in ("accuracy", "rewards", "stops"):
        assert f'src="/run/0/plot/{name}.png"' in page
    other = make_run(tmp_path / "other" / "run2")
    index = Viewer([run, other]).respond("/").body.decode()
    assert 'href="/run/0/"' in index and 'href="/run/1/"' in index and "run2" in index


def test_http_serves_pages_images_and_plots(server, run):
    status, headers, body = fetch(server, "/run/0/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'none'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    image = run.get("s1").rounds[0].image
    status, headers, body = fetch(server, f"/run/0/file/{image}")
    assert status == 200 and headers["Content-Type"] == "image/png" and body == (run.root / image).read_bytes()
    for name in ("accuracy", "rewards", "stops"):
        status, headers, body = fetch(server, f"/run/0/plot/{name}.png")
        assert status == 200 and headers["Content-Type"] == "image/png" and body[:4] == b"\x89PNG"
    status, headers, body = fetch(server, "/run/0/", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


@pytest.mark.parametrize("path", [
    "/run/0/file/../secret.png", "/run/0/file/images/../../secret.png", "/run/0/file/%2e%2e/secret.png",
    "/run/0/file/%2E%2E%2Fsecret.png", "/run/0/file/..%2frun%2f..%2fsecret.png", "/run/0/file/{abs}",
    "/run/0/file/{abs_encoded}", "/run/0/file/images/out.png", "/run/0/file/images%5C..%5C..%5Csecret.png",
    "/run/0/file/../secret.txt", "/run/0/file//etc/passwd", "/run/0/file/manifest.json", "/run/0/file/images/nope.png",
    "/run/0/file/images/x%00.png", "/run/0/session/..%2f..%2fsecret", "/run/0/session/nope", "/run/1/", "/run/x/",
    "/run/0/plot/x.png", "/nowhere",
])
def test_http_refuses_what_is_not_served(server, run, path):
    """secret.png beside the run is a real PNG: only the path checks keep it from being served."""
    secret = run.root.parent / "secret.png"
    status, headers, body = fetch(server, path.format(abs=secret, abs_encoded=quote(str(secret), safe="")))
    assert status in (403, 404) and headers["Content-Type"].startswith("text/html")
    assert body[:4] != b"\x89PNG" and SECRET.encode() not in body and b"Traceback" not in body and b"root:" not in body


def test_http_is_read_only(server):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = fetch(server, "/run/0/", method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD"


def fetch_as(srv, host: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=10)
    try:
        conn.putrequest("GET", "/run/0/", skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("host,ok", [
    ("127.0.0.1:{port}", True), ("localhost:{port}", True), ("localhost", True), ("127.0.0.1", True),
    ("[::1]:{port}", True), ("LOCALHOST:{port}", True),
    ("evil.example:{port}", False), ("evil.example", False), ("localhost.evil.example:{port}", False),
    ("127.0.0.1.nip.io:{port}", False), ("localhost:{port}@evil.example", False), ("", False), (None, False),
])
def test_http_checks_the_host_header_against_dns_rebinding(server, host, ok):
    """A page of evil.example whose DNS name was re-pointed at 127.0.0.1 sends Host: evil.example."""
    status, body = fetch_as(server, None if host is None else host.format(port=server.server_port))
    if ok:
        assert status == 200 and b"run&lt;b&gt;1" in body
    else:
        assert status == 403 and b"Host header refused" in body and b"sessions" not in body


def test_the_run_is_not_changed_by_viewing_it(server, run):
    before = {p: p.read_bytes() for p in run.root.rglob("*") if p.is_file() and not p.is_symlink()}
    stale = run.root / "sessions" / ".s9.json.abc.tmp"  # a live writer's temp file, as a reader sees it
    stale.write_text("half")
    for path in ("/", "/run/0/", "/run/0/sessions", "/run/0/session/s1", "/run/0/plot/accuracy.png"):
        assert fetch(server, path)[0] == 200
    assert CliRunner().invoke(app, ["inspect", str(run.root)]).exit_code == 0
    after = {p: p.read_bytes() for p in run.root.rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == {**before, stale: b"half"}


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_cli_refuses_what_is_not_a_run(tmp_path, where):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["view", str(tmp_path / where)])
    assert result.exit_code == 2 and "error" in result.output


def test_cli_serves_and_stops_on_ctrl_c(run):
    """The command prints its URL, serves it, and exits 0 on SIGINT (Ctrl-C)."""
    code = "import typer; from agent.cli_view import view_cmd; typer.run(view_cmd)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(run.root), "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            # as from a terminal: a suite started with `&` ignores SIGINT, and so would the child
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/run/0/sessions")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "stopped" in out and "Traceback" not in err
