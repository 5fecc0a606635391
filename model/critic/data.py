"""Reflection data for the critic, the OmniGen2 way: images of the embedded generator on train
prompts, images its editor revised, and rendered right scenes and misses, each labelled with the
reflection an ideal critic would write (the world's parser + label_critique).

Rendered misses are of three kinds: near (one change, perturb_scene), far (a random scene: a row
whose `seen:` line only the image can tell) and unreadable (an object off the palette or melted
into another shape, as the generator draws them). All rendered images are lightly blurred: the
generator's are smooth.

Sampling the generator is the slow part, so every source is built in chunks of `chunk_size`
rows, each saved as a `datasets` folder under a temporary name and renamed when complete: a
killed build resumes at the next missing chunk. Chunk k of a source is a function of
(seed, source, k), so a resumed build equals an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from datasets import Dataset, Features, Image, Value, concatenate_datasets, load_from_disk
from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from pydantic import Field, model_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from model.shapeworld.config import Strict, pin_config
from model.shapeworld.pipeline import DEFAULT_GUIDANCE, ShapeWorldPipeline
from policies.critique import REGENERATE
from tasks.shapeworld import label_critique, parse_critique
from world import Obj, Scene, check_scene, parse_image, random_scene, render_one, sample_prompt, scene_for_prompt
from world.render import degrade, label_maps
from world.spec import CANVAS, COLOR_NAMES, COLORS, FAMILIES, MAX_SIZE, MIN_SIZE, SHAPES
from world.synth import PlacementError, perturb_scene

Source = Literal["generated", "edited", "rendered_correct", "rendered_perturbed"]
SOURCES: tuple[str, ...] = ("generated", "edited", "rendered_correct", "rendered_perturbed")
BUILD_ORDER = ("generated", "rendered_correct", "rendered_perturbed", "edited")  # edits draw on generated images
FEATURES = Features({"prompt": Value("string"), "family": Value("string"), "image": Image(),
                     "reflection": Value("string"), "verdict": Value("string"), "source": Value("string")})


class Sampling(Strict):
    """How the generator and editor are run: as the loop runs them (ShapeWorldImageConfig's defaults)."""

    steps: int = Field(20, ge=1)
    guidance: float = DEFAULT_GUIDANCE
    image_guidance: float = 1.5
    batch_size: int = Field(32, ge=1)


class CriticDataConfig(Strict):
    rows: int = Field(12000, ge=1)  # all sources together, before repeats
    mix: dict[Source, float] = {"generated": 0.3, "edited": 0.1, "rendered_correct": 0.35, "rendered_perturbed": 0.25}
    chunk_size: int = Field(256, ge=1)
    edited_from_generated: float = Field(0.5, ge=0, le=1)  # share of edit sources that are generator images
    # kinds of rendered misses: one change (perturb_scene), a random scene, an object made unreadable
    misses: dict[Literal["near", "far", "unreadable"], float] = {"near": 0.4, "far": 0.3, "unreadable": 0.3}
    # the generator's images are ~97% wrong: its rare right ones enter the training mix this many times
    repeat_generated_right: int = Field(4, ge=1)
    blur: tuple[float, float] = (0.4, 1.0)  # sigma range of `degrade` on rendered images
    noise: tuple[float, float] = (0.0, 3.0)  # pixel noise range: generated images are smooth, keep it small
    generator: str | None = None  # pipeline folder; None: the shipped generator
    sampling: Sampling = Sampling()

    @model_validator(mode="after")
    def _shares(self) -> CriticDataConfig:
        for name, shares in (("mix", self.mix), ("misses", self.misses)):
            if any(v < 0 for v in shares.values()) or not math.isclose(sum(shares.values()), 1.0, abs_tol=1e-6):
                raise ValueError(f"{name} shares must be >= 0 and sum to 1, got {shares}")
        return self

    def rows_of(self, source: str) -> int:
        return round(self.rows * self.mix.get(source, 0.0))

    def chunks_of(self, source: str) -> list[int]:
        """Row count of each chunk of a source."""
        n = self.rows_of(source)
        return [min(self.chunk_size, n - k) for k in range(0, n, self.chunk_size)]


# -- one row -------------------------------------------------------------------------------
def label_row(prompt: str, family: str, image: np.ndarray, source: str) -> dict:
    """The ideal reflection on an image, from what the parser reads in it (labels only)."""
    parsed = parse_image(image)
    critique = label_critique(prompt, parsed.objects, parsed.blobs)
    return {"prompt": prompt, "family": family, "image": image, "reflection": critique.text,
            "verdict": critique.verdict, "source": source}


def instruction_of(reflection: str) -> str | None:
    """The edit of a label, None when it asks for none or for a regeneration."""
    instruction = parse_critique(reflection).instruction
    return None if instruction in (None, REGENERATE) else instruction


def family_at(i: int) -> str:
    """Families in turn, so every chunk covers them all."""
    return FAMILIES[i % len(FAMILIES)]


def seeds(rng: np.random.Generator, n: int) -> list[int]:
    return [int(s) for s in rng.integers(2**31, size=n)]


def lightly_degraded(image: np.ndarray, rng: np.random.Generator, cfg: CriticDataConfig) -> np.ndarray:
    return degrade(image, rng, blur=float(rng.uniform(*cfg.blur)), noise=float(rng.uniform(*cfg.noise)))


def near_miss(rng: np.random.Generator, family: str) -> tuple[str, np.ndarray]:
    """A train prompt of `family` and a scene changed in one way so that it is wrong for it."""
    while True:
        prompt = sample_prompt(rng, family, "train")
        try:
            return prompt.text, render_one(perturb_scene(prompt, scene_for_prompt(prompt, rng), rng)[0])
        except (ValueError, PlacementError):
            continue  # no perturbation applies to this draw


def far_miss(rng: np.random.Generator, family: str) -> tuple[str, np.ndarray]:
    """A train prompt of `family` and a random scene that is wrong for it: the generator's usual
    failure, and a row whose `seen:` line the prompt cannot predict (only the image tells)."""
    prompt = sample_prompt(rng, family, "train")
    while check_scene(prompt, scene := random_scene(rng)).ok:
        continue
    return prompt.text, render_one(scene)


def unreadable(rng: np.random.Generator, family: str) -> tuple[str, np.ndarray]:
    """A right scene with one object made unreadable the way the generator's often are: painted
    in a mix of two palette colours (no palette colour), or melted into a second shape of its
    colour (no shape)."""
    prompt = sample_prompt(rng, family, "train")
    scene = scene_for_prompt(prompt, rng)
    image = render_one(scene).copy()
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    if rng.random() < 0.5:
        a, b = (COLORS[COLOR_NAMES[i]] for i in rng.choice(len(COLOR_NAMES), size=2, replace=False))
        t = rng.uniform(0.35, 0.65)
        image[mask_of(obj)] = np.rint(t * np.array(a) + (1 - t) * np.array(b)).astype(np.uint8)
        return prompt.text, image
    size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
    x, y = (int(np.clip(v + rng.integers(-size // 2, size // 2 + 1), 0, CANVAS - size)) for v in (obj.x, obj.y))
    image[mask_of(Obj(shape=str(rng.choice(SHAPES)), color=obj.color, x=x, y=y, size=size))] = COLORS[obj.color]
    return prompt.text, image


def mask_of(obj: Obj) -> np.ndarray:
    """(64, 64) bool: the pixels the renderer fills for this object."""
    return label_maps([Scene(objects=(obj,))])[0] > 0


MISSES = {"near": near_miss, "far": far_miss, "unreadable": unreadable}


# -- one chunk per source --------------------------------------------------------------------
def run_pipe(pipe: ShapeWorldPipeline, texts: list[str], seed_list: list[int], sampling: Sampling,
             sources: list[np.ndarray] | None = None) -> np.ndarray:
    """Text-to-image (sources None) or edits, in batches; each row depends only on its own seed."""
    out = []
    for i in range(0, len(texts), sampling.batch_size):
        sl = slice(i, i + sampling.batch_size)
        out.append(pipe(texts[sl], image=None if sources is None else sources[sl], seed=seed_list[sl],
                        num_inference_steps=sampling.steps, guidance_scale=sampling.guidance,
                        image_guidance_scale=sampling.image_guidance).images)
    return np.concatenate(out)


def generated_chunk(rng: np.random.Generator, start: int, n: int, cfg: CriticDataConfig,
                    pipe: ShapeWorldPipeline) -> list[dict]:
    families = [family_at(start + i) for i in range(n)]
    prompts = [sample_prompt(rng, f, "train").text for f in families]
    images = run_pipe(pipe, prompts, seeds(rng, n), cfg.sampling)
    return [label_row(p, f, im, "generated") for p, f, im in zip(prompts, families, images)]


def rendered_chunk(rng: np.random.Generator, start: int, n: int, cfg: CriticDataConfig, perturbed: bool) -> list[dict]:
    """Right scenes, or misses of the kinds in `cfg.misses` (redrawn until the parser finds them wrong)."""
    source = "rendered_perturbed" if perturbed else "rendered_correct"
    kinds, shares = list(cfg.misses), list(cfg.misses.values())
    rows = []
    for i in range(n):
        family = family_at(start + i)
        while True:
            if perturbed:
                prompt, image = MISSES[kinds[int(rng.choice(len(kinds), p=shares))]](rng, family)
            else:
                prompt = sample_prompt(rng, family, "train").text
                image = render_one(scene_for_prompt(prompt, rng))
            row = label_row(prompt, family, lightly_degraded(image, rng, cfg), source)
            if not perturbed or row["verdict"] == "wrong":
                break
        rows.append(row)
    return rows


def edit_sources(rng: np.random.Generator, start: int, n: int, cfg: CriticDataConfig,
                 pool: Dataset | None) -> list[tuple[str, str, np.ndarray, str]]:
    """(prompt, family, wrong image, the edit that would fix it): generator images from `pool`
    (generated rows with an edit) or rendered near misses."""
    out = []
    for i in range(n):
        if pool is not None and len(pool) and rng.random() < cfg.edited_from_generated:
            row = pool[int(rng.integers(len(pool)))]
            out.append((row["prompt"], row["family"], np.asarray(row["image"]), instruction_of(row["reflection"])))
            continue
        while True:
            prompt, image = near_miss(rng, family_at(start + i))
            image = lightly_degraded(image, rng, cfg)
            label = label_row(prompt, family_at(start + i), image, "")
            if (instruction := instruction_of(label["reflection"])) is not None:
                out.append((prompt, family_at(start + i), image, instruction))
                break
    return out


def edited_chunk(rng: np.random.Generator, start: int, n: int, cfg: CriticDataConfig, pipe: ShapeWorldPipeline,
                 pool: Dataset | None) -> list[dict]:
    """What the loop critiques after a revision: the editor's result of the fixing edit, judged
    against the original prompt."""
    sources = edit_sources(rng, start, n, cfg, pool)
    images = run_pipe(pipe, [s[3] for s in sources], seeds(rng, n), cfg.sampling, [s[2] for s in sources])
    return [label_row(prompt, family, im, "edited") for (prompt, family, _, _), im in zip(sources, images)]


# -- the build ------------------------------------------------------------------------------
def chunk_dir(root: Path, source: str, k: int) -> Path:
    return root / f"{source}-{k:04d}"


def write_chunk(rows: list[dict], folder: Path, meta: dict) -> None:
    """save_to_disk under a temporary name, then rename: a folder with the final name is complete."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    were_on = not are_progress_bars_disabled()
    disable_progress_bars()  # one bar per chunk would bury the build's own
    try:
        Dataset.from_list(rows, features=FEATURES).save_to_disk(str(tmp))
    finally:
        if were_on:
            enable_progress_bars()
    (tmp / "chunk.json").write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, folder)


def check_data_config(root: Path, cfg: CriticDataConfig) -> None:
    """Chunks of one data config only: a work dir started with another refuses to mix them."""
    pin_config(root / "data_config.json", cfg)


def load_source(root: Path, cfg: CriticDataConfig, source: str) -> Dataset | None:
    parts = [load_from_disk(str(chunk_dir(root, source, k))) for k in range(len(cfg.chunks_of(source)))]
    return concatenate_datasets(parts) if parts else None


def build_data(cfg: CriticDataConfig, root: Path, seed: int, load_pipe: Callable[[], ShapeWorldPipeline],
               log: Callable[[str], None] = print) -> Dataset:
    """Every missing chunk of every source, then all rows in one dataset (sources in SOURCES order).
    The generator is loaded only if a chunk needs it."""
    check_data_config(root, cfg)
    pipe = None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn()) as bar:
        for source in BUILD_ORDER:
            sizes = cfg.chunks_of(source)
            done = [chunk_dir(root, source, k).is_dir() for k in range(len(sizes))]
            task = bar.add_task(f"data: {source}", total=sum(sizes), completed=sum(n for n, d in zip(sizes, done) if d))
            pool = None
            for k, n in enumerate(sizes):
                if done[k]:
                    continue
                if source in ("generated", "edited") and pipe is None:
                    pipe = load_pipe()
                if source == "edited" and pool is None:
                    pool = edit_pool(root, cfg)
                t0 = time.perf_counter()
                rows = make_chunk(source, np.random.default_rng([seed, SOURCES.index(source), k]),
                                  k * cfg.chunk_size, n, cfg, pipe, pool)
                write_chunk(rows, chunk_dir(root, source, k), chunk_meta(rows, time.perf_counter() - t0))
                bar.update(task, advance=n)
                if not bar.console.is_terminal:
                    log(f"data: {source} chunk {k + 1}/{len(sizes)} written")
    parts = [d for s in SOURCES if (d := load_source(root, cfg, s)) is not None]
    return concatenate_datasets(parts)


def make_chunk(source: str, rng: np.random.Generator, start: int, n: int, cfg: CriticDataConfig,
               pipe: ShapeWorldPipeline | None, pool: Dataset | None) -> list[dict]:
    if source == "generated":
        return generated_chunk(rng, start, n, cfg, pipe)
    if source == "edited":
        return edited_chunk(rng, start, n, cfg, pipe, pool)
    return rendered_chunk(rng, start, n, cfg, perturbed=source == "rendered_perturbed")


def edit_pool(root: Path, cfg: CriticDataConfig) -> Dataset | None:
    """Generated rows whose label names an edit: the generator images an editor may revise."""
    generated = load_source(root, cfg, "generated")
    if generated is None:
        return None
    keep = [i for i, r in enumerate(generated["reflection"]) if instruction_of(r) is not None]
    return generated.select(keep)


def chunk_meta(rows: list[dict], seconds: float) -> dict:
    return {"rows": len(rows), "seconds": round(seconds, 2), "verdicts": dict(Counter(r["verdict"] for r in rows))}


def build_seconds(root: Path, cfg: CriticDataConfig) -> dict[str, float]:
    """Wall time each source took to build, summed over its chunks (across resumed sessions)."""
    return {s: round(sum(json.loads((chunk_dir(root, s, k) / "chunk.json").read_text())["seconds"]
                         for k in range(len(cfg.chunks_of(s)))), 1) for s in SOURCES}


def verdict_counts(data: Dataset) -> dict[str, dict[str, int]]:
    """{source: {verdict: rows}}: how balanced the mix is."""
    counts: dict[str, Counter] = {}
    for source, verdict in zip(data["source"], data["verdict"]):
        counts.setdefault(source, Counter())[verdict] += 1
    return {s: dict(c) for s, c in counts.items()}
