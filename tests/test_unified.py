"""The unified model's recipe and decoding, on tiny configs (seconds on a CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.unified.config import DecodingConfig, LMConfig, SelfPlayConfig, UnifiedConfig, VQConfig
from model.unified.vocab import CODE0

TINY = UnifiedConfig(
    vq=VQConfig(block_out_channels=(8, 8, 8, 8), latent_channels=8, num_codes=32, vq_embed_dim=4, steps=3,
                batch_size=4, reseed_every=2, decoder_steps=2),
    lm=LMConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, steps=4, batch_size=4, warmup=1),
    selfplay=SelfPlayConfig(rounds=1, images=4, steps=2, calibration_images=4),
    decoding=DecodingConfig(guidances=[1.5, 2.0], temperatures=[1.0], images=4),
)


@pytest.fixture(scope="module")
def tiny_unified(tmp_path_factory):
    from model.unified.train import train_unified

    root = tmp_path_factory.mktemp("unified")
    out = train_unified(TINY, root / "work", root / "model", "cpu", log=lambda m: None)
    return out


def test_recipe_writes_a_folder_the_libraries_load(tiny_unified):
    from diffusers import VQModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(tiny_unified)
    tok = AutoTokenizer.from_pretrained(tiny_unified)
    vq = VQModel.from_pretrained(tiny_unified / "vq")
    assert lm.config.vocab_size == len(tok) and vq.config.num_vq_embeddings == 32
    assert tok.convert_tokens_to_ids("<c0>") == CODE0
    record = json.loads((tiny_unified / "training.json").read_text())
    assert set(record["stages"]) == {"vq", "lm", "decoder", "selfplay1", "decoding", "calibration"}
    assert [p["guidance"] for p in record["stages"]["decoding"]["grid"]] == [1.5, 2.0]
    chosen = json.loads((tiny_unified / "sampling.json").read_text())
    assert chosen["guidance"] == record["stages"]["decoding"]["guidance"] and chosen["temperature"] == 1.0
    assert record["stages"]["lm"]["steps"] == 4
    assert record["stages"]["selfplay1"]["images"] == 4 and record["config"]["lm"]["hidden_size"] == 32


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    from model.unified.sequences import Layout
    from model.unified.train_lm import build_lm, synthetic_batch, train_lm
    from model.unified.vocab import build_tokenizer, corpus
    from model.unified.vq import build_vq

    tok = build_tokenizer(32, corpus(20))
    layout, vq = Layout(tok), build_vq(TINY.vq).eval()
    batches = lambda k: synthetic_batch(0, k, TINY.lm, vq, layout)  # noqa: E731

    def run(state, fail_at=None):
        torch.manual_seed(0)
        lm = build_lm(TINY.lm, len(tok), tok)

        def maybe_fail(k):
            if k == fail_at:
                raise KeyboardInterrupt
            return batches(k)

        kw = dict(steps=4, lr=1e-3, warmup=1, weight_decay=0.0, state=state, name="t", device=torch.device("cpu"),
                  log=lambda m: None, save_every=2)
        try:
            train_lm(lm, maybe_fail, **kw)
        except KeyboardInterrupt:
            torch.manual_seed(0)
            lm = build_lm(TINY.lm, len(tok), tok)
            train_lm(lm, batches, **kw)
        return lm

    whole, resumed = run(tmp_path / "a.pt"), run(tmp_path / "b.pt", fail_at=3)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    lm = build_lm(TINY.lm, len(tok), tok)  # a rerun of the finished stage: nothing to train, the same record
    again = train_lm(lm, batches, steps=4, lr=1e-3, warmup=1, weight_decay=0.0, state=tmp_path / "a.pt", name="t",
                     device=torch.device("cpu"), log=lambda m: None, save_every=2)
    assert again["final_loss"] is not None and np.isfinite(again["final_loss"])


def test_a_work_folder_keeps_its_config_but_step_counts_may_grow(tmp_path):
    from model.recipe import pin_config

    path = tmp_path / "config.json"
    pin_config(path, TINY)
    longer = TINY.model_copy(update={"lm": TINY.lm.model_copy(update={"steps": TINY.lm.steps * 2})})
    pin_config(path, longer)  # continue training: the pinned config now says so
    assert UnifiedConfig.model_validate_json(path.read_text()).lm.steps == TINY.lm.steps * 2
    with pytest.raises(ValueError, match="only step and round counts may grow"):
        pin_config(path, TINY)  # fewer steps than already pinned
    more = longer.model_copy(update={"selfplay": longer.selfplay.model_copy(update={"rounds": 2})})
    pin_config(path, more)  # another round of self-play after the first
    per_round = more.model_copy(update={"selfplay": more.selfplay.model_copy(update={"steps": [2, 4]})})
    with pytest.raises(ValueError, match="only step and round counts may grow"):
        pin_config(path, per_round)  # a count turned into a list of counts: not a growth (and no TypeError)
    listed = more.model_copy(update={"selfplay": more.selfplay.model_copy(update={
        "steps": [3, 4], "guidance": [2.5, 1.5], "balance_verdicts": [False, True]})})
    path = tmp_path / "listed" / "config.json"
    path.parent.mkdir()
    pin_config(path, listed)  # a work folder run with per-round lists
    third = listed.model_copy(update={"selfplay": listed.selfplay.model_copy(update={
        "rounds": 3, "steps": [3, 4, 8], "guidance": [2.5, 1.5, 1.5], "balance_verdicts": [False, True, True]})})
    pin_config(path, third)  # a round more: each list gains its value
    for change in ({"guidance": [2.0, 1.5, 1.5]}, {"balance_verdicts": [True, True, True]}, {"steps": [3, 2, 8]}):
        with pytest.raises(ValueError, match="per-round lists by new rounds"):
            pin_config(path, third.model_copy(update={"selfplay": third.selfplay.model_copy(update=change)}))
    wider = third.model_copy(update={"lm": third.lm.model_copy(update={"hidden_size": 64})})
    with pytest.raises(ValueError, match="another config"):
        pin_config(path, wider)


def test_decoding_is_constrained_seeded_and_batch_invariant(tiny_unified):
    from model.unified.bundle import UnifiedModel
    from model.unified.vq import encode

    m = UnifiedModel.load(tiny_unified)
    prompts, seeds = ["a red circle", "two squares", "a triangle above a circle"], [1, 2, 3]
    codes = m.draw_codes(prompts, seeds)
    assert codes.shape == (3, 64) and codes.min() >= 0 and codes.max() < 32
    assert torch.equal(m.draw_codes(prompts[1:2], seeds[1:2])[0], codes[1])  # its batch does not matter
    assert not torch.equal(m.draw_codes(prompts[:1], [9])[0], codes[0])  # the seed does
    images = m.draw(prompts, seeds)
    assert images[0].shape == (64, 64, 3) and images[0].dtype == np.uint8
    edited = m.edit(images, ["remove the circle"] * 3, seeds)
    assert len(edited) == 3 and edited[0].shape == (64, 64, 3)
    texts, p_right = m.reflect(prompts, images)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert all(p is None or 0 <= p <= 1 for p in p_right)
    assert encode(m.vq, np.stack(images)).shape == (3, 64)


def test_interleaved_spans_copy_the_source_codes(tiny_unified):
    from model.unified.bundle import UnifiedModel
    from model.unified.sampling import ImageSpans, sample_spans

    m = UnifiedModel.load(tiny_unified)
    sources = torch.randint(0, 32, (2, 64))
    seen = []
    original = m.lm.generate

    def spy(**kw):
        out = original(**kw)
        seen.append(out)
        return out

    m.lm.generate = spy
    prefixes = [m.layout.edit_prefix("remove the circle"), m.layout.edit_prefix("add a red square")]
    sample_spans(m.lm, m.layout, [ImageSpans(prefixes, [0, 1], sources=sources)])
    span = seen[0][:, -129:]
    assert torch.equal(span[:, 0:128:2] - CODE0, sources)  # the given codes, at every other position
    assert ((span[:, 1:128:2] >= CODE0) & (span[:, 1:128:2] < CODE0 + 32)).all()  # written: image codes only
    assert (span[:, 128] == m.layout.eoi).all()


def test_a_revision_asked_to_regenerate_is_a_fresh_drawing_of_the_prompt(tiny_unified):
    from model.unified.bundle import UnifiedModel

    m = UnifiedModel.load(tiny_unified)
    prompts, seeds = ["a red circle", "two squares"], [4, 5]
    source = m.draw(["a blue triangle"] * 2, [7, 8])
    calls, generate = [], m.lm.generate
    m.lm.generate = lambda **kw: calls.append(1) or generate(**kw)
    revised = m.revise(prompts, source, ["regenerate", "remove the blue triangle"], seeds)
    assert len(calls) == 1  # the redraw and the edit in one generate
    assert np.array_equal(revised[0], m.draw(prompts[:1], seeds[:1])[0])  # the same rows as a draw
    alone = m.revise(prompts[1:], source[1:], ["remove the blue triangle"], seeds[1:])[0]
    assert np.array_equal(revised[1], alone)  # an edit row is untouched by the redraw beside it


def test_a_late_mix_changes_the_tasks_from_its_step_on():
    from model.unified.sequences import Layout
    from model.unified.train_lm import synthetic_batch
    from model.unified.vocab import build_tokenizer, corpus
    from model.unified.vq import build_vq

    tok = build_tokenizer(32, corpus(20))
    layout, vq = Layout(tok), build_vq(TINY.vq).eval()
    lm = TINY.lm.model_copy(update={"late_mix": {"edit": 1.0}, "late_mix_from": 6})

    def tasks(steps):
        firsts = set()
        for k in steps:
            b = synthetic_batch(0, k, lm, vq, layout)
            firsts |= {int(row[mask.bool()][0]) for row, mask in zip(b["input_ids"], b["attention_mask"])}
        return firsts

    assert len(tasks(range(6))) > 1 and tasks(range(6, 9)) == {layout.task["edit"]}
    with pytest.raises(ValueError, match="late_mix"):
        LMConfig(late_mix={"paint": 1.0})


def test_reflections_detokenize_to_the_critique_format():
    from model.unified.vocab import detokenize
    from tasks.shapeworld import parse_critique

    words = "seen : a red circle ( top left ); a blue square ( centre ) wrong : expected two squares , found one " \
            "verdict : wrong edit : add a blue square"
    c = parse_critique(detokenize(words))
    assert c.verdict == "wrong" and c.instruction == "add a blue square"
    assert c.observations == ["a red circle (top left)", "a blue square (centre)"]
    assert c.defects == ["expected two squares, found one"]


def test_images_of_other_sizes_are_seen_at_64(tiny_unified):
    from model.unified.bundle import UnifiedModel

    m = UnifiedModel.load(tiny_unified)
    texts, _ = m.reflect(["a red circle"], [np.full((512, 384, 3), 255, np.uint8)])
    assert len(texts) == 1
    assert m.edit([np.zeros((128, 128, 3), np.uint8)], ["remove the circle"], [0])[0].shape == (64, 64, 3)


def test_revision_targets_copy_the_source_codes_where_the_pixels_are_unchanged():
    from model.unified.sequences import IGNORE, Layout
    from model.unified.tasks import make_examples
    from model.unified.train_lm import encode_examples, kept_patches
    from model.unified.vocab import build_tokenizer, corpus
    from model.unified.vq import build_vq

    a = np.full((64, 64, 3), 255, np.uint8)
    b = a.copy()
    b[10:20, 10:20] = 0
    kept = kept_patches(a, b, 8).reshape(8, 8)
    assert not kept[:4, :4].any() and kept[4:, :].all() and kept[:, 4:].all()
    tok = build_tokenizer(32, corpus(20))
    layout, vq = Layout(tok), build_vq(TINY.vq).eval()
    examples = make_examples("edit", np.random.default_rng(0), 4)
    rng = np.random.default_rng(1)
    plain = encode_examples(vq, layout, examples, 0.0, rng, None)
    copied = encode_examples(vq, layout, examples, 0.0, rng, 8)
    assert torch.equal(plain["input_ids"][:, :-129], copied["input_ids"][:, :-129])  # the same prompts and sources
    written = copied["labels"][:, -128::2] != IGNORE
    same = copied["input_ids"][:, -129:-1:2] == copied["input_ids"][:, -128::2]
    assert written.all() and same.float().mean() > 0.5  # mostly copies of the source code just before


@pytest.mark.parametrize("local", [True, False])
def test_local_codes_depend_on_the_patch_alone(local):
    """With local codes (the recipe's default) a patch's latent, hence its code, is a function of its own
    pixels: the same content gets the same latent wherever it is and whatever surrounds it."""
    from model.unified.vq import build_vq, latents, to_tensor

    torch.manual_seed(0)
    vq = build_vq(TINY.vq.model_copy(update={"local_codes": local})).eval()
    rng = np.random.default_rng(0)
    a = np.full((64, 64, 3), 255, np.uint8)
    a[8:16, 8:16] = rng.integers(0, 256, (8, 8, 3))  # one patch of noise ...
    b = np.full((64, 64, 3), 255, np.uint8)
    b[40:48, 48:56] = a[8:16, 8:16]  # ... moved elsewhere
    b[32:40, 48:56] = 0  # with a black patch right beside it
    with torch.no_grad():
        za, zb = latents(vq, to_tensor(np.stack([a, b])))
    moved = torch.allclose(za[:, 1, 1], zb[:, 5, 6], atol=1e-5)
    white = torch.allclose(za[:, 7, 7], zb[:, 4, 7], atol=1e-5) and torch.allclose(za[:, 0, 0], za[:, 2, 2], atol=1e-5)
    assert moved == local and white == local
    assert vq.config["_local_codes"] is local  # saved in vq/config.json with the folder


def test_the_verdict_gate_writes_right_only_above_the_threshold():
    from model.unified.calibrate import choose_threshold
    from model.unified.sampling import VerdictGate
    from model.unified.sequences import Layout
    from model.unified.vocab import build_tokenizer, corpus

    layout = Layout(build_tokenizer(32, corpus(20)))
    ids = torch.tensor([[layout.pad, layout.verdict_word, layout.colon], [layout.pad, layout.colon, layout.right_word]])
    scores = torch.zeros(2, len(layout.tok))
    scores[:, layout.right_word], scores[:, layout.wrong_word] = 2.0, 0.0  # P(right) = 0.88 on both rows
    for threshold, want in ((0.5, layout.right_word), (0.95, layout.wrong_word)):
        out = VerdictGate(layout, threshold)(ids, scores.clone())
        assert out[0].argmax() == want and torch.isinf(out[0]).sum() == len(layout.tok) - 1
        assert torch.equal(out[1], scores[1])  # not at a verdict: untouched
    p = np.array([0.99, 0.98, 0.97, 0.9, 0.6, 0.3])
    right = np.array([True, True, False, False, False, False])
    assert choose_threshold(p, right) == (0.98, 1.0)  # an overconfident model: the cut moves up
    p = np.array([0.9] * 100 + [0.2] + [0.1] * 100)  # one right image of 101 below 0.5
    right = np.array([True] * 101 + [False] * 100)
    assert choose_threshold(p, right, min_gain=0.001) == (0.2, 1.0)
    assert choose_threshold(p, right)[0] == 0.5  # a gain of 0.005 is noise


def test_the_calibrated_threshold_travels_with_the_folder(tiny_unified, tmp_path):
    from model.unified.bundle import Sampling, UnifiedModel

    m = UnifiedModel.load(tiny_unified)
    assert json.loads((tiny_unified / "reflect.json").read_text())["images"] == TINY.selfplay.calibration_images
    m.calibrated_threshold, m.calibration = 0.75, {"images": 3}
    m.save(tmp_path / "m")
    again = UnifiedModel.load(tmp_path / "m")
    assert again.calibrated_threshold == 0.75 and again.calibration["images"] == 3
    assert "_name_or_path" not in json.loads((tmp_path / "m" / "vq" / "config.json").read_text())  # no loaded-from path
    forced = UnifiedModel.load(tmp_path / "m", sampling=Sampling(right_threshold=0.0))
    assert forced.sampling.right_threshold == 0.0  # a run config may override the folder's value
