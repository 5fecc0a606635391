"""The run store: layout, atomic writes, idempotent rounds, refusals, schema versions."""

import json
import os
import re

import numpy as np
import pytest
from pydantic import ValidationError

import agent.store as store_mod
import agent.trajectory as traj
from agent.store import RunStore, StoreError
from agent.trajectory import RoundRecord, RunManifest, SessionRecord


def manifest(**kw) -> RunManifest:
    return RunManifest(run_id="r1", created_at=1.0, config={"max_rounds": 3}, seed=7, refloop_version="0.1.0",
                       models={"critic": {"path": "/m/critic", "hash": "abc"}}, git_commit="deadbeef", **kw)


def image(rng, h=8, w=8) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def leftovers(root) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def store(tmp_path):
    return RunStore.create(tmp_path / "run", manifest())


def session(sid="s1", **kw) -> SessionRecord:
    return SessionRecord(id=sid, prompt="a red circle", family="colors", seed=3, **kw)


# -- creating and opening -------------------------------------------------------------------------


def test_create_then_open_round_trips_the_manifest(tmp_path):
    created = RunStore.create(tmp_path / "run", manifest())
    root = tmp_path / "run"
    assert sorted(p.name for p in root.iterdir()) == [".writer", "images", "manifest.json", "sessions"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp dir left beside it
    opened = RunStore.open(root)
    assert opened.manifest == created.manifest == manifest()
    assert json.loads((root / "manifest.json").read_text())["schema_version"] == traj.SCHEMA_VERSION


def test_create_accepts_an_empty_dir_and_refuses_others(tmp_path):
    (tmp_path / "empty").mkdir()
    RunStore.create(tmp_path / "empty", manifest())
    with pytest.raises(StoreError, match="already a refloop run"):
        RunStore.create(tmp_path / "empty", manifest())
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="exists and is not a refloop run"):
        RunStore.create(busy, manifest())
    assert (busy / "notes.txt").read_text() == "mine" and sorted(os.listdir(busy)) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="exists and is not a refloop run"):
        RunStore.create(tmp_path / "file", manifest())


def test_create_refuses_an_unwritable_location(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=re.escape(str(tmp_path / "file" / "run"))):  # fails even as root
        RunStore.create(tmp_path / "file" / "run", manifest())
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        try:
            (locked / "probe").touch()
            pytest.skip("permissions are not enforced here (running as root)")
        except PermissionError:
            pass
        with pytest.raises(StoreError, match=re.escape(f"cannot create a run at {locked / 'run'}")):
            RunStore.create(locked / "run", manifest())
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o700)


def test_a_failed_create_leaves_nothing_that_looks_like_a_run(tmp_path, monkeypatch):
    real_replace = os.replace

    def fail_on_dir(src, dst):
        if os.path.isdir(src):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(store_mod.os, "replace", fail_on_dir)
    with pytest.raises(StoreError, match="no space left"):
        RunStore.create(tmp_path / "run", manifest())
    assert os.listdir(tmp_path) == []


def test_open_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        RunStore.open(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        RunStore.open(tmp_path / "file")
    with pytest.raises(StoreError, match="is not a refloop run"):
        RunStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="not a valid run manifest"):
        RunStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text(manifest().model_copy(update={"schema_version": 99}).model_dump_json())
    with pytest.raises(StoreError, match="schema_version 99, newer than this refloop reads"):
        RunStore.open(tmp_path)


# -- schema ---------------------------------------------------------------------------------------


def test_schema_versions_newer_refused_older_migrated(monkeypatch):
    data = session().model_dump()
    with pytest.raises(ValidationError, match="upgrade refloop"):
        SessionRecord.model_validate({**data, "schema_version": traj.SCHEMA_VERSION + 1})
    with pytest.raises(ValidationError, match="invalid schema_version"):
        SessionRecord.model_validate({**data, "schema_version": 0})
    # a future version 2 that renamed `family` to `task_family`, reading a version-1 record
    monkeypatch.setattr(traj, "SCHEMA_VERSION", 2)
    with pytest.raises(ValidationError, match="no migration from schema_version 1"):
        SessionRecord.model_validate(data)
    monkeypatch.setitem(traj.MIGRATIONS, 1, lambda d: {**d, "family": d["family"].upper()})
    upgraded = SessionRecord.model_validate(data)
    assert upgraded.schema_version == 2 and upgraded.family == "COLORS"


def test_records_validate_paths_numbers_and_order():
    r = RoundRecord(index=0, image="images/ab/x.png", rewards={"verifier": np.float32(0.5)}, calls={"critic": 1})
    assert type(r.rewards["verifier"]) is float
    assert RoundRecord.model_validate_json(r.model_dump_json()) == r
    for bad in ["/etc/passwd", "../x.png", "images/../../x.png", "a\\b.png", ""]:
        with pytest.raises(ValidationError):
            RoundRecord(index=0, image=bad)
    with pytest.raises(ValidationError, match="finite"):
        RoundRecord(index=0, image="a.png", rewards={"judge": float("nan")})
    with pytest.raises(ValidationError, match="indices must be 0..n-1"):
        session(rounds=[RoundRecord(index=1, image="a.png")])
    with pytest.raises(ValidationError, match="parent_id and fork_round"):
        session(parent_id="s0")
    with pytest.raises(ValidationError, match="needs a stop_reason"):
        session(status="done")
    with pytest.raises(ValidationError, match="Extra inputs"):
        RoundRecord(index=0, image="a.png", score=1.0)


# -- sessions -------------------------------------------------------------------------------------


