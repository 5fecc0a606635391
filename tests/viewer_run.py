"""A run directory for the viewer tests: fixed, correct, broken and wrong sessions, a fork, a
failed session, text that would take over a page if it were not escaped, and files the viewer
must never serve; plus small readers of what the viewer sends back."""

from __future__ import annotations

import http.client
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

from agent.store import RunStore
from agent.trajectory import RoundRecord, RunManifest, SessionRecord
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
