"""Exports to `datasets`: columns, lengths, types, pixels, atomic saves, and TRL's own helpers on the rows."""

import os

import numpy as np
import pytest
from datasets import Dataset, Image, List, load_from_disk

import agent.export as export_mod
from agent.export import CRITIC_REQUEST, export, grpo_dataset, preference_dataset, sft_dataset
from agent.store import RunStore, StoreError
from agent.trajectory import RoundRecord, RunManifest, SessionRecord

P = "a red circle"


def make_store(path, run_id="r1") -> RunStore:
    return RunStore.create(path, RunManifest(run_id=run_id, created_at=0.0, seed=0, refloop_version="0.1.0"))


def add(store, sid, rounds, status="done", prompt=P, stop="critic_satisfied"):
    """rounds: (pixels, critique, verdict, verifier reward[, critique_error]) per round."""
    store.start_session(SessionRecord(id=sid, prompt=prompt, family="colors", seed=5))
    for k, (pixels, critique, verdict, reward, *err) in enumerate(rounds):
        store.upsert_round(sid, RoundRecord(
            index=k, image=store.put_image(pixels), critique=critique, verdict=verdict,
            instruction="make it red" if verdict == "wrong" else None, critique_error=err[0] if err else None,
            rewards={"verifier": reward, "judge": 1.0 - reward}, correct=reward == 1.0))
    if status == "done":
        store.finish_session(sid, stop)
    elif status == "failed":
        store.fail_session(sid, "boom")


@pytest.fixture
def px(rng):
    return [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(6)]


@pytest.fixture
def store(tmp_path, px):
    """a: wrong -> fixed. b: same first image, wrongly called right. c: running. d: unparsed critique.
    e: failed."""
    s = make_store(tmp_path / "run")
    add(s, "a", [(px[0], "wrong: the circle is blue", "wrong", 0.0), (px[1], "right", "right", 1.0)])
    add(s, "b", [(px[0], "right: looks fine", "right", 0.0)])
    add(s, "c", [(px[2], "wrong: no circle", "wrong", 0.0), (px[3], None, None, 1.0)], status="running")
    add(s, "d", [(px[4], "blah", None, 0.0, "no verdict found"), (px[5], "right", "right", 1.0)],
        prompt="a blue square", stop="max_rounds")
    add(s, "e", [(px[4], "wrong: no square", "wrong", 0.0)], status="failed", prompt="a blue square")
    return s


def pixels(pil) -> np.ndarray:
    return np.asarray(pil.convert("RGB"))


def test_sft_rows_are_critiques_that_led_to_a_next_round(store, px):
    ds = sft_dataset(store)
    assert len(ds) == 1 and "prompt" not in ds.column_names  # TRL would read a `prompt` column as the prompt
    assert ds.features["images"] == List(Image()) and ds.features["corrected_image"] == Image()
    row = ds[0]
    assert (row["session_id"], row["round"], row["task_prompt"], row["run_id"]) == ("a", 0, P, "r1")
    assert row["messages"] == [{"role": "user", "content": CRITIC_REQUEST.format(prompt=P)},
                               {"role": "assistant", "content": "wrong: the circle is blue"}]
    assert len(row["images"]) == 1 and np.array_equal(pixels(row["images"][0]), px[0])
    assert np.array_equal(pixels(row["corrected_image"]), px[1])
    assert (row["instruction"], row["verdict"], row["reward"], row["next_reward"]) == ("make it red", "wrong", 0, 1)


def test_sft_options(store, px):
    final = sft_dataset(store, include_final=True)  # + a1, b0 (d0 did not parse; c and e are not done)
    assert [(r["session_id"], r["round"]) for r in final.select_columns(["session_id", "round"])] == [
        ("a", 0), ("a", 1), ("b", 0), ("d", 1)]
    assert final[1]["corrected_image"] is None and final[1]["next_reward"] is None
    assert len(sft_dataset(store, include_unfinished=True)) == 2  # + c0
    pc = sft_dataset(store, form="prompt_completion", reward_key="judge")
    assert pc[0]["prompt"][0]["role"] == "user" and pc[0]["completion"] == [
        {"role": "assistant", "content": "wrong: the circle is blue"}]
    assert "messages" not in pc.column_names and pc[0]["reward"] == 1.0