def test_a_session_through_the_loop(store, rng):
    assert store.start_session(session()).started_at is not None
    img0, img1 = store.put_image(image(rng)), store.put_image(image(rng))
    store.upsert_round("s1", RoundRecord(index=0, image=img0, timings={"generate": 0.4}))
    # critique node: updates its own round
    store.upsert_round("s1", RoundRecord(index=0, image=img0, critique="wrong: it is blue", verdict="wrong",
                                         instruction="make the circle red", rewards={"verifier": 0.0}))
    store.upsert_round("s1", RoundRecord(index=1, image=img1, rewards={"verifier": 1.0}))
    assert store.unfinished() == ["s1"] and not (store.root / "sessions.jsonl").exists()
    done = store.finish_session("s1", "critic_satisfied")
    assert done.status == "done" and done.final_image == img1 and done.finished_at >= done.started_at
    assert [r.index for r in done.rounds] == [0, 1] and done.rounds[0].instruction == "make the circle red"
    assert store.unfinished() == []
    lines = (store.root / "sessions.jsonl").read_text().splitlines()
    assert [SessionRecord.model_validate_json(x) for x in lines] == [store.get("s1")]
    assert leftovers(store.root) == []


def test_a_rerun_round_overwrites_itself_and_gaps_are_refused(store, rng):
    store.start_session(session())
    img = store.put_image(image(rng))
    for attempt in range(3):  # the same node re-run after crashes
        store.upsert_round("s1", RoundRecord(index=0, image=img, critique=f"try {attempt}"))
    assert [r.critique for r in store.get("s1").rounds] == ["try 2"]
    with pytest.raises(StoreError, match="would leave a gap"):
        store.upsert_round("s1", RoundRecord(index=2, image=img))
    assert len(store.get("s1").rounds) == 1
    with pytest.raises(StoreError, match="no session"):
        store.upsert_round("s9", RoundRecord(index=0, image=img))


def test_start_session_is_idempotent(store):
    first = store.start_session(session())
    again = store.start_session(session().model_copy(update={"prompt": "something else", "seed": 99}))
    assert again == first == store.get("s1")


def test_done_sessions_are_final_failed_ones_can_retry(store, rng):
    img = store.put_image(image(rng))
    store.start_session(session("a"))
    store.upsert_round("a", RoundRecord(index=0, image=img))
    failed = store.fail_session("a", "critic timed out")
    assert (failed.status, failed.stop_reason, failed.error) == ("failed", "error", "critic timed out")
    retried = store.upsert_round("a", RoundRecord(index=0, image=img, critique="ok"))
    assert retried.status == "running" and retried.error is None
    store.finish_session("a", "max_rounds", final_image=img)
    with pytest.raises(StoreError, match="is done"):
        store.upsert_round("a", RoundRecord(index=1, image=img))
    with pytest.raises(StoreError, match="not in the run"):
        store.finish_session("a", "max_rounds", final_image="images/00/missing.png")


def test_sessions_in_id_order_and_jsonl_has_one_line_each(store):
    for sid in ["b", "c-2", "a.1", "A_0"]:
        store.start_session(session(sid))
    (store.root / "sessions" / ".a.1.json.0123.tmp").write_text("half")  # a kill -9 leftover: ignored
    assert [s.id for s in store.sessions()] == ["A_0", "a.1", "b", "c-2"]
    store.fail_session("b", "boom")
    lines = (store.root / "sessions.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["A_0", "a.1", "b", "c-2"]
    assert json.loads(lines[2])["status"] == "failed" and store.unfinished() == ["A_0", "a.1", "c-2"]


@pytest.mark.parametrize("bad", ["../x", ".hidden", "a/b", "", "a b", "x" * 201, "é"])
def test_unsafe_session_ids_are_refused(store, bad):
    with pytest.raises(StoreError, match="unsafe session id"):
        store.get(bad)
    with pytest.raises(ValidationError, match="unsafe session id"):
        session(bad)
    assert os.listdir(store.root / "sessions") == []


def test_a_failed_session_write_keeps_the_previous_file(store, rng, monkeypatch):
    img = store.put_image(image(rng))
    store.start_session(session())
    store.upsert_round("s1", RoundRecord(index=0, image=img))
    before = (store.root / "sessions" / "s1.json").read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.upsert_round("s1", RoundRecord(index=1, image=img))
    monkeypatch.undo()
    assert (store.root / "sessions" / "s1.json").read_bytes() == before
    assert len(store.get("s1").rounds) == 1 and leftovers(store.root) == []


def test_a_session_file_from_a_newer_refloop_is_refused(store):
    store.start_session(session())
    path = store.root / "sessions" / "s1.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": 2}))
    with pytest.raises(StoreError, match="newer than this refloop reads"):
        store.get("s1")


def test_jsonl_refresh_is_throttled_and_write_jsonl_completes_it(store, rng, monkeypatch):
    """Each ending would otherwise read every session (n^2 over a run): endings within JSONL_EVERY
    of the last refresh leave the file alone; write_jsonl (as every run's end calls it) brings it up to date."""
    monkeypatch.setattr("agent.store.JSONL_EVERY", 3600.0)
    img = store.put_image(image(rng))
    for sid in ("a", "b"):
        store.start_session(session(sid))
        store.upsert_round(sid, RoundRecord(index=0, image=img))
    store.finish_session("a", "max_rounds")
    store.finish_session("b", "max_rounds")
    path = store.root / "sessions.jsonl"
    assert [json.loads(x)["status"] for x in path.read_text().splitlines()] == ["done", "running"]
    store.write_jsonl()
    assert [json.loads(x)["status"] for x in path.read_text().splitlines()] == ["done", "done"]
    monkeypatch.setattr("agent.store.JSONL_EVERY", 0.0)
    store.fail_session("b", "boom")  # due: written at once
    assert json.loads(path.read_text().splitlines()[1])["status"] == "failed"
