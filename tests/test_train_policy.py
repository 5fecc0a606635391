"""`refloop train policy` on tiny models: the GRPO reward function's shaped values (the editor runs,
batched, only for "wrong" critiques), prompts TRL builds exactly as the loop does, GRPO steps that
checkpoint and resume (weights included), SFT -> DPO -> GRPO with the editor in the loop, LoRA, bad
configs exiting 2, and two processes under torchrun."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from datasets import Dataset, load_from_disk
from PIL import Image as PILImage
from trl.data_utils import apply_chat_template, prepare_multimodal_messages
from typer.testing import CliRunner

from agent.cli import app
from agent.export import export
from agent.store import RunStore
from agent.train_policy import (
    PROMPT_FEATURES,
    PolicyTrainConfig,
    PolicyTrainError,
    ShapedCritiqueReward,
    build_prompts,
    make_grpo_trainer,
    train_policy,
)
from agent.trajectory import RoundRecord, RunManifest, SessionRecord
from model.critic.build import CriticConfig, build_critic, critic_inputs, load_critic
from policies.critique import Critique
from rewards.base import Scored
from rewards.shaping import Shaping
from world import parse_prompt, render_one, scene_for_prompt

TINY_CRITIC = {"vision": {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
               "text": {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64, "max_positions": 256}}
P_RED, P_BLUE, P_TWO = "a red circle", "a blue square", "two green triangles"
WRONG_EDIT = Critique(verdict="wrong", observations=["a blue circle (centre)"],
                      defects=["expected a red circle, found a blue circle instead"],
                      instruction="make the blue circle red").text
runner = CliRunner()


class TableReward:
    """Test double of the learned reward model: a score per prompt, every call recorded."""

    def __init__(self, table: dict[str, float], default: float = 0.5):
        self.table, self.default, self.calls = table, default, []

    def score(self, prompts, images):
        self.calls.append(list(prompts))
        assert all(img.shape == (64, 64, 3) and img.dtype == np.uint8 for img in images)
        return [Scored(value=self.table.get(p, self.default), reason="table") for p in prompts]


class Spy:
    """The tiny editor/generator, recording each batched call."""

    def __init__(self, model):
        self.model, self.edits, self.generations = model, [], []

    def edit(self, images, instructions, seeds):
        self.edits.append(list(instructions))
        return self.model.edit(images, instructions, seeds)

    def generate(self, prompts, seeds):
        self.generations.append(list(prompts))
        return self.model.generate(prompts, seeds)


@pytest.fixture(scope="module")
def critic(tmp_path_factory):
    """A tiny random critic folder (seconds to build, meaningless reflections)."""
    torch.manual_seed(0)
    model, processor = build_critic(CriticConfig.model_validate(TINY_CRITIC))
    path = tmp_path_factory.mktemp("critic") / "critic"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def config(critic, tiny_models, **over) -> PolicyTrainConfig:
    base = {"critic": str(critic), "editor": {"path": str(tiny_models / "unified")},
            "reward": {"kind": "learned", "path": "test-double"}, "data": {"fresh": 4, "batch_size": 4},
            "grpo": {"steps": 2, "batch_size": 4, "num_generations": 2, "max_completion_length": 12, "save_steps": 2,
                     "lr": 1e-3}}
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return PolicyTrainConfig.model_validate(base)


def image(prompt: str, seed: int = 0) -> np.ndarray:
    return render_one(scene_for_prompt(parse_prompt(prompt), np.random.default_rng(seed)))


def completion(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# -- the reward function -------------------------------------------------------------------------
def test_reward_function_gives_the_shaped_values(tiny_image_model):
    shaping = Shaping()  # alpha 1, flip and false-right penalties 1, threshold 0.5, unreadable -1
    reward = TableReward({P_RED: 0.8, P_BLUE: 0.1, P_TWO: 0.5})
    spy = Spy(tiny_image_model)
    func = ShapedCritiqueReward(reward, spy, spy, shaping)
    right = Critique(verdict="right", observations=["a red circle (centre)"]).text
    regenerate = Critique(verdict="wrong", instruction="regenerate").text
    remove = Critique(verdict="wrong", defects=["an extra blue square"], instruction="remove the blue square").text
    rows = [  # (task prompt, before, completion text) -> documented shaped reward
        (P_RED, 0.9, right, 0.9),  # right, and it was: stop with its reward
        (P_RED, 0.2, right, 0.2 - 1.0),  # called a wrong image right: penalised
        (P_RED, 0.2, WRONG_EDIT, 0.8 + 1.0 * (0.8 - 0.2)),  # wrong -> edit -> 0.8: improvement bonus
        (P_RED, 0.2, WRONG_EDIT, 0.8 + 1.0 * (0.8 - 0.2)),  # same image, same edit: edited once
        (P_BLUE, 0.9, remove, 0.1 + 1.0 * (0.1 - 0.9) - 1.0),  # right -> wrong: flip penalty
        (P_TWO, 0.2, regenerate, 0.5 + 1.0 * (0.5 - 0.2)),  # regenerate: the generator draws the prompt anew
        (P_RED, 0.9, "verdict: maybe", -1.0),  # unreadable
        (P_RED, 0.9, "seen: nothing\nverdict: wrong", -1.0),  # wrong without an edit: unreadable
    ]
    images = [[image(p)] for p, *_ in rows]
    logged = {}
    shaped = func(prompts=[[{"role": "user", "content": p}] for p, *_ in rows],
                  completions=[completion(t) for *_, t, _ in rows], images=images,
                  task_prompt=[p for p, *_ in rows], before=[b for _, b, *_ in rows], next_seed=[1] * len(rows),
                  correct=[True, False, False, False, True, False, True, True],
                  log_metric=lambda name, value: logged.setdefault(name, []).append(value))
    assert shaped == pytest.approx([expected for *_, expected in rows])
    assert spy.edits == [["make the blue circle red", "remove the blue square"]]  # one batch, deduplicated
    assert spy.generations == [[P_TWO]]
    assert reward.calls == [[P_RED, P_BLUE, P_TWO]]  # one scoring of the images the edits made
    assert np.mean(logged["critique/unreadable"]) == pytest.approx(2 / 8)
    assert np.mean(logged["critique/wrong"]) == pytest.approx(4 / 8)
    assert logged["shaping/flip_penalty"] == pytest.approx([0, 0, 1.0, 0])
    assert logged["shaping/false_right_penalty"] == pytest.approx([0, 1.0])
    assert logged["shaping/after"] == pytest.approx([0.8, 0.8, 0.1, 0.5])
    assert logged["shaping/reward"] == pytest.approx(shaped)
    assert logged["eval/verdict_matches_verifier"] == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]


def test_no_wrong_verdict_no_editor_call(tiny_image_model):
    reward, spy = TableReward({}), Spy(tiny_image_model)
    func = ShapedCritiqueReward(reward, spy, spy, Shaping(unreadable=-2.0))
    right = Critique(verdict="right").text
    out = func(prompts=[[], []], completions=[completion(right), completion("nonsense")],
               images=[[image(P_RED)]] * 2, task_prompt=[P_RED] * 2, before=[0.7, 0.7], next_seed=[0, 0])
    assert out == pytest.approx([0.7, -2.0]) and spy.edits == spy.generations == reward.calls == []


# -- prompts -------------------------------------------------------------------------------------
def test_grpo_prompts_are_the_critics_own_inputs(critic, tiny_image_model, tmp_path):
    """TRL renders a row as the loop's critic_inputs does: same text, same token ids, same pixels."""
    cfg = config(critic, tmp_path, data={"fresh": 3})
    reward = TableReward({}, default=0.25)
    data = build_prompts(cfg.data, tiny_image_model, reward, tmp_path / "prompts", log=lambda _: None)
    assert data.features == PROMPT_FEATURES and len(data) == 3 and data["before"] == [0.25] * 3
    assert len(set(data["family"])) == 3 and data["source"] == ["fresh"] * 3
    _, processor = load_critic(critic)
    row = data[0]
    messages = prepare_multimodal_messages(row["prompt"], images=row["images"])
    text = apply_chat_template({"prompt": messages}, processor)["prompt"]
    pixels = np.asarray(row["images"][0])
    ours = critic_inputs(processor, [row["task_prompt"]], [pixels])
    trl_batch = processor(images=[row["images"]], text=[text], padding=True, return_tensors="pt")
    assert torch.equal(trl_batch["input_ids"], ours["input_ids"])
    assert torch.equal(trl_batch["pixel_values"], ours["pixel_values"])
    assert build_prompts(cfg.data, None, None, tmp_path / "prompts", log=lambda _: None)["task_prompt"] == \
        data["task_prompt"]  # built once: a rerun reads it back


