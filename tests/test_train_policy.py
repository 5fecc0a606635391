"""`refloop train policy` on the tiny unified model: the repair-step completion (reflection, then the
revision's given and sampled tokens), its image segment scored in its own context, the shaped reward,
real GRPOTrainer steps on images from a loop run that checkpoint and resume, LoRA, bad input exiting 2,
and two processes under torchrun."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from agent.cli import app
from model.unified.bundle import UnifiedModel
from model.unified.vocab import CODE0
from policies.critique import Critique
from policies.repair_reward import ShapedRepairReward
from policies.rollout import RepairLogps, RepairRollout
from rewards.base import Scored
from rewards.shaping import Shaping

runner = CliRunner()
EDIT = Critique(verdict="wrong", defects=["an extra blue square"], instruction="remove the blue square").text
RIGHT = Critique(verdict="right", observations=["a red circle (centre)"]).text


class TableReward:
    """Test double of the learned reward: a score per prompt."""

    def __init__(self, table, default=0.5):
        self.table, self.default = table, default

    def score(self, prompts, images):
        assert all(im.shape == (64, 64, 3) for im in images)
        return [Scored(value=self.table.get(p, self.default), reason="table") for p in prompts]


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return UnifiedModel.load(tiny_models / "unified")


def reflect_prompt(model, prompt="a red circle", seed=0):
    from model.unified.bundle import as_canvas
    from model.unified.vq import encode

    image = model.draw([prompt], [seed])[0]
    return model.tok.decode(model.layout.reflect_prefix(prompt, encode(model.vq, as_canvas([image]))[0].tolist()))


def test_rollout_writes_the_repair_step(tiny, monkeypatch):
    lay = tiny.layout
    texts = [EDIT, RIGHT, "verdict verdict", Critique(verdict="wrong", instruction="regenerate").text]
    monkeypatch.setattr(RepairRollout, "reflect",  # the tiny model writes noise: give it reflections that parse
                        lambda self, model, ids: [lay.words(t) + [lay.eos] for t in texts])
    prompts = [reflect_prompt(tiny, seed=i) for i in range(4)]
    out = RepairRollout(lay).rollout(tiny.lm, prompts)
    assert out["verdict"] == ["wrong", "right", None, "wrong"]
    ids, mask = out["completion_ids"], out["env_mask"]
    src = [i - CODE0 for i in out["prompt_ids"][0][-65:-1]]
    refl = len(lay.words(EDIT)) + 1
    pre = [lay.task["revise"], *lay.words("a red circle"), lay.sep, *lay.words("remove the blue square"), lay.boi]
    assert ids[0][:refl] == lay.words(EDIT) + [lay.eos] and ids[0][refl:refl + len(pre)] == pre
    span = ids[0][refl + len(pre):-1]
    assert [t - CODE0 for t in span[0::2]] == src and [t - CODE0 for t in span[1::2]] == out["made_codes"][0]
    assert mask[0] == [1] * refl + [0] * len(pre) + [0, 1] * 64 + [0] and ids[0][-1] == lay.eoi
    assert out["made_codes"][1] is None and mask[1] == [1] * len(ids[1])
    assert out["made_codes"][2] is None
    assert ids[3][len(ids[3]) - 66] == lay.boi and sum(mask[3]) == len(lay.words(texts[3])) + 1 + 64


class PlainLogps:
    """TRL's contract for _get_per_token_logps_and_entropies, computed plainly."""

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **_):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -logits_to_keep - 1:-1]
        logps = logits.log_softmax(-1).gather(-1, input_ids[:, -logits_to_keep:, None])[..., 0]
        return logps, None, None


def test_image_segment_is_scored_in_its_own_context(tiny):
    lay = tiny.layout

    class Scorer(RepairLogps, PlainLogps):
        processing_class = tiny.tok
        segment_starts = (lay.task["revise"], lay.task["draw"])

    prompt = lay.tok(reflect_prompt(tiny), add_special_tokens=False)["input_ids"]
    revise = [lay.task["revise"], *lay.words("a red circle"), lay.sep, *lay.words("remove the blue square"), lay.boi,
              *[CODE0 + c for c in range(6)], lay.eoi]
    completion = [*lay.words(EDIT), lay.eos, *revise]
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logps, _, _ = Scorer()._get_per_token_logps_and_entropies(tiny.lm, ids, torch.ones_like(ids), len(completion))
        alone = PlainLogps()._get_per_token_logps_and_entropies(tiny.lm, torch.tensor([revise]),
                                                                torch.ones(1, len(revise), dtype=torch.long),
                                                                len(revise) - 1)[0]
        full = PlainLogps()._get_per_token_logps_and_entropies(tiny.lm, ids, torch.ones_like(ids), len(completion))[0]
    start = len(completion) - len(revise)
    assert torch.allclose(logps[0, start + 1:], alone[0], atol=1e-5)  # the revision as the loop samples it
    assert torch.allclose(logps[0, :start + 1], full[0, :start + 1])  # the reflection after its image
    assert not torch.allclose(logps[0, start + 1:], full[0, start + 1:], atol=1e-5)


