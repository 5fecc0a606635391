"""`refloop view`: escaping, path refusal over real HTTP, filters, plots, forks, the CLI; and, marked slow,
the same pages in a real headless Chromium (installed with apt when missing and running as root)."""

import http.client
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from agent import plots
from agent.cli import app
from agent.store import RunStore
from agent.trajectory import RoundRecord, RunManifest, SessionRecord
from agent.viewer import Viewer
from agent.viewer_http import make_server, server_url
from world import parse_prompt, render_one, scene_for_prompt

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "<script>document.title='pwned';document.body.innerHTML='PWNED'</script>"
ERROR = "<img src=x onerror=\"document.title='pwned'\">"
SECRET = "top-secret-outside-the-run"
RED = (220, 40, 40)  # ShapeWorld's red: the screenshot must show the round image's pixels
# session id -> (family, correctness of each round, parent and fork round or None)
SESSIONS = {"s1": ("colors", [False, True], None), "s2": ("colors", [True], None),
            "s3": ("counting", [True, False], None), "s4": ("counting", [False, False, False], None),
            "s1.fork1": ("colors", [False, True], ("s1", 0))}


def render(prompt: str) -> np.ndarray:
    return render_one(scene_for_prompt(parse_prompt(prompt), np.random.default_rng(0)))


def make_run(path: Path) -> RunStore:
    """A run with fixed, correct, broken and wrong sessions, a fork, a failed session, and a critique that
    would take over the page if it were not escaped. Next to it, a secret file and a PNG the viewer must
    never serve (one reachable through a symlink inside the run)."""
    store = RunStore.create(path, RunManifest(run_id="run<b>1</b>", created_at=time.time(), seed=0,
                                              refloop_version="test", models={"critic": {"path": "/m/critic"}}))
    right, wrong = store.put_image(render("a red circle")), store.put_image(render("two red circles"))
    for sid, (family, correct, fork) in SESSIONS.items():
        parent, fork_round = fork or (None, None)
        store.start_session(SessionRecord(id=sid, prompt="a red circle", family=family, seed=0, parent_id=parent,
                                          fork_round=fork_round))
        for k, ok in enumerate(correct):
            last = k == len(correct) - 1
            store.upsert_round(sid, RoundRecord(
                index=k, image=right if ok else wrong, correct=ok, verdict="right" if ok else "wrong",
                critique=("the circle is right" if ok else f"two circles {SCRIPT}"),
                instruction=None if last else "remove <b>one</b> red circle",
                rewards={"verifier": float(ok), "judge": 0.5 + 0.1 * k}, timings={"critique": 0.5, "edit": 0.25},
                calls={"critic": 1, "generator" if k == 0 else "editor": 1}, candidates=[right, wrong],
                candidate_scores=[0.9, 0.1], judge_reason="<i>the circle</i> is red",
                critique_by="human" if fork and k == fork[1] else "model"))
        store.finish_session(sid, "critic_satisfied" if correct[-1] else "max_rounds")
    store.start_session(SessionRecord(id="s5", prompt="two squares <i>", family="position", seed=0))
    store.fail_session("s5", ERROR)
    (path.parent / "secret.txt").write_text(SECRET)
    Image.fromarray(render("a green triangle")).save(path.parent / "secret.png")
    (path / "images" / "out.png").symlink_to(path.parent / "secret.png")
    return store


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


