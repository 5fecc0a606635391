"""How good a learned reward is, measured against the verifier: pairwise accuracy on held-out
pairs, AUC and accuracy of P(right) on held-out images, calibration (ECE) of P(right) and of the
pairwise probability, and the hacking gap (mean P(right) minus the verifier's rate: > 0 is an
over-rating reward, what a policy trained on it can exploit)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve: P(a right image outscores a wrong one), ties counting half."""
    from scipy.stats import mannwhitneyu

    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return None
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |predicted - observed| per equal-width bin, weighted by its share."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, float)
    which = np.minimum((probs * bins).astype(int), bins - 1)
    return float(sum(abs(probs[which == k].mean() - labels[which == k].mean()) * (which == k).mean()
                     for k in range(bins) if (which == k).any()))


def platt(raw: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) of P(right) = sigmoid(a * raw + b), by maximum likelihood (slightly regularised)."""
    from scipy.optimize import minimize

    x, y = np.asarray(raw, float), np.asarray(labels, float)
    if len(set(y.tolist())) < 2:
        return 1.0, 0.0

    def nll(ab):
        z = ab[0] * x + ab[1]
        return float(np.mean(np.logaddexp(0, z) - y * z) + 1e-4 * ab @ ab)

    a, b = minimize(nll, np.array([1.0, 0.0]), method="L-BFGS-B").x
    return float(a), float(b)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, float)))


class RewardReport(BaseModel):
    images: int
    right: int  # images the verifier passes
    accuracy: float  # P(right) >= 0.5 against the verifier
    auc: float | None  # None when one class is missing
    ece: float  # calibration of P(right)
    mean_learned: float
    mean_verifier: float
    pairs: int = 0
    pair_accuracy: float | None = None  # the better image of a pair scores higher (ties count half)
    pair_ece: float | None = None  # calibration of sigmoid(score difference), pairs shown in a random order

    @property
    def gap(self) -> float:
        """How much the learned reward over-rates these images: > 0 is where hacking shows."""
        return self.mean_learned - self.mean_verifier


def report(p_right: np.ndarray, truth: np.ndarray, pair_raw: tuple[np.ndarray, np.ndarray] | None = None,
           seed: int = 0) -> RewardReport:
    """Pointwise figures from P(right) per image; pairwise ones from the raw scores of (better, worse)."""
    p, y = np.asarray(p_right, float), np.asarray(truth, bool)
    if len(p) == 0:
        raise ValueError("nothing to evaluate: no judged images")
    out = RewardReport(images=len(y), right=int(y.sum()), accuracy=float(((p >= 0.5) == y).mean()), auc=auc(p, y),
                       ece=ece(p, y), mean_learned=float(p.mean()), mean_verifier=float(y.mean()))
    if pair_raw is not None and len(pair_raw[0]):
        better, worse = map(np.asarray, pair_raw)
        flip = np.random.default_rng(seed).random(len(better)) < 0.5  # which one is shown first
        first, second = np.where(flip, worse, better), np.where(flip, better, worse)
        out.pairs, out.pair_accuracy = len(better), float((better > worse).mean() + 0.5 * (better == worse).mean())
        out.pair_ece = ece(sigmoid(first - second), ~flip)
    return out
