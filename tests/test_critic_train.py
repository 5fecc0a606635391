"""The critic's recipe on tiny models: labelled data that agrees with the verifier, a seeded data
build that resumes where it was killed, Trainer runs that resume exactly, an exported folder that
loads and critiques, learning that works (a tiny critic memorises verdicts that only the image
tells apart), the report card's arithmetic, and bad input exiting 2."""

import json
import shutil

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import set_seed
from typer.testing import CliRunner

from model.critic import data as critic_data
from model.critic.backend import CriticBackendConfig, ShapeWorldCritic
from model.critic.build import build_critic, critic_inputs, load_critic
from model.critic.data import FEATURES, SOURCES, CriticDataConfig, Sampling, build_data
from model.critic.eval_critic import evaluate_critic, write_report
from model.critic.train_critic import CriticTrainConfig, make_trainer, train_critic, training_mix
from model.shapeworld.pipeline import load_generator
from tasks.shapeworld import label_critique, parse_critique
from world import check_image, parse_image, render_one, scene_for_prompt, suite
from world.spec import FAMILIES
from world.synth import perturb_scene

TINY_MODEL = {"vision": {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
              "text": {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64, "max_positions": 448}}
TINY = {
    "seed": 0, "model": TINY_MODEL, "steps": 6, "batch_size": 8, "warmup": 1, "checkpoint_every": 3, "log_every": 3,
    "data": {"rows": 64, "chunk_size": 8, "mix": {"generated": 0.25, "edited": 0.125, "rendered_correct": 0.375,
                                                  "rendered_perturbed": 0.25},
             "sampling": {"steps": 2, "batch_size": 8}},
}
runner = CliRunner()


def rows_of(ds: Dataset) -> list[tuple]:
    return [(r["source"], r["prompt"], r["reflection"], np.asarray(r["image"]).tobytes()) for r in ds]


@pytest.fixture(scope="module")
def pipe():
    return load_generator()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny recipe run: data build, 6 steps with checkpoints at 3 and 6, export."""
    root = tmp_path_factory.mktemp("critic")
    cfg = CriticTrainConfig.model_validate(TINY)
    torch.set_num_threads(1)
    out = train_critic(cfg, root / "work", root / "critic", device="cpu", log=lambda _: None)
    return cfg, root / "work", out


def test_labels_agree_with_the_verifier(run):
    cfg, work, _ = run
    data = build_data(cfg.data, work / "data", cfg.seed, load_pipe=lambda: pytest.fail("all chunks are built"))
    assert set(data["source"]) == set(SOURCES) and len(data) == sum(cfg.data.rows_of(s) for s in SOURCES)
    assert set(data.filter(lambda r: r["source"] == "generated")["family"]) == set(FAMILIES)
    for row in data:
        image = np.asarray(row["image"])
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        critique = parse_critique(row["reflection"])
        assert (critique.verdict == "right") == check_image(row["prompt"], image).ok == (row["verdict"] == "right")
    verdicts = {s: set(data.filter(lambda r, s=s: r["source"] == s)["verdict"]) for s in SOURCES}
    assert verdicts["rendered_correct"] == {"right"} and verdicts["rendered_perturbed"] == {"wrong"}


def test_unreadable_misses_look_like_the_generators_failures():
    """Objects off the palette or melted into another shape: the parser reads regions that are no
    shape, so the label asks to regenerate, as on most of the generator's images."""
    cfg = CriticDataConfig(misses={"near": 0.0, "far": 0.0, "unreadable": 1.0})
    rows = critic_data.rendered_chunk(np.random.default_rng(0), 0, 42, cfg, perturbed=True)
    assert all(r["verdict"] == "wrong" and not check_image(r["prompt"], r["image"]).ok for r in rows)
    assert sum("no shape" in r["reflection"] and "edit: regenerate" in r["reflection"] for r in rows) > 21
    assert {r["family"] for r in rows} == set(FAMILIES)


def test_training_mix_balances_verdicts_and_fits_the_model(run):
    cfg, work, _ = run
    data = build_data(cfg.data, work / "data", cfg.seed, load_pipe=lambda: pytest.fail("all chunks are built"))
    _, processor = build_critic(cfg.model)
    mix, record = training_mix(data, cfg, processor)
    assert max(mix["length"]) <= cfg.model.text.max_positions
    right = sum(c.get("right", 0) for c in record["rows_in_mix"].values()) / len(mix)
    assert 0.3 < right < 0.7, record["rows_in_mix"]
    longest = int(np.argmax(mix["length"]))  # the length column is what critic_inputs makes of the row
    batch = critic_inputs(processor, [mix[longest]["prompt"]], [np.asarray(mix[longest]["image"])],
                          [mix[longest]["reflection"]])
    assert batch["input_ids"].shape[1] == mix[longest]["length"]


def test_killed_data_build_resumes_at_the_next_missing_chunk(run, tmp_path, monkeypatch):
    cfg, work, _ = run
    reference = build_data(cfg.data, work / "data", cfg.seed, load_pipe=lambda: pytest.fail("all built"))
    made, real = [], critic_data.make_chunk

    def counted(source, rng, start, n, *args):
        if len(made) == kill_after:
            raise KeyboardInterrupt  # killed mid-build
        made.append((source, start))
        return real(source, rng, start, n, *args)

    monkeypatch.setattr(critic_data, "make_chunk", counted)
    kill_after = 2
    with pytest.raises(KeyboardInterrupt):
        build_data(cfg.data, tmp_path, cfg.seed, load_generator)
    (tmp_path / "rendered_correct-0000.tmp").mkdir()  # the half-written chunk of the killed build
    first, kill_after = list(made), None
    made.clear()
    resumed = build_data(cfg.data, tmp_path, cfg.seed, load_generator)
    assert first == [("generated", 0), ("generated", 8)] and made[0] == ("rendered_correct", 0)
    assert not set(first) & set(made)  # finished chunks are not redone
    assert len(first) + len(made) == sum(len(cfg.data.chunks_of(s)) for s in SOURCES)
    assert rows_of(resumed) == rows_of(reference)  # seeded: the rows of the uninterrupted build
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="another config"):
        build_data(cfg.data.model_copy(update={"rows": 65}), tmp_path, cfg.seed, load_generator)


