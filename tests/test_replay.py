"""Replay: a finished session forked at round K with LangGraph time travel, with or without a
person's critique; the fork is a new session linked to its parent, and the parent is untouched."""

import asyncio
import json
import time

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.replay import ReplayError, fork_session, resume_fork
from agent.runner import SessionSpec, make_runtime, run_sessions
from agent.store import RunStore
from agent.trajectory import RunManifest
from policies.stop import StopPolicy
from tasks.shapeworld import ShapeWorldTask

RIGHT = "seen: a circle\nwrong: nothing\nverdict: right"
ADD = "seen: nothing\nwrong: expected a circle, found none\nverdict: wrong\nedit: add a circle"
REMOVE = "seen: two circles\nwrong: one circle too many\nverdict: wrong\nedit: remove a circle"


class ScriptedCritic:
    def __init__(self, texts):
        self.texts = list(texts)

    def critique(self, prompts, images):
        return [self.texts.pop(0) for _ in prompts]


@pytest.fixture
def image_model(tiny_image_model):
    return tiny_image_model


def runtime(store, image_model, critic, max_rounds=3):
    """The shapeworld task reads the critiques (its edit grammar), as `refloop replay` does on its runs."""
    return make_runtime(store, image_model, image_model, critic, StopPolicy(max_rounds=max_rounds),
                        task=ShapeWorldTask())


@pytest.fixture
def finished_run(tmp_path, image_model):
    """One session: round 0 -> add -> round 1 -> add -> round 2 -> right."""
    store = RunStore.create(tmp_path / "run", RunManifest(run_id="t", created_at=time.time(), seed=0,
                                                          refloop_version="test"))
    rt = runtime(store, image_model, ScriptedCritic([ADD, ADD, RIGHT]))
    [record] = asyncio.run(run_sessions(rt, [SessionSpec(id="s", prompt="a circle", seed=3)]))
    assert (record.stop_reason, len(record.rounds)) == ("critic_satisfied", 3)
    return store


def fork(store, image_model, texts, **kw):
    async def go():
        rt = runtime(store, image_model, ScriptedCritic(texts))
        try:
            return await fork_session(rt, **kw)
        finally:
            for w in (rt.generator, rt.editor, rt.critic):
                await w.close()
    return asyncio.run(go())


def test_fork_with_a_human_critique(finished_run, image_model):
    parent_before = finished_run.get("s")
    fork_rec = fork(finished_run, image_model, [RIGHT], parent_id="s", round_index=1, critique=REMOVE)
    assert fork_rec.id == "s.fork1" and (fork_rec.parent_id, fork_rec.fork_round) == ("s", 1)
    assert fork_rec.status == "done" and fork_rec.stop_reason == "critic_satisfied"
    assert [r.image for r in fork_rec.rounds[:2]] == [r.image for r in parent_before.rounds[:2]]
    r1 = fork_rec.rounds[1]
    assert (r1.critique_by, r1.instruction, r1.verdict) == ("human", "remove a circle", "wrong")
    assert fork_rec.rounds[2].calls.get("editor") == 1 and fork_rec.rounds[2].critique == RIGHT
    assert len(fork_rec.rounds) == 3
    assert finished_run.get("s") == parent_before  # the parent is untouched


def test_fork_without_critique_asks_the_critic_again(finished_run, image_model):
    fork_rec = fork(finished_run, image_model, [RIGHT], parent_id="s", round_index=0)
    assert fork_rec.rounds[0].critique == RIGHT and fork_rec.rounds[0].critique_by == "model"
    assert (len(fork_rec.rounds), fork_rec.stop_reason) == (1, "critic_satisfied")
    second = fork(finished_run, image_model, [ADD, RIGHT], parent_id="s", round_index=0)
    assert second.id == "s.fork2" and len(second.rounds) == 2
    # a fork of a fork: found in the first ancestor's thread
    third = fork(finished_run, image_model, [RIGHT], parent_id="s.fork2", round_index=1)
    assert (third.parent_id, third.fork_round, len(third.rounds)) == ("s.fork2", 1, 2)


def test_forks_read_checkpoints_with_our_state_type_registered(finished_run, image_model, caplog, monkeypatch):
    """LangGraph warns about (and will block) unregistered types in checkpoints: LoopState is registered."""
    import langgraph.checkpoint.serde._msgpack as lg_msgpack

    monkeypatch.setattr(lg_msgpack, "STRICT_MSGPACK_ENABLED", True)  # as LangGraph's strict mode
    with caplog.at_level("WARNING"):
        fork_rec = fork(finished_run, image_model, [RIGHT], parent_id="s", round_index=1, critique=REMOVE)
    assert fork_rec.status == "done" and len(fork_rec.rounds) == 3
    assert not [r for r in caplog.records if "unregistered" in r.getMessage() or "reconstruct" in r.getMessage()]


def test_a_right_verdict_from_a_person_ends_the_fork(finished_run, image_model):
    fork_rec = fork(finished_run, image_model, [], parent_id="s", round_index=0, critique=RIGHT)
    assert (len(fork_rec.rounds), fork_rec.stop_reason) == (1, "critic_satisfied")


