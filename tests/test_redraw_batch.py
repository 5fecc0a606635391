"""A round's redraws and edits go out in one editor batch when the editor is the generator and redraws
for `regenerate` (the embedded unified model, which writes both in one `generate`); any other editor
leaves redraws to the generator, as before."""

import asyncio

import numpy as np

from agent.runner import SessionSpec, make_runtime, run_sessions
from policies.stop import StopPolicy
from tests.test_search import ADD, REGENERATE, RIGHT, Critic, StampModel, new_store, seed_of, stamp


class RedrawingModel(StampModel):
    """StampModel whose revise draws afresh for `regenerate` (the generator's stamp, same seed)."""

    redraws = True

    def __init__(self):
        super().__init__()
        self.revised = []

    def revise(self, prompts, images, instructions, seeds):
        self.revised.append(sorted(instructions))
        return [stamp(np.full((64, 64, 3), 255, np.uint8), 0, seed) if i == "regenerate"
                else self.edit([img], [i], [seed])[0] for img, i, seed in zip(images, instructions, seeds)]


def two_sessions(tmp_path, model, editor=None):
    store = new_store(tmp_path / "run")
    critic = Critic({"a circle": [REGENERATE, RIGHT], "a square": [ADD, RIGHT]})
    rt = make_runtime(store, model, editor or model, critic, StopPolicy(max_rounds=1))
    specs = [SessionSpec(id="c", prompt="a circle", seed=7), SessionSpec(id="s", prompt="a square", seed=70)]
    records = {r.id: r for r in asyncio.run(run_sessions(rt, specs))}
    return rt, store, records


def test_a_redrawing_editor_gets_the_round_s_redraws_and_edits_in_one_batch(tmp_path):
    model = RedrawingModel()
    rt, store, r = two_sessions(tmp_path, model)
    assert rt.editor_redraws
    assert model.batches == [2]  # the generator drew round 0 only
    assert model.revised == [["add a circle", "regenerate"]]  # round 1: one batch, both kinds
    redrawn, edited = r["c"].rounds[1], r["s"].rounds[1]
    assert redrawn.calls["generator"] == 1 and "editor" not in redrawn.calls  # still counted as a redraw
    assert edited.calls["editor"] == 1 and "generator" not in edited.calls
    image = store.load_image(redrawn.image)
    assert seed_of(image) == 8 and (image[1] == 255).all()  # round 1's seed, nothing of its source kept
    assert seed_of(store.load_image(edited.image), row=1) == 70  # the edit kept its source's stamp


def test_other_editors_leave_redraws_to_the_generator(tmp_path):
    model = StampModel()
    rt, _, r = two_sessions(tmp_path, model)
    assert not rt.editor_redraws
    assert sorted(model.batches) == [1, 2] and len(model.edited) == 1
    assert r["c"].rounds[1].calls["generator"] == 1
    rt, _, _ = two_sessions(tmp_path / "apart", RedrawingModel(), editor=RedrawingModel())
    assert not rt.editor_redraws  # an editor that is not the generator never draws in its place