# -- GRPO ----------------------------------------------------------------------------------------
def test_grpo_checkpoints_and_resumes(critic, tiny_models, tiny_image_model, tmp_path):
    logs = []
    cfg = config(critic, tiny_models)
    out = train_policy(cfg, tmp_path / "work", device="cpu", log=logs.append, reward=TableReward({}),
                       images=tiny_image_model)
    ckpts = tmp_path / "work" / "grpo" / "checkpoints"
    assert (ckpts / "checkpoint-2" / "trainer_state.json").is_file()
    assert any(line.startswith("grpo step 2/2: ") and "reward" in line for line in logs)
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 2 and record["config"]["grpo"]["num_generations"] == 2
    assert {"command", "wall_seconds", "device", "git_commit"} <= set(record)
    assert list((tmp_path / "work").rglob("events.out.tfevents.*")), "no TensorBoard logs"
    load_critic(out)

    more = config(critic, tiny_models, grpo={"steps": 3})  # rerun with more steps: resumes at checkpoint-2
    logs.clear()
    train_policy(more, tmp_path / "work", device="cpu", log=logs.append, reward=TableReward({}),
                 images=tiny_image_model)
    assert "grpo: resuming at checkpoint-2" in logs and not any("step 1/" in line for line in logs)
    state = json.loads((ckpts / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3]
    with pytest.raises(PolicyTrainError, match="another config"):
        train_policy(config(critic, tiny_models, shaping={"alpha": 2.0}), tmp_path / "work", device="cpu",
                     reward=TableReward({}), images=tiny_image_model)


def test_resume_reads_llava_checkpoint_weights(critic, tiny_models, tmp_path):
    """A checkpoint saved by save_pretrained (LLaVA's keys renamed) comes back whole: transformers'
    own resume would start again from the initial weights (transformers #43701)."""
    model, _ = load_critic(critic)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.save_pretrained(tmp_path / "checkpoint-7")
    cfg = config(critic, tiny_models)
    rows = Dataset.from_dict({
        "images": [[PILImage.fromarray(image(P_RED))]], "prompt": [[{"role": "user", "content": P_RED}]],
        "task_prompt": [P_RED], "family": ["single_object"], "source": ["x"], "next_seed": [1], "before": [0.0],
        "correct": [True]}, features=PROMPT_FEATURES)
    trainer = make_grpo_trainer(cfg, critic, rows, lambda **_: [0.0], tmp_path / "out", torch.device("cpu"))
    trainer._load_from_checkpoint(str(tmp_path / "checkpoint-7"))
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in trainer.model.state_dict().items())


