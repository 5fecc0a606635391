"""Replay: fork a finished session at round K with LangGraph time travel.

The parent's thread history holds a checkpoint after every node. We pick the one where round K is
the round in flight (agent/round.py), write a new state onto it with `update_state` (the fork's session id, and a
person's critique when one is given), then resume from the new checkpoint. The fork lives in the
same thread as its parent, as a branch of the checkpoint tree; every checkpoint carries its
session id, so a fork killed halfway resumes from its own latest checkpoint.

Without a critique the critic looks at round K again (a new critic on an old trajectory, say);
with one, round K's critique is the person's and the loop goes on from it.
"""

from __future__ import annotations

from agent.graph import Runtime, build_graph
from agent.review import human_critique_update
from agent.runner import CHECKPOINTS, open_checkpointer
from agent.store import StoreError
from agent.trajectory import SessionRecord
from policies.critique import CritiqueError


class ReplayError(ValueError):
    """The fork cannot be made (the message says why); nothing was written."""


def root_thread(rt: Runtime, session_id: str) -> str:
    """A fork runs in its first ancestor's thread."""
    record = rt.store.get(session_id)
    while record.parent_id is not None:
        record = rt.store.get(record.parent_id)
    return record.id


def fork_id(rt: Runtime, parent_id: str) -> str:
    taken = set(rt.store.session_ids())
    n = 1
    while f"{parent_id}.fork{n}" in taken:
        n += 1
    return f"{parent_id}.fork{n}"


async def _history(graph, thread: str) -> list:
    """Checkpoints of a thread, newest first."""
    return [s async for s in graph.aget_state_history({"configurable": {"thread_id": thread}})]


def _checkpoint(history: list, session_id: str, round_index: int, after_critique: bool):
    """The newest checkpoint of `session_id` holding round `round_index`'s image, before its
    critique (next is critique) or right after it (next is revise or finish)."""
    for snap in history:
        v = snap.values
        if v.get("session_id") != session_id or v.get("revisions") != round_index:
            continue
        if after_critique and snap.next and snap.next[0] in ("revise", "finish"):
            return snap
        if not after_critique and snap.next == ("critique",):
            return snap
    return None


def _validate(rt: Runtime, parent: SessionRecord, round_index: int) -> None:
    if parent.status == "running":
        raise ReplayError(f"session {parent.id} is still running: finish it (refloop run --resume) before forking")
    if not 0 <= round_index < len(parent.rounds):
        raise ReplayError(f"session {parent.id} has rounds 0..{len(parent.rounds) - 1}; no round {round_index}")


async def fork_session(rt: Runtime, parent_id: str, round_index: int, critique: str | None = None,
                       new_id: str | None = None) -> SessionRecord:
    """Fork `parent_id` at `round_index` and run the fork to its end; returns the fork's record.
    With `critique`, that text (a person's) replaces the critic's reflection on the round."""
    try:
        parent = rt.store.get(parent_id)
    except StoreError as e:
        raise ReplayError(str(e)) from None
    _validate(rt, parent, round_index)
    if critique is not None:
        try:
            rt.parse_critique(critique)
        except CritiqueError as e:
            raise ReplayError(f"the critique does not follow the format: {e}") from None
    saver = await open_checkpointer(rt.store.root / CHECKPOINTS)
    try:
        graph = build_graph(rt, saver)
        history = await _history(graph, root_thread(rt, parent_id))
        snap = _checkpoint(history, parent_id, round_index, after_critique=critique is not None)
        if snap is None:
            raise ReplayError(f"no checkpoint of session {parent_id} at round {round_index} in {CHECKPOINTS}")
        if snap.values.get("round") is None:  # checkpoints written before the round lived in the state
            raise ReplayError(f"session {parent_id} was run by an older refloop whose checkpoints do not hold the "
                              "round in flight; rerun its prompt with this version to fork it")
        new_id = new_id or fork_id(rt, parent_id)
        # the rounds before K are finished: the fork's record starts with them; round K is in flight
        # in the checkpoint (as made, or as critiqued) and the fork's store records it when finished
        rt.store.start_session(SessionRecord(
            id=new_id, prompt=parent.prompt, family=parent.family, seed=parent.seed,
            rounds=[r.model_copy() for r in parent.rounds[:round_index]], parent_id=parent_id,
            fork_round=round_index))
        if critique is None:  # resume into the critique of round K, as the node that made the image
            update, as_node = {"session_id": new_id}, None
        else:  # resume after the critique, as if the critic had written the person's words
            scores = list(snap.values.get("scores", []))
            update = {"session_id": new_id, **human_critique_update(rt, snap.values["round"], critique, scores)}
            as_node = "critique"
        config = await graph.aupdate_state(snap.config, update, as_node=as_node)
        await graph.ainvoke(None, {**config, "recursion_limit": rt.recursion_limit}, durability="sync")
        return rt.store.get(new_id)
    finally:
        await saver.close()


async def resume_fork(rt: Runtime, session_id: str) -> SessionRecord:
    """Finish a fork that was killed halfway, from its own newest checkpoint."""
    record = rt.store.get(session_id)
    if record.parent_id is None:
        raise ReplayError(f"session {session_id} is not a fork")
    if record.status != "running":
        return record
    saver = await open_checkpointer(rt.store.root / CHECKPOINTS)
    try:
        graph = build_graph(rt, saver)
        mine = [s for s in await _history(graph, root_thread(rt, session_id))
                if s.values.get("session_id") == session_id]
        if not mine:
            raise ReplayError(f"fork {session_id} has no checkpoint yet; fork again")
        config = {**mine[0].config, "recursion_limit": rt.recursion_limit}
        await graph.ainvoke(None, config, durability="sync")
        return rt.store.get(session_id)
    finally:
        await saver.close()
