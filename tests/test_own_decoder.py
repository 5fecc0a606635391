"""The decoder continued on the model's own drawings (own_decoder.py), on a tiny random model."""

from __future__ import annotations

import numpy as np
import torch

from model.unified.config import OwnDecoderConfig
from model.unified.own_decoder import clean_target, decoder_on_own
from tests.test_unified import TINY
from world import random_scene, render


def test_a_clean_target_is_the_parsed_scene_drawn_again():
    rng = np.random.default_rng(0)
    for _ in range(5):
        image = render([random_scene(rng)])[0]
        target, cleaned = clean_target(image)
        assert cleaned and np.array_equal(target, image)  # a rendered scene reads back as itself
    blurred = image.copy()
    blurred[10:30, 10:13] = (250, 0, 0)  # a thin red bar: no shape
    target, cleaned = clean_target(blurred)
    assert not cleaned and target is blurred


def test_only_the_decoder_moves_and_a_rerun_resumes_to_the_same_weights(tmp_path):
    from model.unified.train import build_untrained

    cfg = OwnDecoderConfig(steps=3, images=4, warmup=1)

    def run(work):
        model = build_untrained(TINY)
        before = {k: v.clone() for k, v in model.vq.state_dict().items()}
        record = decoder_on_own(cfg, 0, 4, 5.0, model, work, torch.device("cpu"), log=lambda m: None)
        return model.vq.state_dict(), before, record

    after, before, record = run(tmp_path / "a")
    assert record["steps"] == 3 and record["images"] == 4 and (tmp_path / "a" / "own-decoder-data.pt").is_file()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved and all(k.startswith(("decoder.", "post_quant_conv.")) for k in moved)  # codes mean what they did
    again, _, _ = run(tmp_path / "a")  # finds its state: nothing left to do, the same weights
    fresh, _, _ = run(tmp_path / "b")  # the same seed from scratch: the same weights
    assert all(torch.equal(after[k], again[k]) and torch.equal(after[k], fresh[k]) for k in after)


def test_the_recipe_runs_the_stage_after_self_play(tmp_path):
    import json

    from diffusers import VQModel

    from model.unified.train import train_unified

    cfg = TINY.model_copy(update={"own_decoder": OwnDecoderConfig(steps=2, images=4, warmup=0)})
    out = train_unified(cfg, tmp_path / "work", tmp_path / "model", "cpu", log=lambda m: None)
    record = json.loads((out / "training.json").read_text())
    assert record["stages"]["own_decoder"]["steps"] == 2 and record["config"]["own_decoder"]["steps"] == 2
    shipped = VQModel.from_pretrained(out / "vq").state_dict()
    work = tmp_path / "work"
    stage1, sharpened = (torch.load(work / f, weights_only=False)["model"] for f in ("vq.pt", "vq-decoder.pt"))
    assert torch.equal(shipped["quantize.embedding.weight"], stage1["quantize.embedding.weight"])  # the same codes
    assert not torch.equal(shipped["decoder.conv_out.weight"], sharpened["decoder.conv_out.weight"])  # moved on