# -- SFT -> DPO -> GRPO, LoRA --------------------------------------------------------------------
def make_exports(root) -> dict[str, str]:
    """A run whose critic said "wrong" and asked for an edit (session a, fixed) or wrongly said
    "right" (session b, same first image), exported as SFT, preference and GRPO data."""
    store = RunStore.create(root / "run", RunManifest(run_id="r1", created_at=0.0, seed=0, refloop_version="0.1.0"))
    wrong_image, fixed = image(P_BLUE.replace("square", "circle")), image(P_RED)
    for sid, rounds in {"a": [(wrong_image, WRONG_EDIT, "wrong", 0.0), (fixed, Critique(verdict="right").text,
                                                                        "right", 1.0)],
                        "b": [(wrong_image, Critique(verdict="right").text, "right", 0.0)]}.items():
        store.start_session(SessionRecord(id=sid, prompt=P_RED, family="single_object", seed=3))
        for k, (pixels, text, verdict, reward) in enumerate(rounds):
            store.upsert_round(sid, RoundRecord(
                index=k, image=store.put_image(pixels), critique=text, verdict=verdict,
                instruction="make the blue circle red" if verdict == "wrong" else None,
                rewards={"verifier": reward}, correct=reward == 1.0))
        store.finish_session(sid, "critic_satisfied")
    store = RunStore.open(root / "run")
    return {kind: str(export(store, kind, root / kind, **({"include_final": True} if kind == "sft" else {})))
            for kind in ("sft", "preference", "grpo")}


