"""Preference data for the learned reward: images judged by the verifier, grouped by what they
answer (a session of a run, or one fresh prompt), then paired inside each group: a right image
is preferred to a wrong one for the same prompt. Groups, not images, are split into training
and held-out, so no image of a held-out session or prompt is trained on.

Sources:
- trajectories: every judged round of the runs' sessions (a better and a worse round of one
  session, as the verifier ranked them);
- fresh: train-suite prompts drawn now by the unified model, several seeds each, labelled by the
  verifier; optionally rendered correct scenes per prompt (`rendered`), so that hard families,
  where the model rarely draws a right image, still have pairs, and rendered near misses
  (`near_misses`: one defect each, the unified model's reflect data), so that a right scene is
  also paired with a wrong one that differs only in what the prompt asks (not in drawing style).
Images are kept as the VQ's codes (the reward model reads codes, rewards/learned.py).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Iterable

import numpy as np


def is_held_out(group: str, share: float) -> bool:
    digest = hashlib.sha256(group.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def trajectory_items(rows: Iterable[dict], encode: Callable[[list[np.ndarray]], list[list[int]]],
                     batch_size: int = 64) -> list[dict]:
    """Rows of agent.export.grpo_dataset(rounds="all") -> judged items (rounds without a verdict skipped)."""
    rows = [r for r in rows if r["correct"] is not None]
    items = []
    for k in range(0, len(rows), batch_size):
        chunk = rows[k:k + batch_size]
        images = [np.asarray(r["images"][0].convert("RGB")) for r in chunk]
        for r, codes in zip(chunk, encode(images)):
            items.append({"group": f"run:{r['run_id']}/{r['session_id']}", "prompt": r["task_prompt"],
                          "codes": codes, "correct": bool(r["correct"]), "source": f"round{min(r['round'], 1)}"})
    return items


def fresh_items(model, per_family: int, samples: int, rendered: int, seed: int, batch_size: int = 32,
                log: Callable[[str], None] = print, near_misses: int = 0) -> list[dict]:
    """Train-suite prompts drawn `samples` times each by the unified model (plus `rendered` rendered
    correct scenes and `near_misses` rendered near misses each), labelled by the verifier."""
    from model.unified.bundle import as_canvas
    from model.unified.tasks import near_miss
    from model.unified.vq import decode, encode
    from world import check_image, render_one, scene_for_prompt, suite

    if per_family == 0:
        return []
    prompts = suite("train", per_family)
    jobs = [(it, j) for it in prompts for j in range(samples)]
    items = []
    for k in range(0, len(jobs), batch_size):
        chunk = jobs[k:k + batch_size]
        codes = model.draw_codes([it.prompt for it, _ in chunk], [seed + it.seed * 1000 + j for it, j in chunk])
        images = decode(model.vq, codes)
        seen = encode(model.vq, images).tolist()  # as the reward model will see any image: encoded
        for (it, _), img, c in zip(chunk, images, seen):
            items.append({"group": f"fresh:{it.prompt}", "prompt": it.prompt, "codes": c,
                          "correct": check_image(it.prompt, img).ok, "source": "drawn"})
        if k // batch_size % 10 == 0:
            log(f"reward data: drew {min(k + batch_size, len(jobs))}/{len(jobs)} fresh images")
    rng = np.random.default_rng(seed)
    for it in prompts if rendered or near_misses else []:
        scenes = [(render_one(scene_for_prompt(it.prompt, rng)), "rendered") for _ in range(rendered)]
        scenes += [(render_one(near_miss(it.prompt, rng)), "near_miss") for _ in range(near_misses)]
        for c, (img, source) in zip(encode(model.vq, as_canvas([im for im, _ in scenes])).tolist(), scenes):
            items.append({"group": f"fresh:{it.prompt}", "prompt": it.prompt, "codes": c,
                          "correct": check_image(it.prompt, img).ok, "source": source})
    return items


def pairs(items: list[dict], max_per_group: int, seed: int) -> list[tuple[dict, dict]]:
    """(better, worse) inside each group: right vs wrong, at most max_per_group per group, drawn at random."""
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[dict]] = {}
    for it in items:
        by_group.setdefault(it["group"], []).append(it)
    out = []
    for group in sorted(by_group):
        right = [it for it in by_group[group] if it["correct"]]
        wrong = [it for it in by_group[group] if not it["correct"]]
        combos = list(itertools.product(right, wrong))
        if len(combos) > max_per_group:
            combos = [combos[i] for i in sorted(rng.choice(len(combos), max_per_group, replace=False))]
        out += combos
    return out


def split(items: list[dict], held_out: float) -> tuple[list[dict], list[dict]]:
    train = [it for it in items if not is_held_out(it["group"], held_out)]
    return train, [it for it in items if is_held_out(it["group"], held_out)]


def summary(items: list[dict], pair_list: list) -> dict:
    by_source: dict[str, dict[str, int]] = {}
    for it in items:
        s = by_source.setdefault(it["source"], {"images": 0, "right": 0})
        s["images"] += 1
        s["right"] += int(it["correct"])
    groups = {it["group"] for it in items}
    return {"images": len(items), "groups": len(groups), "pairs": len(pair_list), "by_source": by_source,
            "groups_with_pairs": len({b["group"] for b, _ in pair_list}),
            "right_share": round(sum(it["correct"] for it in items) / max(len(items), 1), 4)
            if items else math.nan}
