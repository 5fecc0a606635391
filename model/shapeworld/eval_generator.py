"""Report card of the generator/editor, judged by the world's verifier (which the model never
calls): text-to-image accuracy by family, edits of rendered scenes and of its own images,
speed at batch 32, and the same with a step cache."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
from pydantic import BaseModel

from model.shapeworld.pipeline import DEFAULT_GUIDANCE, ShapeWorldPipeline, enable_cache
from world import SuiteItem, check_edit, check_image, make_edit_pair, parse_image, render, scene_for_prompt
from world.edits import EditError, scene_from_parsed
from world.spec import FAMILIES


class Score(BaseModel):
    n: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


class Sampling(BaseModel):
    steps: int = 20
    guidance: float = DEFAULT_GUIDANCE
    image_guidance: float = 1.5
    batch_size: int = 32


class T2IResult(BaseModel):
    by_family: dict[str, Score]
    overall: Score
    held_out: Score
    seconds: float
    images_per_second: float


class EditResult(BaseModel):
    by_action: dict[str, Score]
    overall: Score
    seconds: float


class GeneratorReport(BaseModel):
    split: str
    sampling: Sampling
    t2i: T2IResult
    edit_rendered: EditResult | None = None
    edit_own: EditResult | None = None
    cache: str = "none"
    t2i_cached: T2IResult | None = None


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def generate(pipe: ShapeWorldPipeline, texts: list[str], seeds: list[int], sampling: Sampling,
             sources: list[np.ndarray | None] | None = None) -> tuple[np.ndarray, float]:
    """All rows, in batches; returns the images and the wall time spent in the pipeline."""
    out, seconds = [], 0.0
    for sl in _batches(len(texts), sampling.batch_size):
        t0 = time.perf_counter()
        result = pipe(texts[sl], image=None if sources is None else sources[sl], seed=seeds[sl],
                      num_inference_steps=sampling.steps, guidance_scale=sampling.guidance,
                      image_guidance_scale=sampling.image_guidance)
        seconds += time.perf_counter() - t0
        out.append(result.images)
    return np.concatenate(out), seconds


def eval_t2i(pipe: ShapeWorldPipeline, items: list[SuiteItem], sampling: Sampling) -> tuple[T2IResult, np.ndarray]:
    images, seconds = generate(pipe, [i.prompt for i in items], [i.seed for i in items], sampling)
    by_family: dict[str, Score] = defaultdict(Score)
    overall, held_out = Score(), Score()
    for item, image in zip(items, images):
        ok = check_image(item.prompt, image).ok
        for score in [by_family[item.family], overall] + ([held_out] if item.held_out else []):
            score.n += 1
            score.correct += ok
    by_family = {f: by_family[f] for f in FAMILIES if f in by_family}
    return T2IResult(by_family=by_family, overall=overall, held_out=held_out, seconds=seconds,
                     images_per_second=len(items) / seconds), images


def eval_edits(pipe: ShapeWorldPipeline, sources: list, source_images: list[np.ndarray], instructions: list[str],
               seeds: list[int], sampling: Sampling) -> EditResult:
    """sources: the truth of each source image (a Scene, or the objects read off it)."""
    images, seconds = generate(pipe, instructions, seeds, sampling, sources=source_images)
    by_action: dict[str, Score] = defaultdict(Score)
    overall = Score()
    for source, instruction, image in zip(sources, instructions, images):
        ok = check_edit(source, instruction, parse_image(image).objects).ok
        for score in (by_action[instruction.split()[0]], overall):
            score.n += 1
            score.correct += ok
    return EditResult(by_action=dict(by_action), overall=overall, seconds=seconds)


def rendered_edit_cases(items: list[SuiteItem]):
    """One edit pair per suite item, made from a rendered correct scene of its prompt."""
    sources, instructions, seeds = [], [], []
    for item in items:
        rng = np.random.default_rng([item.seed, 7])
        scene = scene_for_prompt(item.prompt, rng)
        try:
            pair = make_edit_pair(rng, scene)
        except EditError:
            continue
        sources.append(pair.source)
        instructions.append(pair.instruction)
        seeds.append(item.seed)
    return sources, list(render(sources)), instructions, seeds


def own_edit_cases(items: list[SuiteItem], images: np.ndarray):
    """Edits of the generator's own images: every image that reads as a valid scene."""
    sources, source_images, instructions, seeds = [], [], [], []
    for item, image in zip(items, images):
        parsed = parse_image(image)
        scene = scene_from_parsed(parsed.objects) if not parsed.blobs and parsed.objects else None
        if scene is None:
            continue
        try:
            pair = make_edit_pair(np.random.default_rng([item.seed, 8]), scene)
        except EditError:
            continue
        sources.append(list(parsed.objects))
        source_images.append(image)
        instructions.append(pair.instruction)
        seeds.append(item.seed)
    return sources, source_images, instructions, seeds


def evaluate_generator(pipe: ShapeWorldPipeline, items: list[SuiteItem], split: str, sampling: Sampling,
                       edits: bool = True, cache: str = "none", cache_threshold: float = 0.1) -> GeneratorReport:
    enable_cache(pipe, "none")
    t2i, images = eval_t2i(pipe, items, sampling)
    report = GeneratorReport(split=split, sampling=sampling, t2i=t2i, cache=cache)
    if edits:
        s, imgs, ins, seeds = rendered_edit_cases(items)
        report.edit_rendered = eval_edits(pipe, s, imgs, ins, seeds, sampling)
        s, imgs, ins, seeds = own_edit_cases(items, images)
        report.edit_own = eval_edits(pipe, s, imgs, ins, seeds, sampling) if s else None
    if cache != "none":
        enable_cache(pipe, cache, cache_threshold)
        try:
            report.t2i_cached, _ = eval_t2i(pipe, items, sampling)
        finally:
            enable_cache(pipe, "none")
    return report
