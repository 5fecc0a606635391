"""Real checkpoints' architectures, tiny and random, saved to a temp folder and loaded back through the
backends (nothing is downloaded): Stable Diffusion, InstructPix2Pix, FLUX.1 Kontext and LLaVA. Each
carries a generate -> critique -> revise step. Pixels and words are meaningless; shapes, types,
seeds and the yes/no arithmetic are not."""

from __future__ import annotations

import string
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

PROMPTS = ["two red circles above a blue square", "a green triangle"]
SEEDS = [3, 4]
CHARS = list(string.ascii_letters + string.digits + ".,;:'\"!?()|-\n")
CONFIGS = Path(__file__).parents[1] / "configs"


# ---- builders: the libraries' own classes, tiny sizes ----

def clip_tokenizer():
    """A character-level CLIP BPE (no merges), written by save_pretrained like any CLIP tokenizer."""
    from transformers import CLIPTokenizer

    lower = [c for c in CHARS if not c.isupper()]
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + lower + [c + "</w>" for c in lower])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def clip_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def vae(latent_channels: int, **kwargs):
    """Two blocks: an 8x smaller latent in real checkpoints, 2x here."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels,
                         norm_num_groups=4, layers_per_block=1, sample_size=32, **kwargs)


def stable_diffusion(folder: Path, instruct_pix2pix: bool) -> Path:
    """A Stable Diffusion 1.x layout; InstructPix2Pix's UNet also reads the source latents (8 channels)."""
    from diffusers import (
        DDIMScheduler,
        StableDiffusionInstructPix2PixPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=8 if instruct_pix2pix else 4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, cross_attention_dim=32, attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    cls = StableDiffusionInstructPix2PixPipeline if instruct_pix2pix else StableDiffusionPipeline
    pipe = cls(vae=vae(4), text_encoder=clip_text_encoder(tokenizer), tokenizer=tokenizer, unet=unet,
               scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def t5_tokenizer():
    """A character-level unigram T5 tokenizer."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    return T5Tokenizer(vocab=pieces + [(c, -1.0) for c in CHARS] + [("\u2581" + c, -1.0) for c in CHARS], extra_ids=0)


def flux_kontext(folder: Path) -> Path:
    """FLUX.1 Kontext's layout: a 16-channel VAE, CLIP + T5 text encoders, the Flux transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=1,
                                 num_heads=4, relative_attention_num_buckets=8))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=True)
    autoencoder = vae(16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=autoencoder,
        text_encoder=clip_text_encoder(tokenizer), tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tokenizer_2,
        transformer=transformer)
    pipe.save_pretrained(folder)
    return folder


LLAVA_TEMPLATE = (  # llava-1.5's: USER: <image>\n{text} ASSISTANT:
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def llama_tokenizer():
    """A Llama BPE over characters, with merges that make a few whole-word tokens (yes/no among them)."""
    from transformers import LlamaTokenizer

    merges, words = [], []
    for word in ["\u2581Yes", "\u2581yes", "\u2581No", "\u2581no", "\u2581USER", "\u2581ASSISTANT"]:
        for i in range(2, len(word) + 1):
            if word[:i] not in words:
                merges.append((word[:i - 1], word[i - 1]))
                words.append(word[:i])
    tokens = dict.fromkeys(["<unk>", "<s>", "</s>", "<image>", "\u2581"] + CHARS + words)
    return LlamaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                          extra_special_tokens={"image_token": "<image>"})


def llava(folder: Path) -> Path:
    """LLaVA-1.5's layout: a CLIP vision tower, a projector, a Llama language model."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(0)
    tokenizer = llama_tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id, image_seq_length=16,
        vision_feature_select_strategy="default", vision_feature_layer=-1))
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


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
                                  "hf-vlm-judge"])
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
