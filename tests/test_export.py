"""Exports to `datasets`: columns, lengths, types, pixels, atomic saves, and TRL's own helpers on the rows."""

import os

import numpy as np
import pytest
from datasets import Dataset, Image, List, load_from_disk

import agent.export as export_mod
from agent.errors import UsageError
from agent.export import export, grpo_dataset, preference_dataset, sft_dataset
from agent.store import RunStore, StoreError
from agent.trajectory import RoundRecord, RunManifest, SessionRecord
from tasks import load_task

P = "a red circle"
ASK = load_task("shapeworld").critic_template.replace("{prompt}", P)  # what its critic was asked


def make_store(path, run_id="r1", config=None) -> RunStore:
    return RunStore.create(path, RunManifest(run_id=run_id, created_at=0.0, seed=0, refloop_version="0.1.0",
                                             config=config or {}))


def add(store, sid, rounds, status="done", prompt=P, stop="critic_satisfied", rewards=("verifier", "judge")):
    """rounds: (pixels, critique, verdict, verifier reward[, critique_error]) per round; the judge says 1 - it."""
    store.start_session(SessionRecord(id=sid, prompt=prompt, family="colors", seed=5))
    for k, (pixels, critique, verdict, reward, *err) in enumerate(rounds):
        store.upsert_round(sid, RoundRecord(
            index=k, image=store.put_image(pixels), critique=critique, verdict=verdict,
            instruction="make it red" if verdict == "wrong" else None, critique_error=err[0] if err else None,
            rewards={k: v for k, v in (("verifier", reward), ("judge", 1.0 - reward)) if k in rewards},
            correct=reward == 1.0))
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
    assert row["messages"] == [{"role": "user", "content": ASK},
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
    assert row["prompt"] == [{"role": "user", "content": ASK}]
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
    assert row["prompt"] == [{"role": "user", "content": ASK}]
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
        assert first[1] == {"type": "text", "text": ASK}
    assert data_utils.prepare_multimodal_messages(dpo["chosen"])[0]["content"][0]["type"] == "text"


def open_store(path, px, config=None):
    """An open-task run: no verifier, the judge's score only. f: an unreadable critique ended the session
    (the image is kept: its own score is the outcome); g: a critique whose edit scored higher."""
    s = make_store(path, "open1", config or {"task": "open"})
    add(s, "f", [(px[0], "zzz", None, 0.2, "no verdict found")], stop="critique_unreadable", rewards=("judge",))
    add(s, "g", [(px[0], "verdict: wrong\nedit: make the hat red", "wrong", 0.9), (px[1], "verdict: right", "right",
                                                                                   0.6)], rewards=("judge",))
    return s


def test_open_runs_export_the_judges_score_and_the_open_tasks_words(tmp_path, px):
    s = open_store(tmp_path / "open", px)
    ask = load_task("open").critic_template.replace("{prompt}", P)
    (sft,) = sft_dataset(s)
    assert sft["messages"][0] == {"role": "user", "content": ask}
    assert (sft["reward"], sft["next_reward"]) == pytest.approx((0.1, 0.4))
    (pair,) = preference_dataset(s)  # judge: f kept an image scored 0.8, g's edit made one scored 0.4
    assert (pair["chosen_from"], pair["rejected_from"]) == ("open1:f:0", "open1:g:0")
    assert (pair["chosen_reward"], pair["rejected_reward"]) == pytest.approx((0.8, 0.4))
    assert pair["prompt"] == [{"role": "user", "content": ask}] and grpo_dataset(s)[0]["prompt"][0]["content"] == ask
    # the config's own template wins over the task's words
    own = open_store(tmp_path / "own", px, {"task": "open", "models": {"critic": {"template": "Rate {prompt}."}}})
    assert grpo_dataset(own)[0]["prompt"] == [{"role": "user", "content": f"Rate {P}."}]
    assert grpo_dataset(own, request="Q: {prompt}")[0]["prompt"][0]["content"] == f"Q: {P}"


def test_reward_keys_a_run_lacks_are_refused_in_one_line(tmp_path, store, px):
    s = open_store(tmp_path / "open", px)
    with pytest.raises(UsageError, match=r"has no 'verifier' reward \(its rewards: judge\); pick one of those "
                                         r"with --reward-key"):
        sft_dataset(s, reward_key="verifier")
    # a ShapeWorld run and an open run share only the judge: the default takes it
    assert {r["task_prompt"] for r in preference_dataset([store, s])} == {P}
    bare = make_store(tmp_path / "bare", "b1", {"task": "open"})
    add(bare, "h", [(px[0], "verdict: right", "right", 0.0)], rewards=())
    assert sft_dataset(bare, include_final=True)[0]["reward"] is None  # SFT does without a reward
    with pytest.raises(UsageError, match="preference pairs need a reward every run has"):
        preference_dataset(bare)
    with pytest.raises(UsageError, match="has no 'verifier'"):
        export(s, "preference", tmp_path / "out", reward_key="verifier")
    assert not (tmp_path / "out").exists()


def test_the_export_command(tmp_path, px):
    from typer.testing import CliRunner

    from agent.cli import app

    s, out = open_store(tmp_path / "open", px), tmp_path / "dpo"
    run = CliRunner().invoke
    for args, message in [
        (["preference", str(s.root), "--reward-key", "verifier"], "has no 'verifier' reward (its rewards: judge)"),
        (["grpo", str(s.root), "--min-margin", "0.1"], "--min-margin applies to preference exports, not grpo"),
        (["sft", str(s.root), "--form", "chat"], "--form 'chat': use messages or prompt_completion"),
        (["sft", str(tmp_path / "nope")], "nope"),
    ]:
        result = run(app, ["export", *args, "--out", str(out)])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not out.exists()
    done = run(app, ["export", "preference", str(s.root), "--out", str(out), "--reward-key", "judge"])
    assert done.exit_code == 0 and "preference: 1 rows" in done.output, done.output
    assert load_from_disk(str(out))[0]["chosen_from"] == "open1:f:0"
    again = run(app, ["export", "sft", str(s.root), "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
