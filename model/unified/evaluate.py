"""`refloop world eval unified`: the report card of the unified model, judged by the world's
verifier (evaluation code: it may read images with the parser; the model never does)."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch
from pydantic import BaseModel

from model.unified.bundle import UnifiedModel
from model.unified.tasks import reading_order
from model.unified.train_lm import kept_patches
from model.unified.vq import decode, encode
from policies.critique import REGENERATE, CritiqueError
from tasks.shapeworld import label_critique, parse_critique
from world import check_image, make_edit_pair, parse_image, render, scene_for_prompt
from world.edit_check import check_edit
from world.edits import EditError
from world.suites import SuiteItem


class Rate(BaseModel):
    n: int = 0
    hits: int = 0

    @property
    def value(self) -> float:
        return self.hits / self.n if self.n else float("nan")

    def add(self, hit: bool) -> None:
        self.n, self.hits = self.n + 1, self.hits + bool(hit)


class Table(BaseModel):
    overall: Rate = Rate()
    by: dict[str, Rate] = {}

    def add(self, key: str, hit: bool) -> None:
        self.overall.add(hit)
        self.by.setdefault(key, Rate()).add(hit)


class Report(BaseModel):
    split: str
    guidance: float
    temperature: float
    vq_round_trip: Table = Table()
    one_shot: Table = Table()
    held_out: Rate = Rate()
    reflection_parsed: Rate = Rate()
    verdict_accuracy: Table = Table()  # by the verifier's first defect kind ("none" for right images)
    false_right: Rate = Rate()  # wrong images called right
    false_wrong: Rate = Rate()  # right images called wrong
    revision_right: Rate = Rate()  # own wrong images, own reflection, one revision (with the prompt)
    revision_right_asked: Rate = Rate()  # ... among those whose reflection asked for a change
    edit_right_asked: Rate = Rate()  # the same images, the instruction-only edit task
    revision_ideal: Rate = Rate()  # own wrong images, the verifier's fixing edit (not regenerate), one revision
    redraw_right: Rate = Rate()  # own wrong images' prompts drawn afresh (another seed): what a revision must beat
    edits_rendered: Table = Table()  # by action
    code_stability: float = 0.0  # patches unchanged by an edit (4 px around included) that keep their code
    white_codes: int = 0  # distinct codes of all-white patches over the split's rendered scenes
    images_per_s: float = 0.0
    reflections_per_s: float = 0.0
    batching_ceiling: float = 0.0  # one batch of 32 vs 32 single calls, same rows
    seconds: float = 0.0


def chunks(xs: list, n: int):
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


def evaluate(model: UnifiedModel, items: list[SuiteItem], split: str, batch: int = 32, log=print) -> Report:
    t0 = time.time()
    rep = Report(split=split, guidance=model.settings.guidance, temperature=model.settings.temperature)
    scenes = [scene_for_prompt(it.prompt, np.random.default_rng(it.seed)) for it in items]
    white = set()
    for part in chunks(list(zip(items, scenes)), batch):  # the image tokenizer alone
        rendered = render([s for _, s in part])
        codes = encode(model.vq, rendered)
        blank = (rendered == 255).all(-1).reshape(len(part), 8, 8, 8, 8).all(axis=(2, 4)).reshape(len(part), 64)
        white.update(codes[torch.from_numpy(blank)].tolist())
        back = decode(model.vq, codes)
        for (it, _), img in zip(part, back):
            rep.vq_round_trip.add(it.family, check_image(it.prompt, img).ok)
    rep.white_codes = len(white)
    log(f"vq round trip {rep.vq_round_trip.overall.value:.3f}; {rep.white_codes} codes for all-white patches")
    images, draw_s = [], 0.0
    for part in chunks(items, batch):
        t = time.time()
        images += model.draw([it.prompt for it in part], [it.seed for it in part])
        draw_s += time.time() - t
    rep.images_per_s = len(items) / draw_s
    verdicts = [check_image(it.prompt, img) for it, img in zip(items, images)]
    for it, v in zip(items, verdicts):
        rep.one_shot.add(it.family, v.ok)
        if it.held_out:
            rep.held_out.add(v.ok)
    log(f"one-shot {rep.one_shot.overall.value:.3f} ({rep.images_per_s:.1f} images/s)")
    texts, reflect_s = [], 0.0
    for part in chunks(list(zip(items, images)), batch):
        t = time.time()
        texts += model.reflect([it.prompt for it, _ in part], [img for _, img in part])[0]
        reflect_s += time.time() - t
    rep.reflections_per_s = len(items) / reflect_s
    todo = []  # (item, image, instruction, seed) of own wrong images
    for it, img, v, text in zip(items, images, verdicts, texts):
        kind = "none" if v.ok else v.defects[0].kind
        try:
            c = parse_critique(text)
        except CritiqueError:
            rep.reflection_parsed.add(False)
            rep.verdict_accuracy.add(kind, False)
            (rep.false_wrong if v.ok else rep.false_right).add(False)
            if not v.ok:
                todo.append((it, img, None))  # no edit asked: not revised, a failed revision
            continue
        rep.reflection_parsed.add(True)
        rep.verdict_accuracy.add(kind, (c.verdict == "right") == v.ok)
        (rep.false_wrong if v.ok else rep.false_right).add(c.verdict == ("wrong" if v.ok else "right"))
        if not v.ok:
            todo.append((it, img, c.instruction if c.verdict == "wrong" else None))
    log(f"reflections parsed {rep.reflection_parsed.value:.3f}, verdicts {rep.verdict_accuracy.overall.value:.3f}, "
        f"false right {rep.false_right.value:.3f}")
    asked = [(it, img, ins) for it, img, ins in todo if ins is not None]
    for it, _, _ in todo:
        if not any(it is a for a, _, _ in asked):
            rep.revision_right.add(False)
    for part in chunks(asked, batch):
        prompts, imgs = [it.prompt for it, _, _ in part], [img for _, img, _ in part]
        instructions, seeds = [ins for _, _, ins in part], [it.seed + 1 for it, _, _ in part]
        revised = model.revise(prompts, imgs, instructions, seeds)
        edited = model.edit(imgs, [i if i != "regenerate" else "" for i in instructions], seeds)
        for it, r, e in zip([it for it, _, _ in part], revised, edited):
            ok = check_image(it.prompt, r).ok
            rep.revision_right.add(ok), rep.revision_right_asked.add(ok)
            rep.edit_right_asked.add(check_image(it.prompt, e).ok)
    revision_baselines(model, todo, rep, batch)
    log(f"revisions right {rep.revision_right.value:.3f} (asked {rep.revision_right_asked.value:.3f}; "
        f"with the ideal edit {rep.revision_ideal.value:.3f}; fresh drawings {rep.redraw_right.value:.3f})")
    evaluate_edits(model, items, scenes, rep, batch)
    rep.batching_ceiling = batching_ceiling(model, items[:batch])
    rep.seconds = time.time() - t0
    return rep


def revision_baselines(model: UnifiedModel, todo: list, rep: Report, batch: int) -> None:
    """Execution apart from critique: own wrong images revised with the verifier's fixing edit, and
    the same prompts drawn afresh."""
    ideal = []
    for it, img, _ in todo:
        parsed = parse_image(img)
        instruction = label_critique(it.prompt, reading_order(parsed.objects), parsed.blobs).instruction
        if instruction not in (None, REGENERATE):
            ideal.append((it, img, instruction))
    for part in chunks(ideal, batch):
        out = model.revise([it.prompt for it, _, _ in part], [img for _, img, _ in part],
                           [ins for _, _, ins in part], [it.seed + 1 for it, _, _ in part])
        for (it, _, _), r in zip(part, out):
            rep.revision_ideal.add(check_image(it.prompt, r).ok)
    for part in chunks(todo, batch):
        out = model.draw([it.prompt for it, _, _ in part], [it.seed + 1 for it, _, _ in part])
        for (it, _, _), r in zip(part, out):
            rep.redraw_right.add(check_image(it.prompt, r).ok)


def evaluate_edits(model: UnifiedModel, items: list[SuiteItem], scenes: list, rep: Report, batch: int) -> None:
    """Edits of rendered scenes, carried out with the rest kept (the world's check_edit)."""
    pairs = []
    for it, scene in zip(items, scenes):
        try:
            pairs.append((it, make_edit_pair(np.random.default_rng([it.seed, 7]), scene)))
        except EditError:
            continue
    kept = same = 0
    for part in chunks(pairs, batch):
        sources, targets = render([p.source for _, p in part]), render([p.target for _, p in part])
        for a, b, ca, cb in zip(sources, targets, encode(model.vq, sources), encode(model.vq, targets)):
            mask = torch.from_numpy(kept_patches(a, b, 4))
            kept, same = kept + int(mask.sum()), same + int((ca == cb)[mask].sum())
        out = model.edit(list(sources), [p.instruction for _, p in part], [it.seed for it, _ in part])
        for (_, p), img in zip(part, out):
            parsed = parse_image(img)
            ok = not parsed.blobs and check_edit(p.source, p.instruction, parsed.objects).ok
            rep.edits_rendered.add(p.instruction.split()[0], ok)
    rep.code_stability = same / kept if kept else float("nan")


def batching_ceiling(model: UnifiedModel, items: list[SuiteItem]) -> float:
    """Model time for the rows one at a time / as one batch: what cross-session batching can gain."""
    prompts, seeds = [it.prompt for it in items], [it.seed for it in items]
    t = time.time()
    model.draw(prompts, seeds)
    batched = time.time() - t
    t = time.time()
    for p, s in zip(prompts, seeds):
        model.draw([p], [s])
    return (time.time() - t) / batched


def by_family_rows(table: Table) -> dict[str, float]:
    return {k: round(v.value, 3) for k, v in sorted(table.by.items())}


def summary(rep: Report) -> dict:
    out = defaultdict(dict)
    out["one_shot"] = {"overall": round(rep.one_shot.overall.value, 3), **by_family_rows(rep.one_shot),
                       "held_out": round(rep.held_out.value, 3)}
    out["vq_round_trip"] = {"overall": round(rep.vq_round_trip.overall.value, 3), **by_family_rows(rep.vq_round_trip),
                            "white_patch_codes": rep.white_codes,
                            "unchanged_patches_keep_code": round(rep.code_stability, 3)}
    out["reflection"] = {"parsed": round(rep.reflection_parsed.value, 3),
                         "verdict_accuracy": round(rep.verdict_accuracy.overall.value, 3),
                         "false_right": round(rep.false_right.value, 3), "false_wrong": round(rep.false_wrong.value, 3),
                         **{f"accuracy_{k}": v for k, v in by_family_rows(rep.verdict_accuracy).items()}}
    out["revision"] = {"right_of_wrong": round(rep.revision_right.value, 3),
                       "right_when_asked": round(rep.revision_right_asked.value, 3),
                       "edit_task_when_asked": round(rep.edit_right_asked.value, 3),
                       "with_the_ideal_edit": round(rep.revision_ideal.value, 3), "n_ideal_edits": rep.revision_ideal.n,
                       "fresh_drawing_right": round(rep.redraw_right.value, 3),
                       "n_wrong": rep.revision_right.n}
    out["edits_rendered"] = {"overall": round(rep.edits_rendered.overall.value, 3),
                             **by_family_rows(rep.edits_rendered)}
    out["speed"] = {"images_per_s": round(rep.images_per_s, 1), "reflections_per_s": round(rep.reflections_per_s, 1),
                    "batching_ceiling_x": round(rep.batching_ceiling, 2)}
    return dict(out)