def test_resumed_training_continues_from_the_checkpoint(run, tmp_path):
    cfg, work, first = run
    record = json.loads((first / "training.json").read_text())
    assert record["steps"] == 6 and record["examples_seen"]["total"] == 6 * cfg.batch_size
    assert sum(record["examples_seen"][s] for s in SOURCES) == 6 * cfg.batch_size
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    shutil.rmtree(copy / "checkpoints" / "checkpoint-6")  # killed between the checkpoints at 3 and 6
    logs = []
    second = train_critic(cfg, copy, tmp_path / "critic", device="cpu", log=logs.append)
    assert any("resuming the critic at checkpoint-3" in line for line in logs)
    resumed = json.loads((second / "training.json").read_text())
    assert resumed["examples_seen"] == record["examples_seen"]  # the tally went on from the checkpoint
    a, b = load_critic(first)[0].state_dict(), load_critic(second)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same weights as the uninterrupted run
    set_seed(cfg.seed)
    start = build_critic(cfg.model)[0].state_dict()  # the weights training started from
    assert not torch.equal(start["lm_head.weight"], a["lm_head.weight"])


def test_exported_critic_loads_critiques_and_records_its_making(run):
    cfg, _, out = run
    record = json.loads((out / "training.json").read_text())
    for key in ("command", "config", "steps", "examples_seen", "wall_seconds", "device", "git_commit", "seed", "data"):
        assert key in record, key
    assert set(record["wall_seconds"]) == {f"data_{s}" for s in SOURCES} | {"train"}
    assert CriticTrainConfig.model_validate(record["config"]) == cfg
    assert load_critic(out)[0].config.text_config.max_position_embeddings == 448
    critic = ShapeWorldCritic(CriticBackendConfig(path=str(out), max_new_tokens=12))
    rng = np.random.default_rng(0)
    prompts = ["a red circle", "two squares"]
    texts = critic.critique(prompts, [render_one(scene_for_prompt(p, rng)) for p in prompts])
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)