def test_shaped_reward(tiny):
    decode = lambda codes: list(tiny.draw(["a red circle"] * len(codes), list(range(len(codes)))))  # noqa: E731
    shaping = Shaping(premature_penalty=0.25, confident=0.8)
    a, b = "a red circle", "a blue square"
    func = ShapedRepairReward(TableReward({a: 0.9, b: 0.1}), decode, shaping)
    logged = {}
    out = func(prompts=[""] * 6, completions=[""] * 6, task_prompt=[a, a, a, a, b, a],
               before=[0.9, 0.7, 0.2, 0.2, 0.9, 0.2], verdict=["right", "right", "right", "wrong", "wrong", None],
               made_codes=[None, None, None, [0] * 64, [0] * 64, None], correct=[True, True, False, False, True, False],
               log_metric=lambda k, v: logged.setdefault(k, []).append(v))
    assert out == pytest.approx([0.9, 0.7 - 0.25, 0.2 - 1.0, 0.9 + 0.7, 0.1 - 0.8 - 1.0, -1.0])
    assert set(logged) >= {"repair/right", "shaping/after", "eval/repaired", "eval/verdict_matches_verifier"}


def sets(reward, tiny_models, **over):
    base = {"model_name_or_path": str(tiny_models / "unified"), "reward_model": str(reward), "fresh_per_family": 1,
            "max_steps": 2, "save_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 4,
            "num_generations": 2, "max_reflection": 24, "report_to": "none", "learning_rate": 1e-3, **over}
    return [a for k, v in base.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def reward(tiny_models, loop_run, tmp_path_factory):
    """A learned reward folder trained (2 steps) on the tiny model: a real LearnedReward, meaningless scores."""
    work = tmp_path_factory.mktemp("reward")
    result = runner.invoke(app, ["train", "reward", str(loop_run), "--config", "configs/reward.yaml", "--work",
                                 str(work), "--set", f"unified_model={tiny_models / 'unified'}", "--set",
                                 "fresh_per_family=1", "--set", "max_steps=2", "--set", "report_to=none"])
    assert result.exit_code == 0, result.output
    return work / "reward"


@pytest.fixture
def readable(monkeypatch):
    """The tiny model writes noise (every repair step unreadable: equal rewards, zero advantages, no update);
    here its reflections are readable ones, in turn "wrong" with an edit and "right": the revisions are its own."""
    texts = [EDIT, RIGHT, Critique(verdict="wrong", instruction="make the red circle blue").text]

    def reflect(self, model, prompt_ids):
        return [self.layout.words(texts[i % len(texts)]) + [self.layout.eos] for i in range(len(prompt_ids))]

    monkeypatch.setattr(RepairRollout, "reflect", reflect)


def test_grpo_checkpoints_and_resumes(tiny_models, loop_run, reward, tmp_path, readable):
    work = tmp_path / "work"
    cmd = ["train", "policy", str(loop_run), "--config", "configs/grpo.yaml", "--work", str(work)]
    first = runner.invoke(app, [*cmd, *sets(reward, tiny_models)])
    assert first.exit_code == 0, first.output
    ckpt = work / "checkpoints" / "checkpoint-2"
    assert (ckpt / "trainer_state.json").is_file() and "grpo step 2/2" in first.output
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert any("rewards/shaped_repair/mean" in h for h in state["log_history"])
    assert all(h["completions/clipped_ratio"] == 0 for h in state["log_history"] if "completions/clipped_ratio" in h)
    done = runner.invoke(app, [*cmd, *sets(reward, tiny_models)])  # rerun of a finished run: no extra step
    assert done.exit_code == 0 and "done earlier (checkpoint-2)" in done.output, done.output
    assert torch.equal(load_file(work / "policy" / "model.safetensors")["model.norm.weight"],
                       load_file(ckpt / "model.safetensors")["model.norm.weight"])
    weights = load_file(ckpt / "model.safetensors")  # marked, to see that the resumed run reads them
    weights["model.norm.weight"] += 0.5
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    again = runner.invoke(app, [*cmd, *sets(reward, tiny_models, max_steps=3)])
    assert again.exit_code == 0, again.output
    assert "resuming at checkpoint-2" in again.output and "grpo step 3/3" in again.output
    record = json.loads((work / "policy" / "training.json").read_text())
    assert record["steps"] == 3 and record["prompts"]["images"] == 9
    exported = load_file(work / "policy" / "model.safetensors")["model.norm.weight"]
    assert (exported - weights["model.norm.weight"]).abs().max() < 0.05  # one Adam step at lr 1e-3 from the mark
    policy = UnifiedModel.load(work / "policy")
    assert len(policy.draw(["a red circle"], [0])) == 1
    assert policy.lm.generation_config.eos_token_id == policy.layout.eos  # TRL's end list stays out of it
    other = runner.invoke(app, [*cmd, *sets(reward, tiny_models, shaping_alpha=2.0)])
    assert other.exit_code == 2 and "other arguments" in other.output


def test_lora_step_merges_into_the_export(tiny_models, reward, tmp_path):
    result = runner.invoke(app, ["train", "policy", "--config", "configs/grpo-lora.yaml", "--work",
                                 str(tmp_path / "w"), *sets(reward, tiny_models, max_steps=1, save_steps=1)])
    assert result.exit_code == 0, result.output
    policy = UnifiedModel.load(tmp_path / "w" / "policy")  # a plain unified folder: adapters merged
    assert not any("lora" in k for k in policy.lm.state_dict())


@pytest.mark.parametrize("over,message", [
    ({"reward_kind": "verifier"}, "allow_verifier"),
    ({"rounds": "some"}, "rounds"),
])
def test_bad_policy_input_exits_2(tmp_path, tiny_models, over, message):
    result = runner.invoke(app, ["train", "policy", "--config", "configs/grpo.yaml", "--work", str(tmp_path / "w"),
                                 *sets("x", tiny_models, **over)])
    assert result.exit_code == 2 and message in result.output, result.output
    missing = runner.invoke(app, ["train", "policy", "--config", "configs/grpo.yaml", "--work", str(tmp_path / "w2"),
                                  *sets(tmp_path / "no-reward", tiny_models)])
    assert missing.exit_code == 2 and "no-reward" in missing.output, missing.output


@pytest.mark.slow
def test_torchrun_two_processes(tiny_models, reward, tmp_path):
    """Two CPU processes (gloo) through the CLI: 2 GRPO steps, one checkpoint, one export."""
    from tests.two_processes import torchrun_cli

    code, out, err = torchrun_cli("train", "policy", "--config", "configs/grpo.yaml", "--work", str(tmp_path / "work"),
                                  *sets(reward, tiny_models, per_device_train_batch_size=2))
    assert code == 0, out[-3000:] + err[-3000:]
    assert "on 2 process(es)" in out and out.count("grpo: done") == 1  # the main process logs
    assert (tmp_path / "work" / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    record = json.loads((tmp_path / "work" / "policy" / "training.json").read_text())
    assert record["processes"] == 2 and record["steps"] == 2
    assert np.isfinite(record["last_log"].get("loss", 0.0))


def test_the_verifier_ablation_builds_its_reward():
    """`reward_kind: verifier` (with `allow_verifier`) scores with the task's exact verifier."""
    from policies.grpo import PolicyArguments, build_reward
    from world import render_one, scene_for_prompt

    reward = build_reward(PolicyArguments(reward_kind="verifier", allow_verifier=True), "cpu")
    image = render_one(scene_for_prompt("a red circle", np.random.default_rng(0)))
    right, wrong = reward.score(["a red circle", "two blue squares"], [image, image])
    assert (right.value, wrong.value) == (1.0, 0.0)


def test_prompts_resampled_to_a_share_of_low_scored_images():
    from datasets import Dataset

    from policies.grpo import PolicyArguments, rebalance

    data = Dataset.from_dict({"before": [0.1, 0.2, 0.9, 0.8, 0.7, 0.6, 0.95, 0.55], "k": list(range(8))})
    half = rebalance(data, 0.5, seed=0)
    assert sorted(b < 0.5 for b in half["before"]) == [False, False, True, True]
    assert len(set(half["k"])) == 4  # no repeats
    most = rebalance(data, 0.9, seed=0)  # too few low-scored images: all of them, the rest cut to match
    assert sum(b < 0.5 for b in most["before"]) == 2 and len(most) == 2  # 0.9 of 2 rounds to no right one
    assert rebalance(data, None, seed=0) is data
    with pytest.raises(ValueError, match="wrong_share"):
        PolicyArguments(reward_kind="verifier", allow_verifier=True, wrong_share=1.0)


def test_the_verifier_ablation_config_parses(tmp_path):
    from policies.grpo import parse_args

    args, grpo, _ = parse_args("configs/grpo-verifier.yaml", tmp_path, ["--wrong_share", "0.5"])
    assert (args.reward_kind, args.allow_verifier, args.wrong_share, grpo.max_steps) == ("verifier", True, 0.5, 400)
