"""The critic's machinery on an untrained model: its tokenizer gives every reflection back,
it saves and reloads with the Auto classes, generates in batches, and learns only what it writes."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from model.critic.build import IGNORE, CriticConfig, build_critic, critic_inputs, load_critic
from model.critic.tokenizer import IMAGE_TOKEN, build_tokenizer
from tasks.shapeworld import label_critique, parse_critique
from world import parse_image, render_one, scene_for_prompt, suite
from world.synth import perturb_scene
from world.verify import as_parsed

PROMPTS = ["two red circles above a blue square", "a circle", "three triangles and a green square"]
REFLECTIONS = ["seen: a red circle (top); a blue square (bottom)\nwrong: expected two red circles, found one\n"
               "verdict: wrong\nedit: add a red circle",
               "seen: a circle (centre)\nwrong: nothing\nverdict: right",
               "seen: nothing\nwrong: expected three triangles, found none\nverdict: wrong\nedit: regenerate"]


def labels(rng) -> list[str]:
    """Reflections on right and near-miss scenes of every dev prompt, and on images with unreadable regions."""
    texts = []
    for item in suite("dev"):
        scene = scene_for_prompt(item.prompt, rng)
        for s in (scene, perturb_scene(item.prompt, scene, rng)[0]):
            texts.append(label_critique(item.prompt, [as_parsed(o) for o in s.objects]).text)
    for item in suite("dev", per_family=3):
        image = render_one(scene_for_prompt(item.prompt, rng)).copy()
        image[40:52, 40:52] = (0, 0, 0)  # unknown colour
        image[2:6, 2:30] = (220, 40, 40)  # a red bar: no shape
        parsed = parse_image(image)
        texts.append(label_critique(item.prompt, parsed.objects, parsed.blobs).text)
    return texts


@pytest.fixture(scope="module")
def critic():
    torch.manual_seed(0)
    return build_critic()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [render_one(scene_for_prompt(p, rng)) for p in PROMPTS]


def test_tokenizer_gives_every_reflection_back(rng):
    tok = build_tokenizer()
    texts = labels(rng)
    assert any("(size " in t or "unknown colour near (" in t for t in texts)  # blobs: digits, signs
    for text in texts + [i.prompt for i in suite("dev")]:
        ids = tok(text).input_ids
        assert tok.unk_token_id not in ids, tok.convert_ids_to_tokens(ids)
        assert tok.decode(ids) == text
    generated = tok.decode(tok(texts[1]).input_ids)
    assert parse_critique(generated).text == texts[1]
    assert tok.decode(tok("add  a\ncircle ").input_ids) == "add  a\ncircle "  # any spacing survives
    assert tok.convert_ids_to_tokens(tok(f"{IMAGE_TOKEN}a circle").input_ids) == [IMAGE_TOKEN, "a", "▁circle"]


def test_default_size_and_strict_config(critic):
    model, _ = critic
    n = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n < 10e6, f"{n / 1e6:.2f}M parameters"
    assert model.config.vision_config.image_size == 64 and model.config.image_seq_length == 64
    with pytest.raises(ValidationError):
        CriticConfig.model_validate({"vision": {"hiden": 32}})


def test_batch_for_training_supervises_only_the_reflection(critic, images):
    _, processor = critic
    tok = processor.tokenizer
    batch = critic_inputs(processor, PROMPTS, images, REFLECTIONS)
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    assert float(batch["pixel_values"].max()) == 1.0  # white background, scaled to [-1, 1]
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert ((batch["input_ids"] == image_id).sum(1) == 64).all()  # one token per 8x8 patch
    for ids, mask, lab, reflection in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], REFLECTIONS):
        supervised = lab[lab != IGNORE]
        assert tok.decode(supervised) == reflection + tok.eos_token
        assert len(supervised) == len(tok(reflection).input_ids) + 1
        assert (lab[mask == 0] == IGNORE).all() and mask[0] == 1  # right padding, never supervised
        assert torch.equal(ids[lab != IGNORE], supervised)


def test_loss_is_finite_and_reaches_the_vision_tower(critic, images):
    model, processor = critic
    model.train()
    model.zero_grad()
    loss = model(**critic_inputs(processor, PROMPTS, images, REFLECTIONS)).loss
    loss.backward()
    assert torch.isfinite(loss)
    vision = [p.grad for p in model.model.vision_tower.parameters() if p.grad is not None]
    assert vision and sum(float(g.abs().sum()) for g in vision) > 0
    model.zero_grad()
    model.eval()


def test_generate_in_a_batch_as_alone(critic, images):
    model, processor = critic
    batch = critic_inputs(processor, PROMPTS, images)
    assert batch["attention_mask"][:, -1].all()  # left padding: every prompt ends at the last position
    kw = dict(max_new_tokens=20, do_sample=False, output_scores=True, return_dict_in_generate=True)
    out = model.generate(**batch, **kw)
    texts = processor.batch_decode(out.sequences[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    alone = model.generate(**critic_inputs(processor, PROMPTS[1:2], images[1:2]), **kw)
    assert torch.allclose(out.scores[0][1], alone.scores[0][0], atol=1e-4)


def test_saved_critic_reloads_with_auto_classes(critic, images, tmp_path):
    model, processor = critic
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_critic(tmp_path)
    batch = critic_inputs(processor, PROMPTS, images, REFLECTIONS)
    again = critic_inputs(loaded_processor, PROMPTS, images, REFLECTIONS)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**again).logits)
    with pytest.raises(FileNotFoundError, match="no critic"):
        load_critic(tmp_path / "missing")


def test_backend_writes_as_long_as_the_positions_hold(tmp_path, images):
    """No cap: a reflection may fill the positions and no more (a cut-off one loses its verdict);
    a cap in the config wins when it is smaller."""
    from model.critic.backend import CriticBackendConfig, ShapeWorldCritic

    torch.manual_seed(0)
    model, processor = build_critic(CriticConfig.model_validate({"text": {"max_positions": 96}}))
    model.save_pretrained(tmp_path / "c")
    processor.save_pretrained(tmp_path / "c")
    critic = ShapeWorldCritic(CriticBackendConfig(path=str(tmp_path / "c")))
    length = critic_inputs(critic.processor, PROMPTS[:1], images[:1])["input_ids"].shape[1]
    assert critic.room(length) == 96 - length
    assert len(critic.processor.tokenizer(critic.critique(PROMPTS[:1], images[:1])[0]).input_ids) <= 96 - length
    critic.cfg.max_new_tokens = 5
    assert critic.room(length) == 5
    with pytest.raises(ValueError, match="fills all its positions"):
        critic.room(96)
