"""One writer per run directory; readers never change a run, even while it is being written."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from agent.lock import RunBusy, holder
from agent.store import RunStore, StoreError
from agent.trajectory import RoundRecord, RunManifest, SessionRecord


def manifest() -> RunManifest:
    return RunManifest(run_id="r", created_at=1.0, seed=0, refloop_version="test")


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    store = RunStore.create(tmp_path / "run", manifest())
    assert store.writer and holder(store.root) == os.getpid()
    with pytest.raises(RunBusy, match=f"being written by process {os.getpid()}"):
        RunStore.open(store.root, writer=True)
    reader = RunStore.open(store.root)  # readers are never refused
    assert not reader.writer
    store.close()
    assert holder(store.root) is None
    with RunStore.open(store.root, writer=True) as again:
        assert again.writer
    assert holder(store.root) is None


def test_a_writer_in_another_process_is_named_and_its_death_frees_the_run(tmp_path):
    RunStore.create(tmp_path / "run", manifest()).close()
    code = textwrap.dedent(f"""
        import sys, time
        from agent.store import RunStore
        store = RunStore.open({str(tmp_path / "run")!r}, writer=True)
        print("locked", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunBusy, match=f"process {child.pid}"):
            RunStore.open(tmp_path / "run", writer=True)
    finally:
        child.kill()
        child.wait()
    RunStore.open(tmp_path / "run", writer=True).close()  # kill -9 released it: no stale lock


def test_readers_refuse_to_write(tmp_path):
    RunStore.create(tmp_path / "run", manifest()).close()
    reader = RunStore.open(tmp_path / "run")
    for write in (lambda: reader.start_session(SessionRecord(id="s", prompt="a circle", seed=0)),
                  lambda: reader.put_image(np.zeros((4, 4, 3), np.uint8)), reader.write_jsonl):
        with pytest.raises(StoreError, match="opened for reading"):
            write()
    assert sorted(p.name for p in (tmp_path / "run" / "sessions").iterdir()) == []


def test_only_the_writer_sweeps_temp_files(tmp_path):
    RunStore.create(tmp_path / "run", manifest()).close()
    stale = tmp_path / "run" / "sessions" / ".s1.json.abc.tmp"
    stale.write_text("half")
    RunStore.open(tmp_path / "run")
    assert stale.exists()  # a reader cannot know whether a writer still holds it
    RunStore.open(tmp_path / "run", writer=True).close()
    assert not stale.exists()  # the writer's lock says no one else does


def test_readers_during_a_write_disturb_nothing(tmp_path):
    """The issue's crash: readers opening the store swept the writer's temp files mid-write."""
    store = RunStore.create(tmp_path / "run", manifest())
    image = store.put_image(np.zeros((8, 8, 3), np.uint8))
    errors, done = [], threading.Event()

    def write():
        try:
            for n in range(40):
                sid = f"s{n:02d}"
                store.start_session(SessionRecord(id=sid, prompt="a circle", seed=n))
                for k in range(3):
                    store.upsert_round(sid, RoundRecord(index=k, image=image))
                store.finish_session(sid, "max_rounds")
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            done.set()

    def read():
        while not done.is_set():
            try:
                reader = RunStore.open(tmp_path / "run")
                for record in reader.sessions():
                    assert [r.index for r in record.rounds] == list(range(len(record.rounds)))
            except StoreError as e:  # a session listed, then read as it was replaced, is never half a file
                errors.append(e)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(3)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    store.write_jsonl()
    store.close()
    records = list(RunStore.open(tmp_path / "run").sessions())
    assert len(records) == 40 and all(r.status == "done" and len(r.rounds) == 3 for r in records)
    assert time.monotonic() - started < 120
