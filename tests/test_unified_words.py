"""The reflection words of the unified model: every label it is trained on is in its vocabulary."""

from __future__ import annotations

import numpy as np
import torch

from tests.test_unified import TINY


def test_a_region_that_is_no_shape_is_said_in_the_models_words():
    from model.unified.vocab import build_tokenizer, corpus, own_words, with_words
    from tasks.shapeworld import label_critique
    from world import parse_image, render_one, scene_for_prompt

    tok = build_tokenizer(32, corpus(20))
    assert with_words(tok, own_words()) is tok  # a fresh tokenizer has them
    image = render_one(scene_for_prompt("a green triangle", np.random.default_rng(0)))
    image[40:52, 40:52] = (0, 0, 0)
    read = parse_image(image)
    label = label_critique("a triangle", read.objects, read.blobs)
    assert "region of unknown colour (bottom right) that is no shape" in label.text
    assert tok.unk_token_id not in tok(label.text)["input_ids"]


def test_a_work_folder_with_an_older_vocabulary_gets_the_words_at_self_play(tmp_path):
    """Its LM stage keeps the old vocabulary (its saved state loads); self-play and the exported
    folder have the new words appended, the old ids unchanged; a rerun exports the same weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model.unified.train import train_unified
    from model.unified.vocab import build_tokenizer, corpus

    old = build_tokenizer(32, corpus(20)[:-2])  # without the own-drawing reflections
    assert old.unk_token_id in old("a red region that is no shape")["input_ids"]
    old.save_pretrained(tmp_path / "work" / "tokenizer")
    logs = []
    out = train_unified(TINY, tmp_path / "work", tmp_path / "model", "cpu", log=logs.append)
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) > len(old) and all(tok.get_vocab()[w] == i for w, i in old.get_vocab().items())
    assert tok.unk_token_id not in tok("a red region (top) that is no shape")["input_ids"]
    assert any("words of own-drawing reflections added" in m for m in logs)
    first = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert first["model.embed_tokens.weight"].shape[0] == len(tok)
    train_unified(TINY, tmp_path / "work", tmp_path / "model", "cpu", log=lambda m: None)  # all stages done
    for name, w in AutoModelForCausalLM.from_pretrained(out).state_dict().items():
        assert torch.equal(w, first[name]), name
