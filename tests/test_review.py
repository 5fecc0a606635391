"""Human review: sessions pause before each revision; accept, edit and reject each do what they say."""

import asyncio
import time

import pytest

from agent.review import ReviewDecision, ReviewRequest, edited_critique
from agent.runner import SessionSpec, make_runtime, run_sessions
from agent.store import RunStore
from agent.trajectory import RunManifest
from policies.stop import StopPolicy
from tasks.shapeworld import ShapeWorldTask

ADD = "seen: nothing\nwrong: expected a circle, found none\nverdict: wrong\nedit: add a circle"
RIGHT = "seen: a circle\nwrong: nothing\nverdict: right"


class ScriptedCritic:
    def __init__(self, script):
        self.script = {p: list(t) for p, t in script.items()}

    def critique(self, prompts, images):
        return [self.script[p].pop(0) for p in prompts]


def test_accept_edit_reject(tmp_path, tiny_image_model):
    critic = ScriptedCritic({"a circle": [ADD, RIGHT], "a square": [ADD, RIGHT], "a triangle": [ADD]})
    asked: list[ReviewRequest] = []

    async def reviewer(request: ReviewRequest) -> ReviewDecision:
        asked.append(request)
        if request.prompt == "a square":
            return ReviewDecision(action="edit", critique=edited_critique(request.critique, "remove the circle"))
        if request.prompt == "a triangle":
            return ReviewDecision(action="reject")
        return ReviewDecision(action="accept")

    store = RunStore.create(tmp_path / "run", RunManifest(run_id="t", created_at=time.time(), seed=0,
                                                          refloop_version="test"))
    rt = make_runtime(store, tiny_image_model, tiny_image_model, critic, StopPolicy(max_rounds=3))
    specs = [SessionSpec(id=f"s{i}", prompt=p, seed=i) for i, p in enumerate(["a circle", "a square", "a triangle"])]
    records = {r.prompt: r for r in asyncio.run(run_sessions(rt, specs, concurrency=3, reviewer=reviewer))}

    assert sorted((r.prompt, r.round) for r in asked) == [("a circle", 0), ("a square", 0), ("a triangle", 0)]
    assert all(r.critique == ADD and r.image.endswith(".png") for r in asked)
    circle, square, triangle = records["a circle"], records["a square"], records["a triangle"]
    assert (circle.stop_reason, len(circle.rounds), circle.rounds[0].critique_by) == ("critic_satisfied", 2, "model")
    assert (square.stop_reason, len(square.rounds)) == ("critic_satisfied", 2)
    assert square.rounds[0].critique_by == "human" and square.rounds[0].instruction == "remove the circle"
    assert "seen: nothing" in square.rounds[0].critique  # the critic's observations are kept
    assert (triangle.stop_reason, len(triangle.rounds), triangle.status) == ("rejected_by_reviewer", 1, "done")
    assert not any(critic.script.values())


def test_edited_critique():
    assert edited_critique(ADD, "right") == "seen: nothing\nwrong: nothing\nverdict: right"
    assert edited_critique("garbage", "Add a  red circle").endswith("edit: add a red circle")
    with pytest.raises(ValueError):  # the shapeworld task checks its edit grammar; free text passes
        edited_critique(ADD, "paint it blue", ShapeWorldTask())
    assert edited_critique(ADD, "paint it blue").endswith("edit: paint it blue")
    with pytest.raises(ValueError):
        ReviewDecision(action="edit")
    with pytest.raises(ValueError):
        ReviewDecision(action="accept", critique=RIGHT)


def test_terminal_reviewer_asks_until_the_answer_is_usable(monkeypatch):
    import io

    from rich.console import Console

    from agent.review import terminal_reviewer

    monkeypatch.setattr("sys.stdin", io.StringIO("x\ne\npaint it blue\ne\nAdd a red circle\nr\n"))
    out = io.StringIO()
    review = terminal_reviewer(Console(file=out, width=100), ShapeWorldTask())
    request = ReviewRequest(session_id="s", prompt="a red circle", round=0, image="/tmp/x.png", critique=ADD,
                            instruction="add a circle")
    decision = asyncio.run(review(request))
    assert decision.action == "edit" and decision.critique.endswith("edit: add a red circle")
    assert "not usable" in out.getvalue() and "edit: add a circle" in out.getvalue()  # shown the critique
    assert asyncio.run(review(request)).action == "reject"
    assert "[a]ccept, [e]dit the instruction, [r]eject" in out.getvalue()  # not eaten as rich markup


def test_terminal_reviewer_with_stdin_closed_says_why(monkeypatch):
    import io

    from rich.console import Console

    from agent.review import ReviewUnanswered, terminal_reviewer

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    review = terminal_reviewer(Console(file=io.StringIO(), width=100))
    request = ReviewRequest(session_id="s", prompt="a red circle", round=0, image="/tmp/x.png", critique=ADD,
                            instruction="add a circle")
    with pytest.raises(ReviewUnanswered, match="standard input is closed"):
        asyncio.run(review(request))


