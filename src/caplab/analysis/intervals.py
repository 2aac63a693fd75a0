"""Means over seeds with 95% t-intervals: the interval every study's headline number carries.

A t-interval, not a bootstrap: with 3 seeds a percentile bootstrap has 10
distinct resample means and covers far less than 95%.
"""

from __future__ import annotations

import numpy as np

# Student's t quantile 0.975 for 1 .. 30 degrees of freedom (beyond: the normal's 1.96)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> float:
    return T_975[df - 1] if df <= len(T_975) else 1.96


def mean_interval(values) -> dict:
    """{"mean", "interval" ([low, high], None with fewer than 2 values), "n", "values"} of the non-None values."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return {"mean": None, "interval": None, "n": 0, "values": []}
    mean, interval = float(np.mean(kept)), None
    if len(kept) > 1:
        half = t_quantile(len(kept) - 1) * float(np.std(kept, ddof=1)) / len(kept) ** 0.5
        interval = [mean - half, mean + half]
    return {"mean": mean, "interval": interval, "n": len(kept), "values": kept}
