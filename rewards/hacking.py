"""`refloop eval reward`: the hacking gap of a learned reward (its mean P(right) minus the verifier's
rate) with its accuracy, AUC and calibration, on fresh drawings of a unified model, on the repairs
an RL-trained policy makes of its own drawings (where a policy that games the reward shows), and
on the rounds of logged runs."""

from __future__ import annotations

import numpy as np

from rewards.learned import LearnedReward
from rewards.metrics import RewardReport, report


def judge(reward: LearnedReward, prompts: list[str], images: list[np.ndarray]) -> RewardReport:
    from world import check_image

    p = np.concatenate([reward.probabilities(prompts[k:k + 64], images[k:k + 64]) for k in range(0, len(prompts), 64)])
    return report(p, np.array([check_image(q, im).ok for q, im in zip(prompts, images)]))


def drawings(model, prompts: list[str], seeds: list[int], batch: int = 32) -> list[np.ndarray]:
    return [im for k in range(0, len(prompts), batch) for im in model.draw(prompts[k:k + batch], seeds[k:k + batch])]


def repairs(model, prompts: list[str], images: list[np.ndarray], seeds: list[int], batch: int = 32):
    """One repair step of the model on each image: its reflection, and where it says wrong (with an
    edit), its revision; an image it calls right, or cannot read, stays."""
    from policies.critique import REGENERATE, CritiqueError, parse_critique

    out = list(images)
    for k in range(0, len(prompts), batch):
        texts, _ = model.reflect(prompts[k:k + batch], images[k:k + batch])
        todo = []
        for i, text in enumerate(texts, start=k):
            try:
                c = parse_critique(text)
            except CritiqueError:
                continue
            if c.verdict == "wrong":
                todo.append((i, c.instruction))
        redraw = [i for i, ins in todo if ins == REGENERATE]
        edit = [(i, ins) for i, ins in todo if ins != REGENERATE]
        for i, im in zip(redraw, model.draw([prompts[i] for i in redraw], [seeds[i] + 1 for i in redraw]) if redraw
                         else []):
            out[i] = im
        if edit:
            made = model.revise([prompts[i] for i, _ in edit], [images[i] for i, _ in edit], [s for _, s in edit],
                                [seeds[i] + 1 for i, _ in edit])
            for (i, _), im in zip(edit, made):
                out[i] = im
    return out


def hacking_gap(reward: LearnedReward, generator, policy, split: str, per_family: int,
                runs: dict[str, tuple[list[str], list[np.ndarray]]]) -> dict[str, RewardReport]:
    from world import suite

    items = suite(split, per_family)
    prompts, seeds = [i.prompt for i in items], [i.seed for i in items]
    out = {f"fresh {split} images": judge(reward, prompts, drawings(generator, prompts, seeds))}
    if policy is not None:
        first = drawings(policy, prompts, seeds)
        out[f"policy's {split} drawings"] = judge(reward, prompts, first)
        out["policy's repairs of them"] = judge(reward, prompts, repairs(policy, prompts, first, seeds))
    for name, (ps, ims) in runs.items():
        out[name] = judge(reward, ps, ims)
    return out
