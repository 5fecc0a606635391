"""Session history (`history: K`): the critic, and an editor that takes it, get each row's K earlier
rounds of its session as (image, reflection) pairs, oldest first, and rows with history are
batched across sessions like any others."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from agent.runner import SessionSpec, make_runtime, run_sessions
from agent.store import RunStore
from agent.trajectory import RunManifest
from policies.stop import StopPolicy
from tests.fakes import FakeImageModel

WRONG = "seen: a shape\nwrong: not yet\nverdict: wrong\nedit: add a circle (round {})"


class RecordingCritic:
    """Always asks for another edit; records every batch it is given."""

    def __init__(self):
        self.batches: list[tuple[list, list, list | None]] = []
        self.path = "critic"

    def critique(self, prompts, images, history=None):
        self.batches.append((list(prompts), [np.array(i) for i in images], history))
        rounds = [0 if history is None else len(h) for h in (history or [None] * len(prompts))]
        return [WRONG.format(r) for r in rounds]


class HistoryEditor(FakeImageModel):
    supports_history = True

    def __init__(self, path):
        super().__init__(path)
        self.histories: list[list] = []

    def edit(self, images, instructions, seeds, history=None):
        self.histories.append(history)
        return super().edit(images, instructions, seeds)


def run(tmp_path, history: int, editor=None, n: int = 3, rounds: int = 3):
    store = RunStore.create(tmp_path / "run", RunManifest(run_id="h", created_at=time.time(), seed=0,
                                                          refloop_version="test"))
    model, critic = editor or FakeImageModel(tmp_path / "image"), RecordingCritic()
    rt = make_runtime(store, model, model, critic, StopPolicy(max_rounds=rounds), max_batch=8, history=history)
    specs = [SessionSpec(id=f"s{i}", prompt=f"prompt {i}", seed=i) for i in range(n)]
    records = asyncio.run(run_sessions(rt, specs, concurrency=n))
    return store, records, critic


def same(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


def test_the_critic_sees_the_k_earlier_rounds_oldest_first_in_batches(tmp_path):
    store, records, critic = run(tmp_path, history=2)
    assert all(len(r.rounds) == 4 and r.stop_reason == "max_rounds" for r in records)
    images = {r.id: [store.load_image(rnd.image) for rnd in r.rounds] for r in records}
    seen = 0
    for prompts, batch_images, history in critic.batches:
        assert history is not None and len(history) == len(prompts)
        for prompt, image, past in zip(prompts, batch_images, history):
            record = next(r for r in records if r.prompt == prompt)
            k = next(i for i, im in enumerate(images[record.id]) if same(im, image))  # the round critiqued
            expected = list(range(max(0, k - 2), k))
            assert len(past) == len(expected)
            for (past_image, text), j in zip(past, expected):
                assert same(past_image, images[record.id][j]) and text == record.rounds[j].critique
            seen += 1
    assert seen == sum(len(r.rounds) for r in records)
    # one critic call per round across the three sessions: rows with history were batched together
    assert max(len(p) for p, _, h in critic.batches if any(h)) == 3


def test_without_history_the_argument_is_left_out(tmp_path):
    _, records, critic = run(tmp_path, history=0, n=2, rounds=1)
    assert all(h is None for _, _, h in critic.batches) and all(len(r.rounds) == 2 for r in records)


def test_an_editor_that_takes_history_gets_it(tmp_path):
    editor = HistoryEditor(tmp_path / "image")
    store, records, _ = run(tmp_path, history=1, editor=editor, n=2, rounds=2)
    rows = [h for batch in editor.histories for h in batch]
    assert len(rows) == 4  # two revisions per session
    # round 1 is made from round 0 (nothing before it); round 2 from round 1, after round 0
    assert sorted(len(h) for h in rows) == [0, 0, 1, 1]
    firsts = {store.load_image(r.rounds[0].image).tobytes() for r in records}
    assert {h[0][0].tobytes() for h in rows if h} == firsts