def fetch(srv, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Send `path` byte for byte (http.client does not normalise '..' the way a browser would)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def listed(page: str) -> list[str]:
    """Session ids in the first column of the session list (not the 'forked from' links)."""
    return re.findall(r'<tr><td><a href="/run/0/session/([^"]+)"', page)


class Tags(HTMLParser):
    """Every start tag and attribute name in a page."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [a for a, _ in attrs]


def tags(page: str) -> Tags:
    parser = Tags()
    parser.feed(page)
    return parser


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
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
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


# -- slow: a real headless Chromium ------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium: found on PATH, or installed with apt when running as root, else a skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and apt-get cannot install it here (not root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"{' '.join(cmd)} failed: {done.stderr[-500:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but it is not on PATH")
    return found


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One run served for every Chromium test of the module."""
    store = make_run(tmp_path_factory.mktemp("view") / "run")
    srv = make_server([store], "127.0.0.1", 0, quiet=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield store, server_url(srv).rstrip("/")
    srv.shutdown()
    srv.server_close()


def browse(chromium: str, tmp_path: Path, *args: str) -> str:
    """Run headless Chromium once; returns stdout (the DOM with --dump-dom)."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_chromium_pages_load_and_script_stays_inert(chromium, live, tmp_path):
    _, base = live
    overview = browse(chromium, tmp_path, "--dump-dom", f"{base}/")
    assert "self-correction by family" in overview and 'src="/run/0/plot/accuracy.png"' in overview
    session = browse(chromium, tmp_path, "--dump-dom", f"{base}/run/0/session/s1")
    # had the script run, the title would read 'pwned' and the body would be only 'PWNED'
    assert "<title>session s1</title>" in session and session.count('<div class="round" id="round-') == 2
    assert "&lt;script&gt;document.title='pwned'" in session and "<script" not in session
    assert 'href="/run/0/session/s1.fork1"' in session
    failed = browse(chromium, tmp_path, "--dump-dom", f"{base}/run/0/session/s5")
    assert "&lt;img src=x onerror=" in failed and "pwned</title>" not in failed


@pytest.mark.slow
def test_chromium_filter_shows_only_matching_sessions(chromium, live, tmp_path):
    _, base = live
    assert listed(browse(chromium, tmp_path, "--dump-dom", f"{base}/run/0/sessions?family=&outcome=fixed&flips="
                                                             "&rounds=")) == ["s1", "s1.fork1"]
    assert listed(browse(chromium, tmp_path, "--dump-dom", f"{base}/run/0/sessions?family=counting")) == ["s3", "s4"]


@pytest.mark.slow
def test_chromium_refuses_paths_out_of_the_run(chromium, live, tmp_path):
    _, base = live
    for path in ("/run/0/file/..%2f..%2fsecret.txt", "/run/0/file/../../secret.txt", "/run/0/file/%2e%2e/secret.txt",
                 "/run/0/file/images/out.png"):
        dom = browse(chromium, tmp_path, "--dump-dom", base + path)
        assert SECRET not in dom and "not found" in dom


@pytest.mark.slow
def test_chromium_renders_round_images(chromium, live, tmp_path):
    """A probe page (a local file, where scripts may run) loads the viewer's images in Chromium and writes
    each one's naturalWidth into the DOM; the image behind a symlink out of the run must fail to load."""
    store, base = live
    image = store.get("s1").rounds[1].image
    probes = {"round": f"{base}/run/0/file/{image}", "plot": f"{base}/run/0/plot/accuracy.png",
              "escape": f"{base}/run/0/file/..%2fsecret.png", "symlink": f"{base}/run/0/file/images/out.png"}
    imgs = "".join(f"<img src=\"{src}\" onload=\"document.getElementById('out').textContent+='{name}:'"
                   f"+this.naturalWidth+';'\" onerror=\"document.getElementById('out').textContent+='{name}:error;'\">"
                   for name, src in probes.items())
    probe = tmp_path / "probe.html"
    probe.write_text(f"<!doctype html><html><body><p id=out></p>{imgs}</body></html>")
    dom = browse(chromium, tmp_path, "--dump-dom", probe.as_uri())
    results = dict(re.findall(r"(\w+):(\w+);", re.search(r'<p id="out">(.*?)</p>', dom).group(1)))
    assert results == {"round": "64", "plot": "500", "escape": "error", "symlink": "error"}


@pytest.mark.slow
def test_chromium_screenshot_of_a_session(chromium, live, tmp_path):
    """Kept as a test artifact: test-artifacts/viewer-session.png. It must show the red circles of round 0."""
    _, base = live
    shot = ROOT / "test-artifacts" / "viewer-session.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    browse(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1200,900", "--hide-scrollbars",
           f"{base}/run/0/session/s1")
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
        assert im.size == (1200, 900)
    assert len(np.unique(pixels, axis=0)) > 50  # text, borders and images, not a blank page
    red = np.abs(pixels - RED).max(axis=1) <= 12
    assert red.sum() > 2000  # round 0 drawn at 192x192 px: its circles cover thousands of pixels, thumbnails not
