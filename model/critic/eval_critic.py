"""Report card of the critic on what it will judge in the loop: images of the embedded generator
on a split's prompts, judged by the world's verifier (which the critic never calls).

Verdicts: accuracy, false "right" (the image is wrong) and false "wrong" (the image is right)
separately, since most of this generator's images are wrong. Reflections: share that parse.
Instructions: the editor carries out the critic's edit on wrong images, and the verifier says
whether the result is right (fix rate); the same with the ideal edit (label_critique's) shows
how much of the gap is the editor's.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from model.critic.backend import CriticBackendConfig, ShapeWorldCritic
from model.critic.data import Sampling, run_pipe
from model.shapeworld.pipeline import ShapeWorldPipeline
from policies.critique import REGENERATE, Critique, CritiqueError
from tasks.shapeworld import label_critique, parse_critique
from world import SuiteItem, check_image, parse_image
from world.spec import FAMILIES


class VerdictScore(BaseModel):
    n: int = 0
    right_images: int = 0  # the verifier's count
    parsed: int = 0
    correct: int = 0  # parsed, and the verdict agrees with the verifier
    false_right: int = 0  # critic "right", image wrong
    false_wrong: int = 0  # critic "wrong", image right

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def parse_rate(self) -> float:
        return self.parsed / self.n if self.n else float("nan")

    @property
    def false_right_rate(self) -> float:
        """Of the wrong images, the share the critic lets through."""
        wrong = self.n - self.right_images
        return self.false_right / wrong if wrong else float("nan")

    @property
    def false_wrong_rate(self) -> float:
        """Of the right images, the share the critic rejects."""
        return self.false_wrong / self.right_images if self.right_images else float("nan")

    def add(self, truth: bool, critique: Critique | None) -> None:
        self.n += 1
        self.right_images += truth
        if critique is None:
            return
        said_right = critique.verdict == "right"
        self.parsed += 1
        self.correct += said_right == truth
        self.false_right += said_right and not truth
        self.false_wrong += truth and not said_right


class FixScore(BaseModel):
    n: int = 0  # wrong images given an edit (not "regenerate")
    fixed: int = 0  # ... that the edited image made right
    by_action: dict[str, list[int]] = {}  # action -> [n, fixed]

    @property
    def rate(self) -> float:
        return self.fixed / self.n if self.n else float("nan")


class CriticReport(BaseModel):
    split: str
    per_family: int | None  # prompts per family; None: the whole suite
    critic: str
    generator: str
    sampling: Sampling
    overall: VerdictScore
    by_family: dict[str, VerdictScore]
    held_out: VerdictScore
    metrics: dict[str, float]  # the headline figures, flat (as printed)
    regenerate: int  # wrong images the critic asked to regenerate
    edit_agreement: float  # of wrong images with an ideal edit, share where the critic wrote that same edit
    fix: FixScore  # the critic's instructions, carried out by the editor
    fix_ideal: FixScore  # label_critique's instructions, carried out by the editor
    seconds_per_reflection: float
    seconds_generating: float
    examples: list[dict]  # a few (prompt, reflection, ideal) for reading


def read(text: str) -> Critique | None:
    try:
        return parse_critique(text)
    except CritiqueError:
        return None


def edit_of(critique: Critique | None) -> str | None:
    if critique is None or critique.instruction in (None, REGENERATE):
        return None
    return critique.instruction


def fix_rate(pipe: ShapeWorldPipeline, cases: list[tuple[str, np.ndarray, str, int]], sampling: Sampling) -> FixScore:
    """cases: (prompt, wrong image, instruction, seed). The editor carries each out; the verifier judges."""
    score = FixScore()
    if not cases:
        return score
    edited = run_pipe(pipe, [c[2] for c in cases], [c[3] for c in cases], sampling, [c[1] for c in cases])
    by_action: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (prompt, _, instruction, _), image in zip(cases, edited):
        ok = check_image(prompt, image).ok
        score.n += 1
        score.fixed += ok
        by_action[instruction.split()[0]][0] += 1
        by_action[instruction.split()[0]][1] += ok
    score.by_action = dict(sorted(by_action.items()))
    return score


def critique_all(critic: ShapeWorldCritic, prompts: list[str], images: np.ndarray, batch_size: int) -> list[str]:
    out = []
    for i in range(0, len(prompts), batch_size):
        out += critic.critique(prompts[i:i + batch_size], list(images[i:i + batch_size]))
    return out


def evaluate_critic(critic: ShapeWorldCritic, pipe: ShapeWorldPipeline, items: list[SuiteItem], split: str,
                    sampling: Sampling, generator: str = "shipped", per_family: int | None = None) -> CriticReport:
    prompts, seeds = [i.prompt for i in items], [i.seed for i in items]
    t0 = time.perf_counter()
    images = run_pipe(pipe, prompts, seeds, sampling)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    texts = critique_all(critic, prompts, images, sampling.batch_size)
    t_critic = time.perf_counter() - t0

    overall, held_out = VerdictScore(), VerdictScore()
    by_family: dict[str, VerdictScore] = defaultdict(VerdictScore)
    ideal_cases, critic_cases, examples = [], [], []
    regenerate = agree = with_ideal = 0
    for item, image, text in zip(items, images, texts):
        parsed = parse_image(image)
        ideal = label_critique(item.prompt, parsed.objects, parsed.blobs)
        truth = ideal.verdict == "right"
        critique = read(text)
        for score in [overall, by_family[item.family]] + ([held_out] if item.held_out else []):
            score.add(truth, critique)
        if len(examples) < 12:
            examples.append({"prompt": item.prompt, "reflection": text, "ideal": ideal.text})
        if truth:
            continue
        regenerate += critique is not None and critique.instruction == REGENERATE
        if (mine := edit_of(critique)) is not None:
            critic_cases.append((item.prompt, image, mine, item.seed))
        if (best := edit_of(ideal)) is not None:
            ideal_cases.append((item.prompt, image, best, item.seed))
            with_ideal += 1
            agree += mine == best
    fix, fix_ideal = fix_rate(pipe, critic_cases, sampling), fix_rate(pipe, ideal_cases, sampling)
    metrics = {"verdict_accuracy": overall.accuracy, "false_right_rate": overall.false_right_rate,
               "false_wrong_rate": overall.false_wrong_rate, "parse_rate": overall.parse_rate,
               "fix_rate": fix.rate, "fix_rate_ideal": fix_ideal.rate,
               "right_image_share": overall.right_images / overall.n}
    return CriticReport(
        split=split, per_family=per_family, critic=str(critic.path), generator=generator, sampling=sampling,
        overall=overall, by_family={f: by_family[f] for f in FAMILIES if f in by_family}, held_out=held_out,
        metrics=metrics, regenerate=regenerate, edit_agreement=agree / with_ideal if with_ideal else float("nan"),
        fix=fix, fix_ideal=fix_ideal, seconds_per_reflection=t_critic / len(items), seconds_generating=t_gen,
        examples=examples)


def load_eval_critic(path: str | Path | None, device: str = "cpu") -> ShapeWorldCritic:
    """The critic as the loop runs it (reflections as long as its positions hold)."""
    return ShapeWorldCritic(CriticBackendConfig(path=str(path) if path else None, device=device))


def write_report(report: CriticReport, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(report.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)
    return path