def test_sft_dpo_then_grpo_with_the_editor_in_the_loop(critic, tiny_models, tiny_image_model, tmp_path):
    """The warm start teaches the tiny critic the wrong/edit reflection; GRPO then samples critiques
    that parse, the editor carries them out, and the policy moves."""
    exports = make_exports(tmp_path)
    assert len(load_from_disk(exports["sft"])) == 3 and len(load_from_disk(exports["preference"])) == 1
    spy, logs = Spy(tiny_image_model), []
    cfg = config(critic, tiny_models, data={"fresh": 0, "exports": [exports["grpo"]]},
                 sft_warm_start={"exports": [exports["sft"]], "steps": 60, "batch_size": 2, "lr": 2e-2,
                                 "save_steps": 60, "logging_steps": 20},
                 dpo={"exports": [exports["preference"]], "steps": 1, "batch_size": 1, "lr": 1e-4},
                 grpo={"steps": 3, "num_generations": 4, "max_completion_length": 40, "save_steps": 3})
    out = train_policy(cfg, tmp_path / "work", device="cpu", log=logs.append, reward=TableReward({P_RED: 0.9}),
                       images=spy)
    record = json.loads((out / "training.json").read_text())
    assert record["stages"]["sft"]["steps"] == 60 and record["stages"]["dpo"]["steps"] == 1
    assert record["stages"]["dpo"]["started_from"] == str(tmp_path / "work" / "sft" / "critic")
    assert record["stages"]["grpo"]["started_from"] == str(tmp_path / "work" / "dpo" / "critic")
    assert spy.edits and all(len(batch) >= 1 for batch in spy.edits)  # wrong critiques were carried out
    history = json.loads((tmp_path / "work" / "grpo" / "checkpoints" / "checkpoint-3" / "trainer_state.json")
                         .read_text())["log_history"]
    assert max(h.get("critique/wrong", 0) for h in history) > 0 and any("shaping/after" in h for h in history)
    assert max(h.get("reward_std", 0) for h in history) > 0  # sampled critiques differ in reward: GRPO learns
    before, after = load_critic(tmp_path / "work" / "dpo" / "critic")[0], load_critic(out)[0]
    assert any(not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters()))
    logs.clear()
    train_policy(cfg, tmp_path / "work", device="cpu", log=logs.append, reward=TableReward({}), images=spy)
    assert "sft: done earlier" in " ".join(logs) and "dpo: done earlier" in " ".join(logs)


