"""Session history (`history: K`): the critic, and an editor that takes it, get each row's K earlier
rounds of its session as (image, reflection) pairs, oldest first, and rows with history are
batched across sessions like any others. The exports of such a run hold the conversation the critic
saw, and TRL's trainers take them."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import pytest
import torch

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
                                                          refloop_version="test", config={"history": history}))
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


def critic_saw(critic: RecordingCritic, prompt: str, image: np.ndarray) -> list:
    """The (image, reflection) history the critic was given with this image of this prompt."""
    (past,) = [past for prompts, images, history in critic.batches
               for p, i, past in zip(prompts, images, history) if p == prompt and same(i, image)]
    return past


def test_a_history_runs_sft_rows_hold_the_conversation_the_critic_saw(tmp_path):
    from agent.export import sft_dataset
    from model.backends.chat import FOLLOWUP, critic_messages
    from tasks import load_task

    store, records, critic = run(tmp_path, history=2, n=1, rounds=3)
    (session,) = records
    rows = sft_dataset(store)  # a row per critique that led to a next round: rounds 0, 1, 2
    assert [row["round"] for row in rows] == [0, 1, 2]
    ask = load_task("shapeworld").critic_template  # no template in the config: the task's words
    placeholder = {"type": "image", "text": None}
    for row in rows:
        k = row["round"]
        image = store.load_image(session.rounds[k].image)
        past = critic_saw(critic, session.prompt, image)
        assert len(row["images"]) == len(past) + 1 == min(k, 2) + 1  # K + 1 images once K rounds are behind
        for pil, expected in zip(row["images"], [*(i for i, _ in past), image]):
            assert same(np.asarray(pil.convert("RGB")), expected)
        # the messages are the critic's own conversation (model/backends/chat.py), images as placeholders
        seen = critic_messages(session.prompt, image, past, ask, FOLLOWUP, lambda _: placeholder)
        assert row["messages"] == [*seen, {"role": "assistant", "content": [{"type": "text",
                                                                             "text": session.rounds[k].critique}]}]
        assert [m["content"][0]["text"] for m in row["messages"][1:-1:2]] == [t for _, t in past]


def pairs_run(path, px) -> RunStore:
    """A run with history: 1, written round by round: (pixels, critique, verdict, verifier reward)."""
    from agent.trajectory import RoundRecord, SessionRecord

    store = RunStore.create(path, RunManifest(run_id="r1", created_at=0.0, seed=0, refloop_version="test",
                                              config={"history": 1, "task": "open"}))
    sessions = {"a": [(0, "wrong: A", 0.0), (1, "wrong: X", 0.0), (4, "right", 1.0)],
                "b": [(0, "wrong: A", 0.0), (1, "right: Y", 0.0)],
                "c": [(0, "wrong: B", 0.0), (3, "right", 1.0)],
                "d": [(0, "wrong: B", 0.0), (1, "wrong: W", 0.0), (4, "right", 1.0)]}
    for sid, rounds in sessions.items():
        store.start_session(SessionRecord(id=sid, prompt="a red hat", seed=0))
        for k, (i, text, reward) in enumerate(rounds):
            verdict = text.split(":")[0]
            store.upsert_round(sid, RoundRecord(index=k, image=store.put_image(px[i]), critique=text, verdict=verdict,
                                                instruction="fix it" if verdict == "wrong" else None,
                                                rewards={"verifier": reward}))
        store.finish_session(sid, "critic_satisfied")
    return store


def test_history_pairs_share_the_whole_conversation(tmp_path, rng):
    """DPO pairs two critiques of the same image after the same earlier rounds and reflections: with
    history: 1, a's and b's critiques of px1 (both after "wrong: A" on px0) pair, d's (after "wrong: B")
    does not; the pairs on round 0 have one image, the round-1 pair two."""
    from agent.export import preference_dataset

    px = [rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for _ in range(5)]
    pairs = preference_dataset(pairs_run(tmp_path / "run", px))
    assert sorted((r["chosen_from"], r["rejected_from"]) for r in pairs) == [
        ("r1:a:1", "r1:b:1"), ("r1:c:0", "r1:a:0"), ("r1:c:0", "r1:b:0")]
    (late,) = [r for r in pairs if r["chosen_from"] == "r1:a:1"]
    assert all(same(np.asarray(i.convert("RGB")), p) for i, p in zip(late["images"], px[:2], strict=True))
    assert [m["role"] for m in late["prompt"]] == ["user", "assistant", "user"]
    assert late["prompt"][1]["content"] == [{"type": "text", "text": "wrong: A"}]
    assert [late[k][0]["content"][0]["text"] for k in ("chosen", "rejected")] == ["wrong: X", "right: Y"]
    assert all(len(r["images"]) == 1 and len(r["prompt"]) == 1 for r in pairs if r["chosen_from"] != "r1:a:1")


@pytest.mark.slow
def test_trl_trains_on_a_history_runs_exports(tmp_path, llava_folder):
    """SFTTrainer and DPOTrainer take the multi-image rows as saved and loaded, with the tiny LLaVA."""
    from datasets import load_from_disk
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from agent.export import export

    store, _, _ = run(tmp_path, history=2, n=1, rounds=3)
    sft = load_from_disk(str(export(store, "sft", tmp_path / "sft")))
    assert max(len(r["images"]) for r in sft) == 3
    rng = np.random.default_rng(0)
    px = [rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for _ in range(5)]
    dpo = load_from_disk(str(export(pairs_run(tmp_path / "pairs", px), "preference", tmp_path / "dpo")))
    assert max(len(r["images"]) for r in dpo) == 2
    processor = AutoProcessor.from_pretrained(llava_folder)
    for config_cls, trainer_cls, data in ((SFTConfig, SFTTrainer, sft), (DPOConfig, DPOTrainer, dpo)):
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration.from_pretrained(llava_folder)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        checkpointing = next(f.name for f in dataclasses.fields(config_cls)
                             if f.name in ("activation_checkpointing", "gradient_checkpointing"))
        args = config_cls(output_dir=str(tmp_path / config_cls.__name__), max_steps=2, per_device_train_batch_size=1,
                          learning_rate=1e-3, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                          disable_tqdm=True, max_length=None, logging_steps=1, **{checkpointing: False})
        trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=processor)
        assert trainer._is_vision_dataset and trainer._is_vlm
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        assert trainer.state.global_step == 2 and losses and all(np.isfinite(losses))
        assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
