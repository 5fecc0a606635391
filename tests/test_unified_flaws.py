"""Patch-level hybrids for the critic (model/unified/flaws.py)."""

from __future__ import annotations

import numpy as np
import pytest

from model.unified.bundle import DEFAULT_MODEL
from model.unified.flaws import flawed_rows, mix_codes, variant
from world import scene_for_prompt


def test_a_variant_changes_one_object_in_shape_or_colour_only(rng):
    scene = scene_for_prompt("a red circle and two blue squares", rng)
    for _ in range(20):
        k = int(rng.integers(len(scene.objects)))
        other = variant(scene, k, rng)
        changed = [(a, b) for a, b in zip(scene.objects, other.objects) if a != b]
        assert len(changed) == 1 and changed[0][0] == scene.objects[k]
        a, b = changed[0]
        assert (a.x, a.y, a.size) == (b.x, b.y, b.size) and (a.shape != b.shape) + (a.color != b.color) == 1


def test_mixed_codes_take_some_but_not_all_differing_patches(rng):
    codes = np.zeros(64, int)
    other = codes.copy()
    other[[3, 4, 11, 12]] = [7, 8, 9, 10]
    for _ in range(20):
        out = mix_codes(codes, other, rng)
        took = np.flatnonzero(out != codes)
        assert 1 <= len(took) < 4 and (out[took] == other[took]).all()


def test_one_differing_patch_becomes_a_stray_piece(rng):
    codes = np.zeros(64, int)
    codes[[3, 4]] = [5, 6]  # an object of two patches on a background of code 0
    other = codes.copy()
    other[3] = 9
    out = mix_codes(codes, other, rng)
    moved = np.flatnonzero(out != codes)
    assert len(moved) == 1 and codes[moved[0]] == 0 and out[moved[0]] in (5, 6)


@pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").is_file(), reason="no shipped unified model")
def test_flawed_rows_are_reflections_labelled_by_what_the_pixels_show():
    from model.unified.bundle import UnifiedModel
    from model.unified.sequences import Layout
    from model.unified.vocab import own_words, with_words

    model = UnifiedModel.load()
    model.tok = with_words(model.tok, own_words())  # as self-play has it
    model.layout = Layout(model.tok)
    rows, stats = flawed_rows(model, 48, seed=1)
    texts = [model.tok.decode(ids) for ids, _ in rows]
    assert len(rows) == 48 and all(t.startswith("<reflect>") for t in texts)
    # a hybrid is sometimes no shape, sometimes another readable shape, sometimes still right
    assert stats["flawed_unreadable"] > 0 and stats["flawed_readable_wrong"] > 0
    assert sum("verdict : right" in t for t in texts) > 0
    assert sum("no shape" in t for t in texts) == stats["flawed_unreadable"] and "<unk>" not in "".join(texts)
