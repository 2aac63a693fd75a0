"""Power laws fitted to thresholds some settings never reach (censored data).

A setting whose curve never reaches the level within the range measured has
its threshold *beyond* the last point: a lower bound, not a missing value.
Dropping it biases exponents low; `censored_power_law` keeps it. The model is
Tobit regression in log space,

    log y_i = a + b log x_i + sigma * eps_i,   eps_i ~ N(0, 1),

where an uncensored point contributes its normal log-density and a point
censored at c (y_i > c) contributes log P(y_i > c). The maximum-likelihood
(a, b, sigma) are found by L-BFGS in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PowerLaw:
    exponent: float
    prefactor: float  # y = prefactor * x ** exponent
    sigma: float  # residual spread in natural log units
    n_points: int
    n_censored: int


def censored_power_law(x, y, censored) -> PowerLaw:
    """Maximum-likelihood y ~ x^b where `censored[i]` marks y[i] as a lower bound.

    Arguments:
        x: (n,) positive control values; y: (n,) positive thresholds (or bounds).
        censored: (n,) bool.
    Returns nan fields when fewer than two points are uncensored.
    """
    x, y, censored = np.asarray(x, float), np.asarray(y, float), np.asarray(censored, bool)
    if (~censored).sum() < 2 or len(np.unique(x)) < 2:
        return PowerLaw(math.nan, math.nan, math.nan, len(x), int(censored.sum()))
    lx, ly = torch.tensor(np.log(x)), torch.tensor(np.log(y))
    cens = torch.tensor(censored)
    slope, intercept = np.polyfit(np.log(x[~censored]), np.log(y[~censored]), 1)  # start from the uncensored fit
    spread = max(float(np.std(np.log(y[~censored]) - slope * np.log(x[~censored]) - intercept)), 0.05)
    params = torch.tensor([intercept, slope, math.log(spread)], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def negative_log_likelihood():
        optimizer.zero_grad()
        a, b, log_sigma = params
        sigma = log_sigma.exp().clamp(min=1e-3)
        z = (ly - a - b * lx) / sigma
        point = -0.5 * z**2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
        beyond = torch.special.log_ndtr(-z)  # log P(eps > z)
        loss = -torch.where(cens, beyond, point).sum()
        loss.backward()
        return loss

    optimizer.step(negative_log_likelihood)
    a, b, log_sigma = params.detach().tolist()
    return PowerLaw(float(b), float(math.exp(a)), float(math.exp(log_sigma)), len(x), int(censored.sum()))


def first_reach(x, values, level: float) -> tuple[float, bool]:
    """(first x where `values` reach `level`, interpolated in log x; censored) for a curve sorted by x.

    A curve that never reaches the level returns (last x, True): the threshold lies beyond it.
    """
    x, values = np.asarray(x, float), np.asarray(values, float)
    above = np.nonzero(values >= level)[0]
    if len(above) == 0:
        return float(x[-1]), True
    k = above[0]
    if k == 0:
        return float(x[0]), False
    t = (level - values[k - 1]) / (values[k] - values[k - 1])
    return float(np.exp(np.log(x[k - 1]) + t * (np.log(x[k]) - np.log(x[k - 1])))), False