def test_lora_grpo_step(critic, tiny_models, tiny_image_model, tmp_path):
    cfg = config(critic, tiny_models, lora={"r": 4, "alpha": 8}, grpo={"steps": 1, "save_steps": 1})
    out = train_policy(cfg, tmp_path / "work", device="cpu", log=lambda _: None, reward=TableReward({}),
                       images=tiny_image_model)
    assert (tmp_path / "work" / "grpo" / "checkpoints" / "checkpoint-1" / "adapter_model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()  # merged: a plain LLaVA critic
    model, _ = load_critic(out)
    assert not any("lora" in name for name, _ in model.named_parameters())


# -- the command line ----------------------------------------------------------------------------
def write(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("change, message", [
    ({"reward": {"kind": "verifier"}}, "allow_verifier"),
    ({"reward": {"kind": "learned"}}, "needs its path"),
    ({"grpo": {"batch_size": 3}}, "multiple of"),
    ({"grpo": {"args": {"learning_rate": 1.0}}}, "set by refloop"),
    ({"grpo": {"args": {"no_such_option": 1}}}, "not a field"),
    ({"colour": "red"}, "Extra inputs"),
    ({"critic": "/no/such/critic"}, "no critic at"),
    ({"data": {"fresh": 0}}, "no prompts"),
    ({"lora": {"target_modules": ["q_proj", "lm_head"]}}, "lm_head"),
    ({"sft_warm_start": {"exports": []}}, "at least 1 item"),
    ({"reward": {"kind": "learned", "path": "no/such/folder"}}, "cannot load the learned reward"),
])
def test_bad_configs_exit_2(critic, tiny_models, tmp_path, change, message):
    base = {"critic": str(critic), "editor": {"path": str(tiny_models / "unified")},
            "reward": {"kind": "verifier", "allow_verifier": True}, "data": {"fresh": 2},
            "grpo": {"steps": 1, "batch_size": 2, "num_generations": 2}}
    for key, value in change.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base and key != "reward" else value
    result = runner.invoke(app, ["train", "policy", "--config", write(tmp_path / "c.yaml", base),
                                 "--work", str(tmp_path / "work")])
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")


@pytest.mark.parametrize("name", ["policy-grpo.yaml", "policy-grpo-lora.yaml"])
def test_shipped_configs_validate(name):
    cfg = PolicyTrainConfig.load(os.path.join(os.path.dirname(__file__), "..", "configs", name))
    assert cfg.reward.kind == "learned" and (cfg.lora is not None) == ("lora" in name)


def test_missing_config_and_shipped_critic_exit_2(tmp_path, monkeypatch):
    result = runner.invoke(app, ["train", "policy", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "no such config file" in result.output
    monkeypatch.setattr("agent.train_policy.DEFAULT_CRITIC", tmp_path / "weights" / "critic")  # not trained yet
    cfg = write(tmp_path / "c.yaml", {"reward": {"kind": "verifier", "allow_verifier": True}})
    result = runner.invoke(app, ["train", "policy", "--config", cfg, "--work", str(tmp_path / "w")])
    assert result.exit_code == 2 and "the shipped critic is not trained yet" in result.output.replace("\n", " ")
    assert not (tmp_path / "w").exists()  # nothing written


@pytest.mark.slow
def test_torchrun_two_processes(critic, tiny_models, tmp_path):
    """Two CPU processes (gloo) through the CLI: 2 GRPO steps, one checkpoint, one export."""
    cfg = write(tmp_path / "c.yaml", {
        "critic": str(critic), "editor": {"path": str(tiny_models / "unified")},
        "reward": {"kind": "verifier", "allow_verifier": True}, "data": {"fresh": 4},
        "grpo": {"steps": 2, "batch_size": 2, "num_generations": 2, "max_completion_length": 12, "save_steps": 2}})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "agent.cli", "train", "policy", "--config", cfg, "--work", str(tmp_path / "work"), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too: a hung rendezvous must not outlive the test
        raise
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "on 2 process(es)" in done.stdout and done.stdout.count("grpo: done") == 1  # the main process logs
    assert (tmp_path / "work" / "grpo" / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    record = json.loads((tmp_path / "work" / "critic" / "training.json").read_text())
    assert record["processes"] == 2 and record["steps"] == 2
