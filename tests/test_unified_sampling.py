"""The unified model's drawing settings: chosen by the recipe on its own drawings of train prompts,
shipped in the folder (sampling.json), overridden by the caller."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.ranks import Ranks
from model.unified.bundle import FALLBACK, Sampling, UnifiedModel
from model.unified.calibrate import choose_sampling
from model.unified.config import DecodingConfig, SelfPlayConfig
from world import render, scene_for_prompt


def test_the_folder_s_drawing_settings_travel_with_it_and_the_caller_s_win(tiny_models, tmp_path):
    m = UnifiedModel.load(tiny_models / "unified")
    assert not (tiny_models / "unified" / "sampling.json").exists() or m.choice
    m.chosen, m.choice = Sampling(guidance=2.0, temperature=0.7, top_k=0), {"images": 8}
    m.save(tmp_path / "m")
    again = UnifiedModel.load(tmp_path / "m")
    assert (again.settings.guidance, again.settings.temperature, again.settings.top_k) == (2.0, 0.7, 0)
    assert again.choice["images"] == 8
    asked = UnifiedModel.load(tmp_path / "m", sampling=Sampling(temperature=1.0))
    assert (asked.settings.guidance, asked.settings.temperature) == (2.0, 1.0)  # only what the caller names
    (tmp_path / "m" / "sampling.json").unlink()
    assert UnifiedModel.load(tmp_path / "m").settings == FALLBACK  # an older folder: guidance 1.5 at temperature 1


def test_drawing_settings_change_the_drawings(tiny_models):
    m = UnifiedModel.load(tiny_models / "unified")
    prompts, seeds = ["a red circle"] * 4, [1, 2, 3, 4]
    hot = m.draw_codes(prompts, seeds)
    m.sampling = Sampling(temperature=0.05)
    cold = m.draw_codes(prompts, seeds)
    assert not (hot == cold).all()
    assert (cold == m.draw_codes(prompts, seeds)).all()  # seeded


def test_the_recipe_keeps_the_grid_point_drawn_right_most_often(tiny_models):
    """The verifier judges each point on the same prompts and seeds; the model itself is replaced by
    one that draws right only at guidance 2, temperature 0.7."""
    m = UnifiedModel.load(tiny_models / "unified")
    seen = []

    def draw(prompts, seeds, guidance=None):
        s = m.settings
        seen.append((s.guidance, s.temperature, tuple(prompts), tuple(seeds)))
        good = (s.guidance, s.temperature) == (2.0, 0.7)
        scenes = [scene_for_prompt(p, np.random.default_rng(k)) for k, p in enumerate(prompts)]
        return list(render(scenes)) if good else [np.full((64, 64, 3), 255, np.uint8)] * len(prompts)

    m.draw = draw
    cfg = DecodingConfig(guidances=[1.5, 2.0], temperatures=[0.7, 1.0], images=6)
    chosen, record = choose_sampling(m, cfg, seed=0, batch=4, log=lambda s: None)
    assert (chosen.guidance, chosen.temperature) == (2.0, 0.7) and record["right"] == 1.0
    assert [p["right"] for p in record["grid"]] == [0.0, 0.0, 1.0, 0.0]
    assert len({(p, s) for _, _, p, s in seen}) == 2  # two batches, the same at each of the 4 points
    assert m.sampling == Sampling()  # the caller's settings are back
    json.dumps(record)  # goes into training.json and sampling.json


def test_a_broken_sampling_file_is_a_one_line_error_naming_it(tiny_models, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from agent.cli import app

    folder = tmp_path / "m"
    shutil.copytree(tiny_models / "unified", folder)
    for text in ('{"guidance": "x"}', '{"guidance": 2', "[1]", '{"top_k": 1.5}'):
        (folder / "sampling.json").write_text(text)
        result = CliRunner().invoke(app, ["world", "generate", "a red circle", "--model", str(folder),
                                          "--out", str(tmp_path / "o.png")])
        assert result.exit_code == 2 and "sampling.json" in result.output, result.output
        assert not (tmp_path / "o.png").exists()


def test_self_play_rounds_may_each_draw_their_own_way():
    from model.unified.config import SelfPlayConfig

    plain = SelfPlayConfig(rounds=2, guidance=2.5, temperature=0.6)
    assert plain.drawing(0) == plain.drawing(1) == (2.5, 0.6)
    listed = SelfPlayConfig(rounds=3, guidance=[2.5, 2.5, 1.5], temperature=0.6)
    assert [listed.drawing(r) for r in range(3)] == [(2.5, 0.6), (2.5, 0.6), (1.5, 0.6)]
    with pytest.raises(ValueError, match="selfplay.temperature lists 1 values for 3 rounds"):
        SelfPlayConfig(rounds=3, temperature=[0.6])
    steps = SelfPlayConfig(rounds=3, steps=[1200, 1200, 2400])
    assert [steps.per_round("steps", r) for r in range(3)] == [1200, 1200, 2400]
    assert [steps.steps_before(r) for r in range(4)] == [0, 1200, 2400, 4800]  # where each round's batches start
    assert SelfPlayConfig(rounds=3, steps=400).steps_before(2) == 800
    with pytest.raises(ValueError):
        SelfPlayConfig(rounds=2, steps=[1200, -1])


def test_reflections_of_the_rarer_verdict_are_repeated_until_both_are_as_frequent():
    from model.unified.selfplay import balance_verdicts, verdict_of
    from model.unified.sequences import Layout
    from model.unified.tasks import reading_order
    from model.unified.vocab import build_tokenizer, corpus
    from tasks.shapeworld import label_critique
    from world import parse_image

    layout = Layout(build_tokenizer(32, corpus(20)))
    image = render([scene_for_prompt("a red circle", np.random.default_rng(0))])[0]
    seen = reading_order(parse_image(image).objects)
    codes = list(range(64))

    def reflection(prompt):
        return layout.example("reflect", prompt, codes, None, label_critique(prompt, seen).text)

    right, wrong = reflection("a red circle"), reflection("a blue square")
    draw = layout.example("draw", "a red circle", None, codes, None)
    assert (verdict_of(right[0], layout), verdict_of(wrong[0], layout), verdict_of(draw[0], layout)) == \
        ("right", "wrong", None)
    rows = [right, right, right, draw, wrong]
    out = balance_verdicts(rows, layout)
    assert out[:5] == rows and out[5:] == [wrong, wrong]  # 3 right, 3 wrong; the other rows as they were
    assert balance_verdicts([right, draw], layout) == [right, draw]  # no wrong one to repeat
    with pytest.raises(ValueError, match="selfplay.balance_verdicts lists 2 values for 3 rounds"):
        SelfPlayConfig(rounds=3, balance_verdicts=[True, False])
    assert [SelfPlayConfig(rounds=2, balance_verdicts=[False, True]).per_round("balance_verdicts", r)
            for r in range(2)] == [False, True]


def test_an_edit_keeps_a_patch_as_often_as_the_model_says_and_writes_its_likeliest_change():
    """change_temperature 0: the keep-or-change decision is sampled (P(keep) = the source code's
    probability), and a changed patch gets the likeliest other code, never a tail sample."""
    import torch

    from model.unified.sampling import ImageSpanSampler
    from model.unified.vocab import CODE0

    n, codes, eoi = 400, 8, 1
    probs = torch.tensor([0.3, 0.4, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0])  # source code 0, likeliest other 1
    scores = torch.full((n, CODE0 + codes), -1e9)
    scores[:, CODE0:] = probs.clamp(min=1e-9).log()
    sources = torch.zeros((n, 64), dtype=torch.long)
    picked = {}
    for change in (0.0, 1.0):
        sampler = ImageSpanSampler(0, n, codes, eoi, seeds=list(range(n)), sources=sources, change_temperature=change)
        picked[change] = sampler(torch.zeros((n, 1), dtype=torch.long), scores.clone()).argmax(-1) - CODE0
    assert set(picked[0.0].tolist()) == {0, 1} and abs((picked[0.0] == 0).float().mean() - 0.3) < 0.07
    assert len(set(picked[1.0].tolist())) > 2  # at temperature 1 the tail is sampled too


def test_the_vote_decides_the_verdict_and_the_text_says_it():
    from model.unified.bundle import tally

    right = "seen: a red circle (center)\nwrong: nothing\nverdict: right"
    wrong = "seen: a red circle (center)\nwrong: a blue square is missing\nverdict: wrong\nedit: add a blue square"
    garbled = "seen: a red verdict: wrong"
    texts, shares = tally(
        [right, right, wrong, right],  # the greedy reflections
        [1.0, 1.0, 0.0, 1.0],
        [[right, wrong, wrong, wrong], [right, right, right, wrong], [right] * 4, [None, garbled, wrong, right]],
        [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [1.0] * 4, [None, 0.0, 0.0, 1.0]],
        threshold=0.75)
    assert shares == [0.25, 0.75, 1.0, 0.25]
    assert texts == [wrong, right, right, wrong]  # outvoted greedy texts give way; a garbled sample is passed over


def test_draw_rows_draws_what_multinomial_draws_row_by_row():
    """Each row's token from its own generator, as `torch.multinomial(p, 1, generator=g)` draws it,
    zero-probability tokens (top-k) included."""
    import torch

    from model.unified.sampling import draw_rows

    probs = torch.randn(40, 587).mul(3).softmax(-1)
    probs[::3, 100:] = 0.0  # some rows with most of the vocabulary masked
    expected = torch.cat([torch.multinomial(p, 1, generator=torch.Generator().manual_seed(k))
                          for k, p in enumerate(probs)])
    drawn = draw_rows(probs, [torch.Generator().manual_seed(k) for k in range(40)])
    assert drawn.shape == (40,) and torch.equal(drawn, expected)
    assert (drawn[::3] < 100).all()


def test_a_roomy_cache_writes_in_place_and_generates_what_a_dynamic_cache_does():
    """Same tokens and keys as transformers' `DynamicCache`, through rows dropped between calls
    (`batch_select_indices`) and regrowth; within its room a step copies nothing."""
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from model.unified.roomy_cache import roomy_cache

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    lm = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 50, (4, 7))

    def two_calls(cache):
        first = lm.generate(input_ids=ids, cache=cache, do_sample=False, max_new_tokens=6, pad_token_id=0)
        cache.batch_select_indices(torch.tensor([0, 2]))
        second = lm.generate(input_ids=first[[0, 2]], cache=cache, do_sample=False, max_new_tokens=9, pad_token_id=0)
        return first, second, cache.layers[1].keys

    plain, roomy = two_calls(DynamicCache(config=cfg)), two_calls(roomy_cache(cfg, room=5))
    assert torch.equal(plain[0], roomy[0]) and torch.equal(plain[1], roomy[1])
    assert torch.allclose(plain[2], roomy[2]) and roomy[2].shape == (2, 4, 7 + 6 + 9 - 1, 8)

    cache = roomy_cache(cfg, room=5)
    with torch.no_grad():
        lm(input_ids=ids, cache=cache)
        buffer = cache.layers[0].buffers[0]
        for _ in range(5):
            lm(input_ids=ids[:, :1], cache=cache)
            assert cache.layers[0].buffers[0] is buffer  # written in place
        lm(input_ids=ids[:, :1], cache=cache)
    assert cache.layers[0].buffers[0] is not buffer and cache.get_seq_length() == 13  # out of room: regrown


def test_a_self_play_round_may_train_on_a_task_mix_of_its_own(tiny_models):
    from model.unified.config import UnifiedConfig
    from model.unified.train import round_stream

    cfg = UnifiedConfig.model_validate({"lm": {"batch_size": 4}, "selfplay": {"rounds": 2, "mix": [None, {"edit": 1}]}})
    m = UnifiedModel.load(tiny_models / "unified")
    task = lambda row: row[(row != m.layout.pad).nonzero()[0]].item()  # noqa: E731 - a row's first token
    own = [task(row) for k in range(3) for row in round_stream(cfg, 1, m.vq, m.layout, Ranks())(k)["input_ids"]]
    assert own == [m.layout.task["edit"]] * 12  # round 2's mix: edits only
    lm = [task(row) for k in range(8) for row in round_stream(cfg, 0, m.vq, m.layout, Ranks())(k)["input_ids"]]
    assert len(set(lm)) > 1  # round 1: the LM's own mix
    with pytest.raises(ValueError, match="selfplay.mix lists 1 values for 2 rounds"):
        SelfPlayConfig(rounds=2, mix=[{"edit": 1}])
    with pytest.raises(ValueError, match="selfplay.mix weights"):
        SelfPlayConfig(rounds=1, mix={"edit": -1, "draw": 2})


def test_revise_tries_are_one_for_all_rounds_or_one_per_round():
    assert SelfPlayConfig(rounds=3, revise_tries=[0, 0, 8]).per_round("revise_tries", 2) == 8
    assert SelfPlayConfig(rounds=3, revise_tries=4).per_round("revise_tries", 0) == 4
    with pytest.raises(ValueError, match="selfplay.revise_tries lists 2 values for 3 rounds"):
        SelfPlayConfig(rounds=3, revise_tries=[0, 8])
    with pytest.raises(ValueError):
        SelfPlayConfig(rounds=1, revise_tries=-1)