@pytest.mark.parametrize("kw, message", [
    ({"parent_id": "nope", "round_index": 0}, "no session"),
    ({"parent_id": "s", "round_index": 7}, "no round 7"),
    ({"parent_id": "s", "round_index": 0, "critique": "looks fine"}, "does not follow the format"),
    ({"parent_id": "s", "round_index": 0, "critique": "verdict: wrong\nedit: paint it"}, "does not follow"),
])
def test_bad_forks_write_nothing(finished_run, image_model, kw, message):
    before = finished_run.session_ids()
    with pytest.raises(ReplayError, match=message):
        fork(finished_run, image_model, [], **kw)
    assert finished_run.session_ids() == before


def test_a_checkpoint_without_the_round_in_state_is_refused_in_one_line(finished_run, image_model):
    """Runs written before the round in flight lived in the state cannot be forked: say so, write nothing."""
    from agent.graph import build_graph
    from agent.runner import CHECKPOINTS, open_checkpointer

    async def drop_round():  # the checkpoint round 0's critique starts from, as an older refloop wrote it
        rt = runtime(finished_run, image_model, ScriptedCritic([]))
        saver = await open_checkpointer(finished_run.root / CHECKPOINTS)
        try:
            graph = build_graph(rt, saver)
            history = [h async for h in graph.aget_state_history({"configurable": {"thread_id": "s"}})]
            snap = next(h for h in history if h.values.get("revisions") == 0 and h.next == ("critique",))
            await graph.aupdate_state(snap.config, {"round": None}, as_node="generate")
        finally:
            await saver.close()
            for w in (rt.generator, rt.editor, rt.critic):
                await w.close()

    asyncio.run(drop_round())
    before = finished_run.session_ids()
    with pytest.raises(ReplayError, match="older refloop"):
        fork(finished_run, image_model, [], parent_id="s", round_index=0)
    assert finished_run.session_ids() == before


def test_a_killed_fork_resumes(finished_run, image_model):
    class Dies(ScriptedCritic):
        def critique(self, prompts, images):
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):  # the critic dies on the fork's round 2
        asyncio.run(_fork_with(finished_run, image_model, Dies([])))
    half = finished_run.get("s.fork1")  # rounds 0 and 1 finished; round 2 made, in flight in the checkpoint
    assert half.status == "running" and len(half.rounds) == 2 and half.rounds[1].instruction == "remove a circle"
    flight = asyncio.run(_state(finished_run, image_model, "s"))
    assert flight["session_id"] == "s.fork1" and flight["revisions"] == 2
    assert flight["round"]["index"] == 2 and flight["round"]["critique"] is None

    async def finish():
        rt = runtime(finished_run, image_model, ScriptedCritic([RIGHT]))
        try:
            return await resume_fork(rt, "s.fork1")
        finally:
            for w in (rt.generator, rt.editor, rt.critic):
                await w.close()
    done = asyncio.run(finish())
    assert done.status == "done" and len(done.rounds) == 3 and done.rounds[2].critique == RIGHT


async def _state(store, image_model, thread):
    """The newest checkpointed state of a thread."""
    from agent.graph import build_graph
    from agent.runner import CHECKPOINTS, open_checkpointer

    saver = await open_checkpointer(store.root / CHECKPOINTS)
    try:
        graph = build_graph(runtime(store, image_model, ScriptedCritic([])), saver)
        return (await graph.aget_state({"configurable": {"thread_id": thread}})).values
    finally:
        await saver.close()


async def _fork_with(store, image_model, critic):
    rt = runtime(store, image_model, critic)
    try:
        return await fork_session(rt, "s", 1, critique=REMOVE)
    finally:
        for w in (rt.generator, rt.editor, rt.critic):
            await w.close()


def test_replay_from_the_command_line(tmp_path, monkeypatch):
    from tests.fakes import use_fake_models

    use_fake_models(monkeypatch, tmp_path / "models")  # the command, whatever embedded model ships
    config = tmp_path / "run.yaml"
    config.write_text("stop: {max_rounds: 1}\n")
    cli = CliRunner()
    out = tmp_path / "run"
    ran = cli.invoke(app, ["run", "a red circle", "--config", str(config), "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    fork = cli.invoke(app, ["replay", str(out), "p00000", "--from-round", "0", "--critique",
                            "seen: nothing\nwrong: no circle\nverdict: wrong\nedit: add a red circle"])
    assert fork.exit_code == 0, fork.output
    assert "p00000.fork1" in fork.output and "human" in fork.output
    lines = {json.loads(line)["id"]: json.loads(line) for line in (out / "sessions.jsonl").read_text().splitlines()}
    made = lines["p00000.fork1"]
    assert (made["parent_id"], made["fork_round"], made["status"]) == ("p00000", 0, "done")
    assert made["rounds"][0]["instruction"] == "add a red circle" and len(made["rounds"]) == 2
    for args, message in [(["--from-round", "3"], "has rounds 0..0"), ([], "--from-round"),
                          (["--from-round", "0", "--critique", "fine"], "format")]:
        bad = cli.invoke(app, ["replay", str(out), "p00000", *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output
    assert cli.invoke(app, ["replay", str(tmp_path / "nope"), "p00000", "--from-round", "0"]).exit_code == 2