def test_a_tiny_critic_learns_verdicts_only_the_image_tells_apart(tmp_path):
    """Two prompts, each with a right and a wrong image: the reflections differ only by what the
    image shows, so memorising them needs the vision tower. An untrained critic writes none."""
    rng = np.random.default_rng(3)
    rows = []
    for prompt, kind in (("a red circle", "recolor"), ("a square above a triangle", "flip_relation")):
        scene = scene_for_prompt(prompt, rng)
        for s in (scene, perturb_scene(prompt, scene, rng, kind)[0]):
            image = render_one(s)
            parsed = parse_image(image)
            rows.append({"prompt": prompt, "family": "", "image": image, "source": "rendered_correct",
                         "reflection": label_critique(prompt, parsed.objects, parsed.blobs).text,
                         "verdict": ""})
    cfg = CriticTrainConfig.model_validate({
        "seed": 0, "steps": 150, "batch_size": 4, "lr": 3e-3, "warmup": 10, "checkpoint_every": 1000,
        "log_every": 1000, "model": {"vision": {"hidden": 48, "layers": 1, "heads": 2, "intermediate": 96},
                                     "text": {"hidden": 64, "layers": 2, "heads": 2, "intermediate": 128}}})
    torch.manual_seed(0)
    model, processor = build_critic(cfg.model)
    mix, _ = training_mix(Dataset.from_list(rows, features=FEATURES), cfg, processor)
    model.save_pretrained(tmp_path / "untrained")
    processor.save_pretrained(tmp_path / "untrained")
    trainer = make_trainer(cfg, model, processor, mix, tmp_path / "ckpt", torch.device("cpu"))
    trainer.args.disable_tqdm = True
    trainer.train()
    trainer.save_model(tmp_path / "trained")
    images, prompts, wanted = [r["image"] for r in rows], [r["prompt"] for r in rows], [r["reflection"] for r in rows]
    assert len({w.split("verdict: ")[1][:5] for w in wanted}) == 2  # a right and a wrong per prompt
    texts = ShapeWorldCritic(CriticBackendConfig(path=str(tmp_path / "trained"))).critique(prompts, images)
    assert texts == wanted
    assert [parse_critique(t).verdict for t in texts] == ["right", "wrong", "right", "wrong"]
    untrained = ShapeWorldCritic(CriticBackendConfig(path=str(tmp_path / "untrained"), max_new_tokens=40))
    assert untrained.critique(prompts, images) != wanted


class Scripted:
    """A stand-in critic that always writes the same reflection: the report's arithmetic is known."""

    path = "scripted"

    def __init__(self, text: str):
        self.text = text

    def critique(self, prompts, images):
        return [self.text] * len(prompts)


def test_report_card_arithmetic_and_keys(run, pipe, tmp_path):
    items = suite("dev", per_family=2)
    sampling = Sampling(steps=2, batch_size=8)
    says_wrong = Scripted("seen: nothing\nwrong: expected a circle, found none\nverdict: wrong\nedit: add a circle")
    report = evaluate_critic(says_wrong, pipe, items, "dev", sampling)
    o = report.overall
    assert o.n == len(items) == 14 and o.parsed == 14 and o.false_right == 0 and o.false_wrong == o.right_images
    assert report.metrics["verdict_accuracy"] == pytest.approx(1 - o.right_images / 14)
    assert report.fix.n == 14 - o.right_images and sum(n for n, _ in report.fix.by_action.values()) == report.fix.n
    assert set(report.by_family) == set(FAMILIES) and sum(s.n for s in report.by_family.values()) == 14
    garbled = evaluate_critic(Scripted("the image looks fine"), pipe, items, "dev", sampling)
    assert garbled.overall.parse_rate == 0 and garbled.overall.accuracy == 0 and garbled.fix.n == 0
    assert garbled.fix_ideal == report.fix_ideal  # the ideal edits do not depend on the critic

    _, _, out = run
    real = evaluate_critic(ShapeWorldCritic(CriticBackendConfig(path=str(out), max_new_tokens=30)), pipe, items,
                           "dev", sampling)
    saved = json.loads(write_report(real, tmp_path / "eval.json").read_text())
    for key in ("verdict_accuracy", "false_right_rate", "false_wrong_rate", "parse_rate", "fix_rate",
                "fix_rate_ideal", "right_image_share"):
        assert key in saved["metrics"], key
    for key in ("overall", "by_family", "held_out", "fix", "fix_ideal", "regenerate", "edit_agreement",
                "seconds_per_reflection", "examples", "critic", "generator", "sampling"):
        assert key in saved, key