def test_a_session_paused_for_review_resumes_at_its_question(tmp_path, tiny_image_model):
    """The review node's interrupt is checkpointed: a run stopped while a person thinks asks the same
    question again when it resumes (the critique is not recomputed); resumed without a reviewer,
    the critic's critique stands."""
    critic = ScriptedCritic({"a circle": [ADD, RIGHT], "a square": [ADD, RIGHT]})
    store = RunStore.create(tmp_path / "run", RunManifest(run_id="t", created_at=time.time(), seed=0,
                                                          refloop_version="test"))
    specs = [SessionSpec(id="s0", prompt="a circle", seed=0), SessionSpec(id="s1", prompt="a square", seed=1)]
    asked: list[ReviewRequest] = []

    async def stopped_while_thinking():
        both = asyncio.Event()

        async def slow(request: ReviewRequest) -> ReviewDecision:
            asked.append(request)
            if len(asked) == 2:
                both.set()
            await asyncio.sleep(3600)

        rt = make_runtime(store, tiny_image_model, tiny_image_model, critic, StopPolicy(max_rounds=3))
        run = asyncio.ensure_future(run_sessions(rt, specs, concurrency=2, reviewer=slow))
        await both.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(stopped_while_thinking())
    assert critic.script == {"a circle": [RIGHT], "a square": [RIGHT]}  # one critique each so far
    again: list[ReviewRequest] = []

    async def accept(request: ReviewRequest) -> ReviewDecision:
        again.append(request)
        return ReviewDecision(action="accept")

    rt = make_runtime(store, tiny_image_model, tiny_image_model, critic, StopPolicy(max_rounds=3))
    records = asyncio.run(run_sessions(rt, specs[:1], concurrency=1, reviewer=accept))
    assert [(r.session_id, r.round, r.critique) for r in again] == [("s0", 0, ADD)]  # the same question
    assert records[0].stop_reason == "critic_satisfied" and len(records[0].rounds) == 2
    rt = make_runtime(store, tiny_image_model, tiny_image_model, critic, StopPolicy(max_rounds=3))
    (square,) = asyncio.run(run_sessions(rt, specs[1:], concurrency=1))  # no reviewer now: accepted
    assert square.stop_reason == "critic_satisfied" and square.rounds[0].critique_by == "model"
    assert not any(critic.script.values())


def test_the_round_in_review_is_in_the_checkpoint_and_not_yet_in_the_store(tmp_path, tiny_image_model):
    """The round in flight lives in the graph state: paused at review, round 0 (image and critique)
    is in the checkpointed state and not in the store; after the answer, the store records it once,
    in the write that opens round 1, and round 1 in the write that ends the session."""
    from agent.graph import build_graph
    from agent.runner import CHECKPOINTS, open_checkpointer

    critic = ScriptedCritic({"a circle": [ADD, RIGHT]})
    store = RunStore.create(tmp_path / "run", RunManifest(run_id="t", created_at=time.time(), seed=0,
                                                          refloop_version="test"))
    spec = SessionSpec(id="s0", prompt="a circle", seed=0)
    writes: list[tuple[str, int, str | None]] = []  # (status, rounds, round 0's critique) of every session write
    write = store._write
    store._write = lambda r: (writes.append((r.status, len(r.rounds), r.rounds[0].critique if r.rounds else None)),
                              write(r))[1]

    async def paused():
        asked = asyncio.Event()

        async def slow(request: ReviewRequest) -> ReviewDecision:
            asked.set()
            await asyncio.sleep(3600)

        rt = make_runtime(store, tiny_image_model, tiny_image_model, critic, StopPolicy(max_rounds=3))
        run = asyncio.ensure_future(run_sessions(rt, [spec], reviewer=slow))
        await asked.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        saver = await open_checkpointer(store.root / CHECKPOINTS)
        try:
            return await build_graph(rt, saver, review=True).aget_state({"configurable": {"thread_id": "s0"}})
        finally:
            await saver.close()

    snapshot = asyncio.run(paused())
    assert snapshot.next == ("review",)
    flight = snapshot.values["round"]
    assert (flight["index"], flight["critique"], flight["instruction"]) == (0, ADD, "add a circle")
    assert store.image_path(flight["image"]).is_file()  # pixels are written when made
    assert store.get("s0").rounds == [] and writes == [("running", 0, None)]  # only the session's start

    async def edit(request: ReviewRequest) -> ReviewDecision:
        return ReviewDecision(action="edit", critique=edited_critique(request.critique, "add a red circle"))

    rt = make_runtime(store, tiny_image_model, tiny_image_model, critic, StopPolicy(max_rounds=3))
    (record,) = asyncio.run(run_sessions(rt, [spec], reviewer=edit))
    edited = edited_critique(ADD, "add a red circle")
    assert writes[1:] == [("running", 1, edited), ("done", 2, edited)]  # each round written once, when finished
    assert [r.index for r in record.rounds] == [0, 1] and record.rounds[0].image == flight["image"]
    assert (record.rounds[0].critique_by, record.rounds[0].instruction) == ("human", "add a red circle")
    assert (record.stop_reason, record.rounds[1].critique, record.final_image) == (
        "critic_satisfied", RIGHT, record.rounds[1].image)
    assert store.get("s0") == record and not any(critic.script.values())
