"""The shipped unified model (model/unified/weights): it loads with no path, draws, reflects and
revises, and is about as good as its report card says (small samples, so loose bounds that catch a
broken model: garbled text never parses, and a model that ignores the image says one verdict for
right and wrong scenes alike)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.unified.bundle import DEFAULT_MODEL
from world import check_image, render_one, scene_for_prompt, suite
from world.synth import perturb_scene

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").is_file(), reason="no shipped unified model")


@pytest.fixture(scope="module")
def shipped():
    from model.unified.bundle import UnifiedModel

    return UnifiedModel.load()  # no path: the shipped weights


def test_shipped_model_draws_dev_prompts(shipped):
    items = suite("dev", per_family=6)
    images = shipped.draw([i.prompt for i in items], [i.seed for i in items])
    accuracy = np.mean([check_image(i.prompt, img).ok for i, img in zip(items, images)])
    assert accuracy >= 0.07, accuracy  # measured 7/42; the dev report card says 0.137 on 700


def test_shipped_model_reflects_on_right_and_wrong_scenes(shipped):
    from policies.critique import CritiqueError
    from tasks.shapeworld import parse_critique

    rng = np.random.default_rng(7)
    items = suite("dev", per_family=4)
    prompts, images, truth = [], [], []
    for k, it in enumerate(items):
        scene = scene_for_prompt(it.prompt, rng)
        if k % 2:
            scene = perturb_scene(it.prompt, scene, rng)[0]
        prompts.append(it.prompt), images.append(render_one(scene)), truth.append(k % 2 == 0)
    texts, p_right = shipped.reflect(prompts, images)
    verdicts = []
    for text in texts:
        try:
            verdicts.append(parse_critique(text).verdict == "right")
        except CritiqueError:
            verdicts.append(None)
    assert sum(v is not None for v in verdicts) >= 0.9 * len(texts)
    assert np.mean([v == t for v, t in zip(verdicts, truth)]) >= 0.6  # measured 20/28
    right = [p for p, t in zip(p_right, truth) if t and p is not None]
    wrong = [p for p, t in zip(p_right, truth) if not t and p is not None]
    assert np.mean(right) > np.mean(wrong)  # the judge score tells them apart


def test_shipped_model_edits_keep_what_is_not_named(shipped):
    from model.unified.tasks import make_examples
    from world import parse_image
    from world.edit_check import check_edit

    examples = make_examples("edit", np.random.default_rng(3), 21)
    out = shipped.edit([render_one(e.source) for e in examples], [e.text for e in examples], list(range(21)))
    ok = [check_edit(e.source, e.text, parse_image(img).objects).ok for e, img in zip(examples, out)]
    assert np.mean(ok) >= 0.04, ok  # measured 2/21; the dev report card says 0.084 (remove 0.21)


def test_shipped_model_records_how_it_was_made():
    from model.unified.config import UnifiedConfig

    record = json.loads((DEFAULT_MODEL / "training.json").read_text())
    assert {"command", "config", "git_commit", "stages"} <= record.keys()
    assert UnifiedConfig.model_validate(record["config"]) == UnifiedConfig.load("configs/unified.yaml")
    trained = {k: s for k, s in record["stages"].items() if k != "calibration"}  # the gate: a minute of drawing
    assert {"vq", "lm"} <= record["stages"].keys() and all("seconds" in s for s in trained.values())


@pytest.fixture(scope="module")
def relabelled(shipped):
    """Self-play rows of 64 own drawings whose unmade fixing edits ask for `regenerate` (shared by two tests)."""
    from model.unified.selfplay import own_rows

    return own_rows(shipped, 64, 1.5, seed=3, log=lambda m: None, regenerate_unmade=True)


def test_self_play_labels_regenerate_where_its_own_revision_failed(shipped, relabelled):
    """Own wrong drawings whose fixing edit the model's revise did not carry out are labelled
    `edit: regenerate`; the rest keep the verifier's edit."""
    from model.unified.selfplay import own_rows

    plain, plain_stats = own_rows(shipped, 64, 1.5, seed=3, log=lambda m: None)
    rows, stats = relabelled

    def regenerates(rows):
        texts = [shipped.tok.decode(ids) for ids, _ in rows]  # words and marks spaced: "edit : regenerate"
        return sum(t.startswith("<reflect>") and "edit : regenerate" in t for t in texts)

    assert stats["edits_tried"] > 0 and 0 <= stats["edits_made"] <= stats["edits_tried"]
    assert regenerates(rows) - regenerates(plain) == stats["edits_tried"] - stats["edits_made"]
    assert len(rows) == len(plain) and plain_stats["right"] == stats["right"]  # the same drawings, relabelled


def test_self_play_keeps_its_own_revisions_that_pass_the_verifier(shipped, relabelled):
    """With `revise_tries`, every own revision of a fixing edit that the verifier passes is one more
    revise row (source: its own drawing; target: that revision's codes); the rest is unchanged."""
    import torch

    from model.unified.selfplay import own_rows
    from model.unified.vocab import CODE0
    from model.unified.vq import decode

    base, base_stats = relabelled
    rows, stats = own_rows(shipped, 64, 1.5, seed=3, log=lambda m: None, regenerate_unmade=True, revise_tries=3)
    assert 0 < stats["own_revisions_kept"] <= 3 * stats["edits_tried"]
    assert stats["edits_made"] == base_stats["edits_made"]  # the labels follow the first try, as before
    extra = [row for row in rows if row not in base]
    assert len(rows) == len(base) + stats["own_revisions_kept"] and len(extra) >= 1
    assert all(ids[0] == shipped.layout.task["revise"] for ids, _ in extra)
    targets = torch.tensor([[t - CODE0 for t in labels if t >= CODE0] for _, labels in extra])
    sources = torch.tensor([[ids[k] - CODE0 for k in range(len(ids) - 1) if labels[k + 1] >= CODE0][:64]
                            for ids, labels in extra])
    prompts = [shipped.tok.decode(ids[1:ids.index(shipped.layout.sep)]) for ids, _ in extra]
    assert targets.shape == sources.shape == (len(extra), 64) and (targets != sources).any(dim=1).all()
    passed = [check_image(p, image).ok for p, image in zip(prompts, decode(shipped.vq, targets))]
    assert np.mean(passed) >= 0.8, passed  # re-encoded, a kept revision still passes (round trip ~0.96)


