from collections import deque

import numpy as np
import pytest

from caplab.analysis.percolation import (
    component_labels,
    component_sizes,
    critical_density,
    fit_power_law,
    percolation_curve,
    predicted_critical_pairs,
    sample_bipartite,
    sample_pairs,
)


def bfs_components(n, left, right):
    """Independent reference: breadth-first search over an adjacency list."""
    adjacency = [[] for _ in range(n)]
    for a, b in zip(left.tolist(), right.tolist()):
        adjacency[a].append(b)
        adjacency[b].append(a)
    label = [-1] * n
    for start in range(n):
        if label[start] >= 0:
            continue
        label[start] = start
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for other in adjacency[node]:
                if label[other] < 0:
                    label[other] = start
                    queue.append(other)
    return np.array(label)


@pytest.mark.parametrize("seed", range(5))
def test_component_labels_match_bfs(seed):
    rng = np.random.default_rng(seed)
    n = 60
    m = int(rng.integers(0, 90))
    left, right = rng.integers(n, size=m), rng.integers(n, size=m)
    assert np.array_equal(component_labels(n, left, right), bfs_components(n, left, right))


def test_chain_is_one_component_and_empty_graph_is_singletons():
    n = 50
    order = np.random.default_rng(0).permutation(n)  # a path visited in random order: worst case for hooking
    assert np.all(component_labels(n, order[:-1], order[1:]) == 0)
    assert np.array_equal(component_sizes(3, 4, np.array([], int), np.array([], int)), np.ones(7))


def test_sampled_pairs_are_distinct_and_bipartite():
    rng = np.random.default_rng(0)
    left, right = sample_pairs(10, 30, 200, rng)
    assert len(set(zip(left.tolist(), right.tolist()))) == 200
    assert left.max() < 10 and right.min() >= 10 and right.max() < 40
    left, right = sample_bipartite(100, 400, 0.01, rng)
    assert abs(len(left) - 400) < 4 * np.sqrt(400)  # Binomial(40000, 0.01): mean 400, sd ~20


def test_closed_forms():
    assert critical_density(90, 1800) == pytest.approx(1 / np.sqrt(90 * 1800))
    assert predicted_critical_pairs(100, 400) == pytest.approx(200.0)
    exponent, prefactor = fit_power_law([1, 10, 100], [3, 30, 300])
    assert exponent == pytest.approx(1.0) and prefactor == pytest.approx(3.0)


def test_giant_component_appears_at_the_predicted_critical_density():
    E, K = 200, 800
    pc = critical_density(E, K)
    densities = pc * np.geomspace(0.25, 4, 25)
    curve = percolation_curve(E, K, densities, by="density", trials=8, seed=1)
    assert curve.largest[0] < 0.05 and curve.largest[-1] > 0.5  # no giant below, a giant above
    assert np.all(np.diff(curve.largest) > -0.05)  # grows with density
    measured = curve.critical_point()
    assert 0.6 * pc < measured < 1.6 * pc  # finite-size estimate near 1/sqrt(E K)


def test_critical_number_of_pairs_scales_as_sqrt_EK():
    measured = []
    sizes = [(100, 100), (100, 400), (100, 1600)]
    for E, K in sizes:
        pairs = np.unique(np.geomspace(0.3, 3, 19) * predicted_critical_pairs(E, K)).astype(int)
        measured.append(percolation_curve(E, K, pairs, by="pairs", trials=6, seed=2).critical_point())
    exponent, _ = fit_power_law([K for _, K in sizes], measured)
    assert exponent == pytest.approx(0.5, abs=0.15)
