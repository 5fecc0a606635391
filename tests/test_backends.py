"""Real checkpoints' architectures, tiny and random, saved to a temp folder and loaded back through the
backends (nothing is downloaded): Stable Diffusion, InstructPix2Pix, FLUX.1 Kontext and LLaVA. Each
carries a generate -> critique -> revise step. Pixels and words are meaningless; shapes, types,
seeds and the yes/no arithmetic are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import TypeAdapter

from model.backends import (
    CriticConfig,
    DiffusersImageConfig,
    HFVLMCriticConfig,
    HFVLMJudgeConfig,
    ImageConfig,
    JudgeConfig,
    UnifiedBackendConfig,
    load_critic,
    load_image_model,
    load_judge,
)
from tests.tiny_checkpoints import flux_kontext, llava, stable_diffusion

PROMPTS = ["two red circles above a blue square", "a green triangle"]
SEEDS = [3, 4]
CONFIGS = Path(__file__).parents[1] / "configs"



# ---- the backends on those folders ----

@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="module")
def sd(folders):
    """Stable Diffusion generates at 32x32, InstructPix2Pix edits with SD's VAE; images come back at 64x64."""
    cfg = DiffusersImageConfig(path=str(stable_diffusion(folders / "sd", False)), steps=2, height=32, width=32,
                               edit_path=str(stable_diffusion(folders / "ip2p", True)), edit_shares=["vae"])
    return load_image_model(cfg)


@pytest.fixture(scope="module")
def kontext(folders):
    """One FLUX.1 Kontext folder does both roles, at its native 32x32 (no resize on the way out)."""
    cfg = DiffusersImageConfig(path=str(flux_kontext(folders / "kontext")), steps=2, height=32, width=32,
                               output_size=None, generate_args={"max_sequence_length": 32},
                               edit_args={"max_sequence_length": 32})
    return load_image_model(cfg)


@pytest.fixture(scope="module")
def vlm_folder(folders):
    return llava(folders / "llava")


@pytest.fixture(scope="module")
def critic(vlm_folder):
    return load_critic(TypeAdapter(CriticConfig).validate_python(
        {"kind": "hf_vlm", "path": str(vlm_folder), "max_new_tokens": 8}))


@pytest.fixture(scope="module")
def judge(vlm_folder):
    return load_judge(HFVLMJudgeConfig(path=str(vlm_folder)))


def check_images(images, size):
    assert len(images) == len(PROMPTS)
    for image in images:
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (*size, 3)


def step(model, critic, judge, size):
    """generate -> critique (and judge) -> revise with the critique as the instruction."""
    images = model.generate(PROMPTS, SEEDS)
    check_images(images, size)
    critiques = critic.critique(PROMPTS, images)
    assert len(critiques) == len(PROMPTS) and all(isinstance(c, str) for c in critiques)
    scores = judge.score(PROMPTS, images)
    assert len(scores) == len(PROMPTS) and all(0.0 <= s <= 1.0 for s in scores)
    check_images(model.edit(images, [c or "make it red" for c in critiques], SEEDS), size)
    return images


# ---- tests ----

def test_stable_diffusion_step(sd, critic, judge):
    images = step(sd, critic, judge, (64, 64))
    assert type(sd.t2i).__name__ == "StableDiffusionPipeline"
    assert type(sd.editor).__name__ == "StableDiffusionInstructPix2PixPipeline"
    assert sd.editor.vae is sd.t2i.vae and sd.editor.unet is not sd.t2i.unet
    assert all(p.dtype == torch.float32 for p in sd.t2i.unet.parameters())
    again = sd.generate(PROMPTS, SEEDS)
    assert all(np.array_equal(a, b) for a, b in zip(images, again)), "same seeds, other images"
    assert not np.array_equal(images[0], sd.generate(PROMPTS[:1], [SEEDS[0] + 1])[0]), "a seed changes nothing"
    instructions = ["make it red", "add a blue square"]
    first = sd.edit(images, instructions, SEEDS)
    assert all(np.array_equal(a, b) for a, b in zip(first, sd.edit(images, instructions, SEEDS)))
    assert not np.array_equal(first[0], sd.edit(images[:1], instructions[:1], [SEEDS[0] + 1])[0])


