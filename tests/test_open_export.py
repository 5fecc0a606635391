"""Issue 14's evidence, end to end: free-text sessions on tiny random checkpoints (Stable Diffusion draws,
InstructPix2Pix edits, a LLaVA critiques and judges), locally and behind a real `transformers serve`;
a person's reflection replayed on a first image of each run; `refloop export` of both runs; then
TRL's SFTTrainer and DPOTrainer train that same LLaVA for a few steps on the exported folders as
`datasets.load_from_disk` reads them, with nothing reshaped in between."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from agent.cli import app
from agent.store import RunStore
from tasks import load_task

CONFIGS = Path(__file__).parents[1] / "configs"
FREE = ["a cat wearing a red hat", "a yellow umbrella next to a green bicycle"]
HUMAN = "seen: a cat; a blue hat\nwrong: the hat is blue, not red\nverdict: wrong\nedit: make the hat red"
runner = CliRunner()


def configs(tmp_path: Path, vlm: Path, url: str) -> dict[str, Path]:
    """configs/open-diffusers-vlm.yaml with tiny checkpoints and CPU sizes; and the same with the critic and
    judge blocks of configs/served-transformers.yaml (base_url and model changed, as a user would)."""
    from tests.tiny_checkpoints import stable_diffusion

    local = yaml.safe_load((CONFIGS / "open-diffusers-vlm.yaml").read_text())
    local["models"]["image"].update(
        path=str(stable_diffusion(tmp_path / "sd", False)), edit_path=str(stable_diffusion(tmp_path / "ip2p", True)),
        device="cpu", dtype="float32", steps=2, height=32, width=32)
    for role in ("critic", "judge"):
        local["models"][role].update(path=str(vlm), device="cpu", dtype="float32")
    local["models"]["critic"]["max_new_tokens"] = 12
    local.update(concurrency=2, max_batch=2)
    served = yaml.safe_load((CONFIGS / "served-transformers.yaml").read_text())["models"]
    for role in ("critic", "judge"):
        served[role].update(base_url=url, model=str(vlm))
    served["critic"]["max_tokens"] = 12
    paths = {}
    for name, models in (("local", local["models"]), ("served", {**local["models"], **served})):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({**local, "models": models}))
    return paths


def run_and_replay(config: Path, out: Path) -> RunStore:
    """Two free-text sessions, then a fork of the first at round 0 with a person's reflection (the
    random critic's own text never parses: the fork is where an edit is asked for and carried out)."""
    result = runner.invoke(app, ["run", *FREE, "--config", str(config), "--out", str(out), "--max-rounds", "1"])
    assert result.exit_code == 0, result.output
    first = min(RunStore.open(out).sessions(), key=lambda s: s.prompt != FREE[0])
    fork = runner.invoke(app, ["replay", str(out), first.id, "--from-round", "0", "--critique", HUMAN])
    assert fork.exit_code == 0, fork.output
    return RunStore.open(out)


def trl_args(config_cls, out: Path, **extra):
    """A few CPU steps, nothing saved or reported."""
    checkpointing = next(f.name for f in dataclasses.fields(config_cls)
                         if f.name in ("activation_checkpointing", "gradient_checkpointing"))
    return config_cls(output_dir=str(out), max_steps=2, per_device_train_batch_size=1, learning_rate=1e-3,
                      logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                      disable_tqdm=True, max_length=None, **{checkpointing: False}, **extra)


def trains(trainer, before: dict[str, torch.Tensor]) -> None:
    """The trainer read the rows as vision data, ran its steps on finite losses and moved the weights."""
    assert trainer._is_vision_dataset and trainer._is_vlm
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and losses and all(math.isfinite(x) for x in losses)
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)


@pytest.mark.slow
def test_open_sessions_local_and_served_export_and_train_with_trl(tmp_path, llava_folder, served_llava):
    from datasets import load_from_disk
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    paths = configs(tmp_path, llava_folder, served_llava)
    stores = [run_and_replay(paths[name], tmp_path / name) for name in ("local", "served")]
    for store in stores:
        sessions = list(store.sessions())
        assert len(sessions) == 3 and all(s.status == "done" for s in sessions)
        assert (store.root / "sessions.jsonl").read_text().count("\n") == 3
        assert all("verifier" not in r.rewards and "judge" in r.rewards for s in sessions for r in s.rounds)
        (fork,) = [s for s in sessions if s.parent_id]
        assert fork.rounds[0].critique_by == "human" and fork.rounds[0].instruction == "make the hat red"
        assert len(fork.rounds) == 2 and fork.rounds[1].calls.get("editor") == 1  # InstructPix2Pix carried it out
    assert "at http" in stores[1].manifest.models["critic"]["path"]  # the served run's critic is the server

    exports = {}
    for kind in ("sft", "preference", "grpo"):
        exports[kind] = tmp_path / "exports" / kind
        result = runner.invoke(app, ["export", kind, *(str(s.root) for s in stores), "--out", str(exports[kind])])
        assert result.exit_code == 0, result.output
    sft, dpo, grpo = (load_from_disk(str(exports[k])) for k in ("sft", "preference", "grpo"))

    ask = {p: load_task("open").critic_template.replace("{prompt}", p) for p in FREE}  # the open task's words
    # SFT: the person's reflection on each run's first image, the edit it led to, the judge's scores
    assert len(sft) == 2 and {r["run_id"] for r in sft} == {s.manifest.run_id for s in stores}
    for row, store in zip(sft, stores):
        fork = store.get(row["session_id"])
        assert row["messages"] == [{"role": "user", "content": ask[FREE[0]]}, {"role": "assistant", "content": HUMAN}]
        assert (row["reward"], row["next_reward"]) == (fork.rounds[0].rewards["judge"], fork.rounds[1].rewards["judge"])
        for pil, rnd in ((row["images"][0], fork.rounds[0]), (row["corrected_image"], fork.rounds[1])):
            assert np.array_equal(np.asarray(pil.convert("RGB")), store.load_image(rnd.image))
    # DPO: on the local run's first image, the critic's unreadable text (which kept that image) against
    # the person's edit, ranked by the judge's P(yes) (continuous locally; the served judge says 0 or 1)
    local = stores[0]
    assert len(dpo) >= 1 and all(r["prompt"] == [{"role": "user", "content": ask[r["task_prompt"]]}] for r in dpo)
    pair = next(r for r in dpo if r["run_id"] == local.manifest.run_id)
    texts = {pair["chosen"][0]["content"], pair["rejected"][0]["content"]}
    assert HUMAN in texts and pair["chosen_reward"] > pair["rejected_reward"]
    # GRPO: every session's first image (2 runs x 3 sessions)
    assert len(grpo) == 6 and all(r["prompt"][0]["content"] == ask[r["task_prompt"]] for r in grpo)

    # TRL trains the critic's own LLaVA on the folders as loaded
    processor = AutoProcessor.from_pretrained(llava_folder)
    for config_cls, trainer_cls, data in ((SFTConfig, SFTTrainer, sft), (DPOConfig, DPOTrainer, dpo)):
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration.from_pretrained(llava_folder)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        trainer = trainer_cls(model=model, args=trl_args(config_cls, tmp_path / config_cls.__name__),
                              train_dataset=data, processing_class=processor)
        trains(trainer, before)
