"""The web viewer in a real headless Chromium (slow): pages load, scripts stay inert, filters work."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.viewer_http import make_server, server_url
from tests.viewer_run import RED, ROOT, SECRET, listed, make_run

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