def test_a_row_does_not_depend_on_its_batch(sd):
    """Row 1 made alone equals row 1 made beside row 0 (to rounding), so batching changes nothing."""
    batch = sd.generate(PROMPTS, SEEDS)[1].astype(int)
    alone = sd.generate(PROMPTS[1:], SEEDS[1:])[0].astype(int)
    assert np.abs(batch - alone).max() <= 1


def test_flux_kontext_step_at_native_size(kontext, critic, judge):
    """Kontext keeps the working size (it would otherwise snap to ~1 megapixel)."""
    images = step(kontext, critic, judge, (32, 32))
    assert kontext.editor is kontext.t2i  # one folder, one copy of the weights
    assert all(np.array_equal(a, b) for a, b in zip(images, kontext.generate(PROMPTS, SEEDS)))
    sources = [np.full((64, 64, 3), 255, np.uint8)] * 2  # ShapeWorld-sized sources are resized to the working size
    check_images(kontext.edit(sources, ["make it red"] * 2, SEEDS), (32, 32))


def test_critic_prompt_carries_the_format_and_batching_is_invisible(critic):
    images = [np.full((64, 64, 3), 200, np.uint8), np.zeros((48, 48, 3), np.uint8)]
    batch = critic.inputs(PROMPTS, images)
    text = critic.processor.tokenizer.decode(batch["input_ids"][1], skip_special_tokens=True)
    assert PROMPTS[1] in text and "verdict: right or wrong" in text and text.rstrip().endswith("ASSISTANT:")
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    both = critic.critique(PROMPTS, images)
    assert both == critic.critique(PROMPTS, images)
    assert both[1] == critic.critique(PROMPTS[1:], images[1:])[0]  # row 1 is the shorter one: left-padded


def test_critic_history_is_a_multi_image_conversation(critic):
    """Earlier rounds come first (image, then the critic's own reflection as its turn); rows of a batch may
    have different histories, and a row without one is read as before."""
    from model.backends.chat import FOLLOWUP

    images = [np.full((64, 64, 3), 200, np.uint8), np.zeros((48, 48, 3), np.uint8)]
    history = [[(images[1], "verdict: wrong\nedit: add a blue square")], []]
    batch = critic.inputs(PROMPTS, images, history)
    assert batch["pixel_values"].shape == (3, 3, 32, 32)  # two images in row 0, one in row 1
    image_tokens = (batch["input_ids"] == critic.model.config.image_token_id).sum(dim=1).tolist()
    assert image_tokens == [32, 16]
    text = critic.processor.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert text.count("USER:") == 2 and "edit: add a blue square" in text and text.rstrip().endswith(
        FOLLOWUP + " ASSISTANT:") and PROMPTS[0] in text
    both = critic.critique(PROMPTS, images, history)
    assert both[0] == critic.critique(PROMPTS[:1], images[:1], history[:1])[0]
    assert both[1] == critic.critique(PROMPTS[1:], images[1:])[0] == critic.critique(PROMPTS[1:], images[1:], [[]])[0]
    with pytest.raises(ValueError, match="2 rows, 1 histories"):
        critic.critique(PROMPTS, images, history[:1])


def test_judge_is_p_yes_over_the_yes_and_no_tokens(judge):
    tokenizer = judge.processor.tokenizer
    assert tokenizer.convert_ids_to_tokens(judge.yes_ids) == ["\u2581Yes", "\u2581yes"]  # YES is no single token
    assert tokenizer.convert_ids_to_tokens(judge.no_ids) == ["\u2581No", "\u2581no"]
    images = [np.full((32, 32, 3), 30, np.uint8), np.full((32, 32, 3), 220, np.uint8)]
    probs = judge.yes_no(PROMPTS, images)
    assert probs.shape == (2, 2) and np.all((probs >= 0) & (probs <= 1))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    # the same number from a plain forward pass on row 1 alone, unpadded (in the batch it is left-padded)
    one = judge.inputs(PROMPTS[1:], images[1:])
    with torch.inference_mode():
        p = judge.model(**one).logits[0, -1].softmax(-1)
    expected = p[judge.yes_ids].sum() / p[judge.yes_ids + judge.no_ids].sum()
    assert judge.score(PROMPTS, images)[1] == pytest.approx(float(expected), abs=1e-5)