def test_preference_pairs_critiques_of_the_same_image(store, px, tmp_path):
    ds = preference_dataset(store)
    assert len(ds) == 1
    row = ds[0]
    assert row["chosen"] == [{"role": "assistant", "content": "wrong: the circle is blue"}]  # led to a right image
    assert row["rejected"] == [{"role": "assistant", "content": "right: looks fine"}]  # kept a wrong one
    assert (row["chosen_reward"], row["rejected_reward"]) == (1.0, 0.0)
    assert (row["chosen_from"], row["rejected_from"]) == ("r1:a:0", "r1:b:0")
    assert row["prompt"] == [{"role": "user", "content": CRITIC_REQUEST.format(prompt=P)}]
    assert np.array_equal(pixels(row["images"][0]), px[0])
    # under the judge (1 - verifier here) the preference flips
    flipped = preference_dataset(store, "judge")[0]
    assert flipped["chosen_from"] == "r1:b:0" and flipped["rejected_from"] == "r1:a:0"
    assert len(preference_dataset(store, min_margin=1.0)) == 0
    # another run with the same image and prompt pairs across runs
    other = make_store(tmp_path / "run2", run_id="r2")
    add(other, "z", [(px[0], "wrong: make it red", "wrong", 0.0), (px[1], "right", "right", 0.5)])
    both = preference_dataset([store, other])
    assert sorted((r["chosen_from"], r["rejected_from"]) for r in both) == [
        ("r1:a:0", "r1:b:0"), ("r1:a:0", "r2:z:0"), ("r2:z:0", "r1:b:0")]  # z1 and a1 both say "right": no pair


def test_grpo_prompts_with_images(store, px):
    ds = grpo_dataset(store)
    assert [(r["session_id"], r["round"]) for r in ds] == [("a", 0), ("b", 0), ("d", 0)]
    row = ds[0]
    assert row["prompt"] == [{"role": "user", "content": CRITIC_REQUEST.format(prompt=P)}]
    assert np.array_equal(pixels(row["images"][0]), px[0]) and (row["task_prompt"], row["seed"]) == (P, 5)
    assert row["correct"] is False
    assert len(grpo_dataset(store, rounds="all")) == 5
    assert len(grpo_dataset(store, rounds="all", include_unfinished=True)) == 8


def test_empty_store_gives_typed_empty_datasets(tmp_path):
    empty = make_store(tmp_path / "run")
    for build in (sft_dataset, preference_dataset, grpo_dataset):
        ds = build(empty)
        assert len(ds) == 0 and ds.features["images"] == List(Image())


def test_export_saves_atomically(store, tmp_path, monkeypatch):
    out = export(store, "preference", tmp_path / "out" / "dpo")
    loaded = load_from_disk(str(out))
    assert loaded.column_names == preference_dataset(store).column_names and len(loaded) == 1
    assert os.listdir(tmp_path / "out") == ["dpo"]
    with pytest.raises(StoreError, match="exists"):
        export(store, "sft", out)
    with pytest.raises(ValueError, match="unknown export kind"):
        export(store, "ppo", tmp_path / "x")

    def boom(self, path, **kw):
        os.makedirs(path)
        (open(os.path.join(path, "half.arrow"), "w")).close()
        raise OSError("disk full")

    monkeypatch.setattr(Dataset, "save_to_disk", boom)
    with pytest.raises(OSError, match="disk full"):
        export(store, "sft", out, overwrite=True)
    monkeypatch.undo()
    assert os.listdir(tmp_path / "out") == ["dpo"] and len(load_from_disk(str(out))) == 1  # the old one, intact
    export(store, "sft", out, overwrite=True, include_final=True)
    assert len(load_from_disk(str(out))) == 4 and os.listdir(tmp_path / "out") == ["dpo"]


def test_missing_image_is_a_clear_error(store):
    rel = store.get("a").rounds[1].image
    os.remove(store.image_path(rel))
    with pytest.raises(StoreError, match="missing"):
        export_mod.sft_dataset(store)


def test_trl_helpers_accept_the_rows(store):
    data_utils = pytest.importorskip("trl.data_utils")
    sft, dpo, grpo = sft_dataset(store)[0], preference_dataset(store)[0], grpo_dataset(store)[0]
    for row in (sft, dpo, grpo):
        assert data_utils.is_conversational(row)
    for messages, images in ((sft["messages"], sft["images"]), (dpo["prompt"], dpo["images"]),
                             (grpo["prompt"], grpo["images"])):
        # what TRL's vision collators (SFT, DPO) and GRPOTrainer call on every example
        prepared = data_utils.prepare_multimodal_messages(messages, images=images)
        first = prepared[0]["content"]
        assert first[0] == {"type": "image", "image": images[0]}
        assert first[1] == {"type": "text", "text": CRITIC_REQUEST.format(prompt=P)}
    assert data_utils.prepare_multimodal_messages(dpo["chosen"])[0]["content"][0]["type"] == "text"