def test_rows_that_finish_leave_the_batch_and_the_rest_write_the_same(shipped):
    """Reflections written a few tokens at a time, finished rows dropped (the default), equal those of
    one `generate` over the whole batch, verdict probabilities included."""
    from model.unified.sampling import write_reflections
    from model.unified.vq import encode

    items = suite("dev", per_family=2)
    prompts = [i.prompt for i in items]
    codes = encode(shipped.vq, np.stack(shipped.draw(prompts, [i.seed for i in items]))).tolist()
    prefixes = [shipped.layout.reflect_prefix(p, c) for p, c in zip(prompts, codes)]
    chunked = write_reflections(shipped.lm, shipped.layout, prefixes, chunk=8)
    whole = write_reflections(shipped.lm, shipped.layout, prefixes, chunk=1000)
    lengths = [len(t.split()) for t in whole[0]]
    assert max(lengths) - min(lengths) > 8  # some rows left the batch chunks before others
    assert chunked[0] == whole[0]
    assert chunked[1] == pytest.approx(whole[1], abs=1e-5)


def test_verdict_votes_are_shares_of_sampled_reflections_and_the_text_follows_the_vote(shipped):
    """P(right) is the share of 4 reflections sampled at temperature 1; each row's samples are seeded by
    the row itself (the same alone or batched, chunked or not); the text's verdict is the vote's."""
    from model.unified.bundle import Sampling
    from model.unified.sampling import write_reflections
    from model.unified.vq import encode
    from policies.critique import CritiqueError, parse_critique

    rng = np.random.default_rng(3)
    items = suite("dev", per_family=2)
    scenes = [scene_for_prompt(it.prompt, rng) for it in items]
    scenes = [perturb_scene(it.prompt, s, rng)[0] if k % 2 else s for k, (it, s) in enumerate(zip(items, scenes))]
    prompts, images = [it.prompt for it in items], [render_one(s) for s in scenes]
    asked = shipped.sampling
    shipped.sampling = Sampling(verdict_votes=4, right_threshold=0.75)
    try:
        texts, shares = shipped.reflect(prompts, images)
        alone = shipped.reflect(prompts[3:4], images[3:4])
    finally:
        shipped.sampling = asked
    assert set(shares) <= {0.0, 0.25, 0.5, 0.75, 1.0} and len(set(shares)) > 1
    assert (alone[0][0], alone[1][0]) == (texts[3], shares[3])
    for text, share in zip(texts, shares):
        try:
            assert (parse_critique(text).verdict == "right") == (share >= 0.75), (text, share)
        except CritiqueError:
            pass
    codes = encode(shipped.vq, np.stack(images)).tolist()
    prefixes = [shipped.layout.reflect_prefix(p, c) for p, c in zip(prompts, codes)]
    seeds = list(range(len(prefixes)))
    chunked = write_reflections(shipped.lm, shipped.layout, prefixes, chunk=8, sample_seeds=seeds)
    whole = write_reflections(shipped.lm, shipped.layout, prefixes, chunk=1000, sample_seeds=seeds)
    again = write_reflections(shipped.lm, shipped.layout, prefixes, sample_seeds=[s + 100 for s in seeds])
    assert chunked == whole and chunked[0] != again[0]  # seeded per row, and sampled


def test_rows_with_one_prefix_share_its_prefill_and_write_what_they_write_apart(shipped):
    """A critic with votes writes many rows after one prefix: the prefix runs once (shared_prefill), and
    every row, greedy or sampled, writes what it writes in a batch of its own (no prefix shared)."""
    from model.unified.sampling import shared_prefill, write_reflections
    from model.unified.vq import encode

    items = suite("dev", per_family=1)[:4]
    prompts = [i.prompt for i in items]
    codes = encode(shipped.vq, np.stack(shipped.draw(prompts, [i.seed for i in items]))).tolist()
    prefixes = [shipped.layout.reflect_prefix(p, c) for p, c in zip(prompts, codes)]
    rows, seeds = prefixes * 3, [None] * 4 + list(range(8))
    assert shared_prefill(shipped.lm, shipped.layout, rows, "cpu").get_seq_length() == max(map(len, rows)) - 1
    assert shared_prefill(shipped.lm, shipped.layout, prefixes, "cpu").get_seq_length() == 0
    texts, said = write_reflections(shipped.lm, shipped.layout, rows, sample_seeds=seeds)
    greedy = write_reflections(shipped.lm, shipped.layout, prefixes)
    apart = [write_reflections(shipped.lm, shipped.layout, [row], sample_seeds=[s]) for row, s in zip(rows, seeds)]
    assert texts == [a[0][0] for a in apart] and texts[:4] == greedy[0]
    assert said[:4] == pytest.approx(greedy[1], abs=1e-5) and set(said[4:]) <= {0.0, 1.0, None}
