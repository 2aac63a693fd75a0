import numpy as np
import pytest

from caplab.analysis.censored import censored_power_law, first_reach
from caplab.analysis.percolation import fit_power_law


def test_censored_points_are_kept_as_lower_bounds_not_dropped():
    rng = np.random.default_rng(0)
    x = np.repeat(np.geomspace(10, 1000, 6), 30)
    y = 2.0 * x**0.5 * np.exp(rng.normal(0, 0.3, len(x)))
    cap = 2.0 * 1000**0.5 * 0.5  # the measurement stops here: larger thresholds are only known to exceed it
    censored = y > cap
    observed = np.minimum(y, cap)
    assert censored.sum() > 40
    fit = censored_power_law(x, observed, censored)
    assert fit.exponent == pytest.approx(0.5, abs=0.04) and fit.sigma == pytest.approx(0.3, abs=0.05)
    dropped = fit_power_law(x[~censored], observed[~censored])[0]
    assert dropped < 0.45  # dropping the censored points biases the exponent low
    # with nothing censored it is ordinary least squares
    plain = censored_power_law(x, y, np.zeros(len(x), bool))
    assert plain.exponent == pytest.approx(fit_power_law(x, y)[0], abs=1e-6)


def test_first_reach_interpolates_in_log_x_and_censors_curves_that_never_reach():
    assert first_reach([10, 100], [0.0, 1.0], 0.5) == pytest.approx((np.sqrt(1000), False))
    assert first_reach([10, 100, 1000], [0.1, 0.2, 0.3], 0.5) == (1000.0, True)
    assert first_reach([10, 100], [0.7, 0.9], 0.5) == (10.0, False)
