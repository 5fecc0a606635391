"""The generator's machinery on a tiny random model: packaging, batching, determinism,
caching, and exact resume of training. (Its quality is `refloop world eval generator`.)"""

import numpy as np
import pytest
import torch

from model.shapeworld import train_generator as tg
from model.shapeworld.build import build_pipeline
from model.shapeworld.config import GeneratorConfig
from model.shapeworld.data import batch_rng, generator_batch, leaks_held_out
from model.shapeworld.pipeline import enable_cache, load_generator
from model.shapeworld.tokenizer import build_tokenizer
from world import make_edit_pair, random_scene, suite

TINY = {
    "seed": 0, "checkpoint_every": 2,
    "vae": {"steps": 4, "batch_size": 2, "block_out_channels": [8, 8, 8], "decoder_steps": 4},
    "denoiser": {"steps": 4, "batch_size": 4, "num_layers": 2, "heads": 2, "head_dim": 8, "text_hidden": 16,
                 "text_layers": 1, "warmup": 1},
}


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gen") / "pipe"
    build_pipeline(GeneratorConfig.model_validate(TINY)).save_pretrained(folder)
    return folder


def test_tokenizer_reads_every_prompt_and_edit():
    tok = build_tokenizer()
    rng = np.random.default_rng(0)
    texts = [i.prompt for i in suite("dev")] + [make_edit_pair(rng, random_scene(rng)).instruction for _ in range(300)]
    for text in texts:
        ids = tok(text).input_ids
        assert tok.unk_token_id not in ids and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert len(ids) <= tok.model_max_length


def test_round_trip_batching_and_determinism(tiny_pipeline):
    pipe = load_generator(tiny_pipeline)
    a = pipe(["a red circle", "two squares"], num_inference_steps=2, seed=[1, 2]).images
    assert a.shape == (2, 64, 64, 3) and a.dtype == np.uint8
    again = load_generator(tiny_pipeline)(["a red circle", "two squares"], num_inference_steps=2, seed=[1, 2]).images
    assert (a == again).all()
    alone = pipe(["a red circle"], num_inference_steps=2, seed=[1]).images
    assert (alone[0] == a[0]).all()  # a row does not depend on its batch mates
    mixed = pipe(["remove the circle", "a circle"], image=[a[0], None], num_inference_steps=2, seed=[3, 4]).images
    assert mixed.shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="source images"):
        pipe(["remove the circle"], image=[a[0], a[1]], num_inference_steps=2)


def test_cache_with_zero_threshold_changes_nothing(tiny_pipeline):
    pipe = load_generator(tiny_pipeline)
    plain = pipe(["three triangles"] * 2, num_inference_steps=4, seed=[5, 6]).images
    enable_cache(pipe, "first_block", threshold=0.0)
    assert pipe.transformer.is_cache_enabled
    assert (pipe(["three triangles"] * 2, num_inference_steps=4, seed=[5, 6]).images == plain).all()
    enable_cache(pipe, "none")
    assert not pipe.transformer.is_cache_enabled


def test_training_batches_are_seeded_and_keep_held_out_text_out():
    a = generator_batch(batch_rng(0, 2, 7), 16, 0.5)
    b = generator_batch(batch_rng(0, 2, 7), 16, 0.5)
    assert a.texts == b.texts and (a.targets == b.targets).all()
    assert a.has_source.any() and not a.has_source.all()
    for step in range(30):
        assert not any(leaks_held_out(t) for t in generator_batch(batch_rng(0, 2, step), 16, 1.0).texts)


def test_resumed_training_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = GeneratorConfig.model_validate(TINY)
    straight = tg.train_generator(cfg, tmp_path / "a", tmp_path / "a_out", "cpu", log=lambda m: None)

    crash_at = {(tg.VAE_STAGE, 2), (tg.DENOISER_STAGE, 2), (tg.DECODER_STAGE, 2)}  # after each step-2 checkpoint
    real_rng = tg.batch_rng

    def crashing_rng(seed, stage, step):
        if (stage, step) in crash_at:
            crash_at.remove((stage, step))
            raise KeyboardInterrupt  # as if killed mid-stage
        return real_rng(seed, stage, step)

    monkeypatch.setattr(tg, "batch_rng", crashing_rng)
    messages = []
    for _ in range(4):
        try:
            resumed = tg.train_generator(cfg, tmp_path / "b", tmp_path / "b_out", "cpu", log=messages.append)
            break
        except KeyboardInterrupt:
            continue
    assert not crash_at
    assert any("resuming the autoencoder at step 2" in m for m in messages)
    assert any("resuming the denoiser at step 2" in m for m in messages)
    assert any("resuming the decoder at step 2" in m for m in messages)
    a, b = load_generator(straight), load_generator(resumed)
    for name in ("transformer", "text_encoder", "vae"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    exported = load_generator(tg.export_checkpoint(cfg, tmp_path / "a", tmp_path / "a_ckpt"))
    for name in ("transformer", "text_encoder", "vae"):  # the checkpoints hold exactly the trained model
        sa, sb = getattr(a, name).state_dict(), getattr(exported, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    record = (tmp_path / "a_out" / "training.json").read_text()
    assert '"examples_seen"' in record and '"wall_seconds"' in record