def test_missing_folders_are_named(tmp_path):
    missing = tmp_path / "no-such-model"
    for load, cfg in [(load_image_model, DiffusersImageConfig(path=str(missing))),
                      (load_critic, HFVLMCriticConfig(path=str(missing))),
                      (load_judge, HFVLMJudgeConfig(path=str(missing))),
                      (load_critic, TypeAdapter(CriticConfig).validate_python({"path": str(missing)}))]:
        with pytest.raises(FileNotFoundError, match="no-such-model"):
            load(cfg)


def test_edit_pipeline_must_edit(sd, tmp_path):
    with pytest.raises(ValueError, match="not a diffusers pipeline"):
        load_image_model(DiffusersImageConfig(path=str(sd.path), edit_pipeline="NoSuchPipeline"))
    with pytest.raises(ValueError, match="cannot edit"):  # a text-to-image folder alone has nothing to edit with
        load_image_model(DiffusersImageConfig(path=str(sd.path)))
    with pytest.raises(ValueError, match="transformer"):
        load_image_model(DiffusersImageConfig(path=str(sd.path), edit_path=str(sd.edit_path),
                                              edit_pipeline="StableDiffusionInstructPix2PixPipeline",
                                              edit_shares=["transformer"]))


def test_one_folder_edits_through_another_pipeline_class(sd):
    """An image-to-image pipeline built on the text-to-image one's modules (no second load)."""
    model = load_image_model(DiffusersImageConfig(path=str(sd.path), edit_pipeline="AutoPipelineForImage2Image",
                                                  steps=2, height=32, width=32))
    assert type(model.editor).__name__ == "StableDiffusionImg2ImgPipeline" and model.editor.unet is model.t2i.unet
    check_images(model.edit([np.zeros((64, 64, 3), np.uint8)] * 2, ["make it red"] * 2, SEEDS), (64, 64))


def test_kind_defaults_to_the_embedded_models():
    assert isinstance(TypeAdapter(ImageConfig).validate_python({"guidance": 2}), UnifiedBackendConfig)
    assert isinstance(TypeAdapter(CriticConfig).validate_python({}), UnifiedBackendConfig)
    assert isinstance(TypeAdapter(ImageConfig).validate_python({"kind": "diffusers", "path": "/m"}),
                      DiffusersImageConfig)
    with pytest.raises(ValueError, match="both height and width"):
        DiffusersImageConfig(path="/m", height=64)
    with pytest.raises(ValueError, match="prompt"):
        HFVLMJudgeConfig(path="/m", template="Is this right?")


@pytest.mark.parametrize("name", ["diffusers-sd", "flux-kontext", "qwen-image-edit", "hf-vlm-critic",
                                  "hf-vlm-judge", "open-diffusers-vlm"])
def test_example_configs_validate(name):
    """Each example is a whole run config whose only placeholders are model folders."""
    from agent.config import RunConfig
    from policies.stop import StopPolicy

    data = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert set(data) <= set(RunConfig.model_fields), f"unknown top-level keys {set(data) - set(RunConfig.model_fields)}"
    StopPolicy.model_validate(data.get("stop", {}))
    roles = {"image": ImageConfig, "critic": CriticConfig, "judge": JudgeConfig}
    assert set(data["models"]) <= set(roles)
    parsed = {role: TypeAdapter(roles[role]).validate_python(cfg) for role, cfg in data["models"].items()}
    paths = [v for cfg in parsed.values() for k, v in cfg.model_dump().items() if k.endswith("path") and v]
    assert paths and all(p.startswith("/path/to/your/") for p in paths)
