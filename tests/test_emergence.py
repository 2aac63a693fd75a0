import numpy as np
import pytest

from caplab.analysis.emergence import bootstrap, emergence_order, sigmoid_fit, sigmoid_midpoint, threshold_crossing

STEPS = np.unique(np.concatenate([[0], np.geomspace(1, 10_000, 40).round()]))


def sigmoid(steps, midpoint, width=0.4, low=0.02, high=0.97):
    x = np.log(np.maximum(steps, 1e-9))
    return low + (high - low) / (1 + np.exp(-(x - np.log(midpoint)) / width))


@pytest.mark.parametrize("midpoint", [30, 300, 3000])
def test_sigmoid_fit_recovers_known_parameters(midpoint):
    fit = sigmoid_fit(STEPS, sigmoid(STEPS, midpoint))
    assert fit.midpoint == pytest.approx(midpoint, rel=0.03)
    assert fit.width == pytest.approx(0.4, rel=0.1)
    assert fit.low == pytest.approx(0.02, abs=0.01) and fit.high == pytest.approx(0.97, abs=0.01)
    assert fit.rmse < 1e-3


def test_sigmoid_fit_is_robust_to_noise():
    rng = np.random.default_rng(0)
    noisy = sigmoid(STEPS, 500) + rng.normal(0, 0.03, len(STEPS))
    assert sigmoid_midpoint(STEPS, noisy) == pytest.approx(500, rel=0.15)


def test_threshold_crossing_interpolates_in_log_steps():
    steps, values = np.array([1, 10, 100, 1000]), np.array([0.0, 0.2, 0.8, 1.0])
    assert threshold_crossing(steps, values, 0.5) == pytest.approx(10 ** 1.5)  # halfway between 10 and 100 in log
    assert threshold_crossing(steps, values, 0.0) == 1
    assert np.isnan(threshold_crossing(steps, values, 1.5))
    assert threshold_crossing(STEPS, sigmoid(STEPS, 200, low=0, high=1), 0.5) == pytest.approx(200, rel=0.02)


def test_bootstrap_interval_covers_the_seed_spread():
    rng = np.random.default_rng(1)
    midpoints = np.exp(rng.normal(np.log(400), 0.2, size=8))
    curves = np.stack([sigmoid(STEPS, m) for m in midpoints])
    est = bootstrap(STEPS, curves, n_boot=300)
    assert est.n_seeds == 8 and est.low < est.value < est.high
    assert est.low < np.exp(np.log(midpoints).mean()) < est.high
    assert est.high / est.low < 2.0  # tight with 8 seeds of 20% spread
    single = bootstrap(STEPS, curves[:1])
    assert single.low == single.value == single.high


def test_emergence_order_sorts_and_puts_never_last():
    curves = {
        "narrow": (STEPS, sigmoid(STEPS, 3000)),
        "grammar": (STEPS, sigmoid(STEPS, 20)),
        "type": (STEPS, sigmoid(STEPS, 300)),
        "never": (STEPS, np.zeros(len(STEPS))),
    }
    order = emergence_order(curves, lambda s, v: threshold_crossing(s, v, 0.5))
    assert [name for name, _ in order] == ["grammar", "type", "narrow", "never"]


def test_seed_phase_figure_recovers_each_runs_emergence_points(tmp_path):
    from caplab.runs.report import seed_phase_figure

    midpoints = {"early": [40, 50, 60], "late": [900, 1000, 1100]}
    runs = [[{"step": int(s), "early": float(sigmoid(s, midpoints["early"][i])), "late": float(sigmoid(s, midpoints["late"][i])),
              "flat": 0.01} for s in STEPS] for i in range(3)]
    points = seed_phase_figure(runs, ("late", "early", "flat"), tmp_path / "phases.png")
    for key in ("early", "late"):
        assert points[key] == pytest.approx(midpoints[key], rel=0.05)
    assert not np.isfinite(points["flat"]).any()  # a capability that never emerges stays nan, not dropped
    assert (tmp_path / "phases.png").is_file()
    assert seed_phase_figure([r[:3] for r in runs], ("early",), tmp_path / "none.png") == {}  # too few evaluations
    assert not (tmp_path / "none.png").exists()


def test_t_intervals_use_students_quantiles():
    from caplab.analysis.intervals import T_975, mean_interval

    stats = pytest.importorskip("scipy.stats")
    assert all(abs(q - stats.t.ppf(0.975, df)) < 1e-3 for df, q in enumerate(T_975, start=1))
    out = mean_interval([1.0, 2.0, 3.0, None])  # None: a seed that never got there is not a value
    half = stats.t.ppf(0.975, 2) * 1.0 / 3 ** 0.5
    assert out["n"] == 3 and out["mean"] == 2.0 and out["interval"] == pytest.approx([2 - half, 2 + half], abs=1e-3)
    assert mean_interval([5.0])["interval"] is None and mean_interval([])["mean"] is None
