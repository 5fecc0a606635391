"""Choices made on the model's own drawings of TRAIN prompts labelled by the verifier (never dev or
test): the drawing settings, then the verdict gate's threshold, the P(right) above which "right" is
written. The threshold maximises balanced accuracy (the mean of the right and wrong images' verdict
accuracies), so that a model that draws few right images does not learn to call everything wrong or,
as greedy decoding at 0.5 did, too much right."""

from __future__ import annotations

import numpy as np

from model.unified.bundle import Sampling, UnifiedModel
from model.unified.config import DecodingConfig
from model.unified.tasks import train_prompt
from world import check_image


def choose_sampling(model: UnifiedModel, cfg: DecodingConfig, seed: int, batch: int = 64,
                    log=print) -> tuple[Sampling, dict]:
    """The (guidance, temperature) of the grid whose drawings are right most often: how a drawing is
    sampled moved dev one-shot as much as 5,000 LM steps (README, "Drawing settings")."""
    rng = np.random.default_rng([seed, 8])
    prompts = [train_prompt(rng) for _ in range(cfg.images)]
    seeds = [int(s) for s in rng.integers(2**31, size=cfg.images)]
    asked, grid = model.sampling, []
    for g in cfg.guidances:
        for t in cfg.temperatures:
            model.sampling = Sampling(guidance=g, temperature=t, top_k=0)
            right = 0
            for b in range(0, cfg.images, batch):
                images = model.draw(prompts[b:b + batch], seeds[b:b + batch])
                right += sum(check_image(p, img).ok for p, img in zip(prompts[b:b + batch], images))
            grid.append({"guidance": g, "temperature": t, "right": round(right / cfg.images, 4)})
            log(f"drawing settings: guidance {g}, temperature {t}: {right}/{cfg.images} right")
    model.sampling = asked
    best = max(grid, key=lambda point: point["right"])
    return (Sampling(guidance=best["guidance"], temperature=best["temperature"], top_k=0),
            {"images": cfg.images, "right": best["right"], "grid": grid})


def choose_threshold(p_right: np.ndarray, right: np.ndarray, min_gain: float = 0.01) -> tuple[float, float]:
    """(threshold, balanced accuracy) over the candidate cuts between observed scores. A cut that gains
    less than `min_gain` over 0.5 is noise on a few hundred drawings (the 20,000-step model's best cut,
    1.5e-6, gained 0.002 on 512): 0.5 stays."""
    if right.all() or not right.any():
        return 0.5, float("nan")
    balanced = lambda c: 0.5 * ((p_right[right] >= c).mean() + (p_right[~right] < c).mean())  # noqa: E731
    cuts = np.unique(np.concatenate([[0.5], p_right]))
    best = max((balanced(c), -abs(c - 0.5), c) for c in cuts)
    if best[0] - balanced(0.5) < min_gain:
        return 0.5, float(balanced(0.5))
    return float(best[2]), float(best[0])


def calibrate(model: UnifiedModel, n_images: int, seed: int, batch: int = 64, log=print) -> dict:
    """The gate's threshold, on drawings made with the model's own settings."""
    rng = np.random.default_rng([seed, 7])
    scores, labels = [], []
    for b in range(0, n_images, batch):
        prompts = [train_prompt(rng) for _ in range(min(batch, n_images - b))]
        images = model.draw(prompts, [int(s) for s in rng.integers(2**31, size=len(prompts))])
        _, p = model.reflect(prompts, images)
        scores += [0.0 if x is None else x for x in p]
        labels += [check_image(q, img).ok for q, img in zip(prompts, images)]
        log(f"calibration: {len(scores)}/{n_images} own drawings, {sum(labels)} right")
    p_right, right = np.array(scores), np.array(labels)
    threshold, balanced = choose_threshold(p_right, right)
    at_half = 0.5 * ((p_right[right] >= 0.5).mean() + (p_right[~right] < 0.5).mean()) if 0 < right.sum() < len(right) \
        else float("nan")
    return {"right_threshold": threshold, "images": n_images, "right": int(right.sum()),
            "balanced_accuracy": round(balanced, 4), "balanced_accuracy_at_0.5": round(float(at_half), 4),
            "false_right": round(float((p_right[~right] >= threshold).mean()), 4) if (~right).any() else None,
            "false_wrong": round(float((p_right[right] < threshold).mean()), 4) if right.any() else None}
