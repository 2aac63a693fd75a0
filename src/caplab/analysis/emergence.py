"""Locating sudden transitions in capability curves.

Two estimators of a curve's emergence point, both in log-steps (emergence is
judged on the log-step axis the figures use):

- `sigmoid_midpoint`: least-squares fit of  y = lo + (hi - lo) * sigmoid((ln s - mu) / w);
  the emergence point is e^mu. For fixed (mu, w) the fit is linear in (lo, hi),
  so it is solved exactly on a grid of (mu, w) and refined; no optimiser, no
  starting point to tune.
- `threshold_crossing`: the first step at which the curve reaches a level,
  interpolated linearly in log-step. Model-free.

`bootstrap` turns either into a point estimate with a confidence interval over
seeds; `emergence_order` sorts capabilities by when they emerge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass
class SigmoidFit:
    midpoint: float  # step at the sigmoid's centre, e^mu
    width: float  # w, in natural-log steps
    low: float
    high: float
    rmse: float


def _positive(steps, values) -> tuple[np.ndarray, np.ndarray]:
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    keep = (steps > 0) & np.isfinite(values)
    return np.log(steps[keep]), values[keep]


def _grid_fit(x: np.ndarray, y: np.ndarray, mus: np.ndarray, widths: np.ndarray):
    """Best (sse, mu, w, lo, hi) over the grid, with (lo, hi) solved in closed form and hi >= lo."""
    mu, w = np.meshgrid(mus, widths, indexing="ij")
    g = 1.0 / (1.0 + np.exp(-(x[None, None, :] - mu[..., None]) / w[..., None]))  # (n_mu, n_w, n)
    g_mean, y_mean = g.mean(-1), y.mean()
    g_var = ((g - g_mean[..., None]) ** 2).mean(-1)
    slope = ((g - g_mean[..., None]) * (y - y_mean)).mean(-1) / np.maximum(g_var, 1e-12)
    slope = np.maximum(slope, 0.0)  # emergence curves rise
    intercept = y_mean - slope * g_mean
    sse = ((y - intercept[..., None] - slope[..., None] * g) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmin(sse), sse.shape)
    return sse[i, j], mu[i, j], w[i, j], intercept[i, j], intercept[i, j] + slope[i, j]


def sigmoid_fit(steps, values) -> SigmoidFit:
    """Fit a rising sigmoid in log-steps to a capability curve (points at step 0 are ignored).

    Arguments:
        steps: (n,) training steps (or tokens).
        values: (n,) metric values.
    """
    x, y = _positive(steps, values)
    if len(x) < 4:
        raise ValueError("a sigmoid fit needs at least 4 points at positive steps")
    span = x.max() - x.min()
    mus = np.linspace(x.min() - 0.1 * span, x.max() + 0.1 * span, 121)
    widths = np.geomspace(span / 400, span, 60)
    sse, mu, w, lo, hi = _grid_fit(x, y, mus, widths)
    for _ in range(3):  # refine around the best cell
        dmu, dw = (mus[1] - mus[0]), widths[1] / widths[0]
        mus = np.linspace(mu - dmu, mu + dmu, 41)
        widths = np.geomspace(w / dw, w * dw, 41)
        sse, mu, w, lo, hi = _grid_fit(x, y, mus, widths)
    return SigmoidFit(float(np.exp(mu)), float(w), float(lo), float(hi), float(np.sqrt(sse / len(x))))


def sigmoid_midpoint(steps, values, min_rise: float = 0.05) -> float:
    """Emergence point as the midpoint of a sigmoid fit in log-steps; nan if the fit rises less than `min_rise`."""
    fit = sigmoid_fit(steps, values)
    return fit.midpoint if fit.high - fit.low >= min_rise else float("nan")


def threshold_crossing(steps, values, level: float = 0.5) -> float:
    """First step where `values` reaches `level`, interpolated in log-step; nan if it never does."""
    x, y = _positive(steps, values)
    above = np.nonzero(y >= level)[0]
    if len(above) == 0:
        return float("nan")
    k = above[0]
    if k == 0:
        return float(np.exp(x[0]))
    t = (level - y[k - 1]) / (y[k] - y[k - 1])
    return float(np.exp(x[k - 1] + t * (x[k] - x[k - 1])))


@dataclass
class Estimate:
    value: float
    low: float
    high: float
    n_seeds: int


def bootstrap(
    steps, curves, estimator: Callable[[np.ndarray, np.ndarray], float] = sigmoid_midpoint,
    n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> Estimate:
    """Emergence point of the seed-mean curve, with a percentile bootstrap interval over seeds.

    Arguments:
        steps: (n,) common evaluation steps.
        curves: (n_seeds, n) one curve per seed.
        estimator: maps (steps, curve) to a step, e.g. `sigmoid_midpoint` or
            `lambda s, v: threshold_crossing(s, v, 0.5)`.
    """
    steps, curves = np.asarray(steps, float), np.atleast_2d(np.asarray(curves, float))
    value = estimator(steps, curves.mean(0))
    n_seeds = len(curves)
    if n_seeds < 2:
        return Estimate(value, value, value, n_seeds)
    rng = np.random.default_rng(seed)
    picks = rng.integers(n_seeds, size=(n_boot, n_seeds))
    samples = np.array([estimator(steps, curves[p].mean(0)) for p in picks])
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return Estimate(value, float("nan"), float("nan"), n_seeds)
    # intervals in log-step, where the estimators live
    tail = 100 * (1 - confidence) / 2
    low, high = np.exp(np.percentile(np.log(samples), [tail, 100 - tail]))
    return Estimate(value, float(low), float(high), n_seeds)


def emergence_order(curves: dict[str, tuple], estimator: Callable = sigmoid_midpoint) -> list[tuple[str, float]]:
    """Capabilities sorted by emergence point: `{name: (steps, values)}` -> [(name, step), ...].

    Curves that never emerge (nan) come last.
    """
    points = [(name, estimator(*curve)) for name, curve in curves.items()]
    return sorted(points, key=lambda item: (not np.isfinite(item[1]), item[1]))


def peak_read(evaluations: list[dict], metric: str) -> tuple[float, float, bool]:
    """A run's metric at its best evaluation, without the upward bias of a maximum over noisy evaluations.

    Needs the metric on two disjoint halves of its prompts (`<metric>_a`, `<metric>_b`): the evaluation where
    half a peaks is scored on half b and vice versa (cross-fitting), and the two are averaged. Returns (that
    score, the mean step of the two picks, whether either pick is the last evaluation: the peak may lie later).
    """
    a = np.array([e[f"{metric}_a"] for e in evaluations])
    b = np.array([e[f"{metric}_b"] for e in evaluations])
    pick_a, pick_b = int(np.argmax(a)), int(np.argmax(b))
    steps = [evaluations[pick_a]["step"], evaluations[pick_b]["step"]]
    return float(b[pick_a] + a[pick_b]) / 2, float(np.mean(steps)), len(evaluations) - 1 in (pick_a, pick_b)


def loss_reach(records: list[dict], key: str, target: float) -> Optional[float]:
    """`key` (flops, step, elapsed_s, ...) where eval_loss first reaches `target`, interpolated linearly between
    evaluations; None when it never does."""
    points = [(r[key], r["eval_loss"]) for r in records if key in r and "eval_loss" in r]
    if points and points[0][1] <= target:
        return float(points[0][0])
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if y1 <= target:  # y0 > target here
            return float(x0 + (x1 - x0) * (y0 - target) / (y0 - y1))
    return None
