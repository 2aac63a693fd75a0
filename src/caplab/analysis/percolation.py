"""Bipartite percolation: the graph model behind the percolation theory of emergence.

Lubana et al. (ICLR 2025, arXiv 2408.12578) model a concept class as a
bipartite graph between its entities E_c and properties K_c, each pair present
independently with probability p. A giant connected component appears at

    p_c = 1 / sqrt(|E_c| |K_c|)

(the bipartite Erdos-Renyi criticality: mean degrees p|K_c| and p|E_c| whose
product crosses 1). If a model generalises class membership once the pairs it
has observed percolate, it needs about |E_c| |K_c| p_c = sqrt(|E_c| |K_c|)
distinct observed pairs, so the data at emergence scales as
D* ~ sqrt(|E| |K|).

Everything here is numpy, vectorised, seeded by an explicit generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def critical_density(n_entities: int, n_properties: int) -> float:
    """Theoretical critical edge density p_c = 1 / sqrt(|E_c| |K_c|)."""
    return 1.0 / np.sqrt(n_entities * n_properties)


def predicted_critical_pairs(n_entities: int, n_properties: int) -> float:
    """Observed pairs at criticality, |E_c| |K_c| p_c = sqrt(|E_c| |K_c|)."""
    return float(np.sqrt(n_entities * n_properties))


def component_labels(n_nodes: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected-component label of every node (the smallest node id in its component).

    Arguments:
        n_nodes: number of nodes, ids 0..n_nodes-1.
        left, right: (n_edges,) endpoints of undirected edges.
    Returns:
        (n_nodes,) int array.
    """
    labels = np.arange(n_nodes)
    if len(left) == 0:
        return labels
    while True:
        # hook each edge's endpoints to the smaller label, then jump pointers to roots
        low = np.minimum(labels[left], labels[right])
        before = labels.copy()
        np.minimum.at(labels, labels[left], low)
        np.minimum.at(labels, labels[right], low)
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            return labels


def sample_bipartite(n_entities: int, n_properties: int, density: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Edges of a random bipartite graph, each of the |E||K| pairs present with probability `density`.

    Node ids: entities 0..E-1, properties E..E+K-1.
    """
    n_edges = rng.binomial(n_entities * n_properties, density)
    return sample_pairs(n_entities, n_properties, n_edges, rng)


def sample_pairs(n_entities: int, n_properties: int, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n_pairs` distinct entity-property pairs chosen uniformly (node ids as in `sample_bipartite`)."""
    pairs = rng.choice(n_entities * n_properties, size=n_pairs, replace=False)
    entity, prop = np.divmod(pairs, n_properties)
    return entity, n_entities + prop


def component_sizes(n_entities: int, n_properties: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Sizes of all connected components, largest first."""
    labels = component_labels(n_entities + n_properties, left, right)
    return np.sort(np.bincount(labels))[::-1]


@dataclass
class PercolationCurve:
    """Largest- and second-largest-component fractions against a control variable, per trial."""

    control: np.ndarray  # (points,) densities, or numbers of observed pairs
    largest_trials: np.ndarray  # (points, trials) fraction of nodes in the largest component
    second_trials: np.ndarray  # (points, trials) fraction in the second largest (peaks at criticality)

    @property
    def largest(self) -> np.ndarray:
        return self.largest_trials.mean(1)

    @property
    def largest_std(self) -> np.ndarray:
        return self.largest_trials.std(1)

    @property
    def second(self) -> np.ndarray:
        return self.second_trials.mean(1)

    def critical_point(self, trials: np.ndarray | None = None) -> float:
        """Finite-size estimate of the transition: where the mean second-largest component peaks.

        `trials` picks (with repetition) the trials averaged, for bootstrap intervals.
        """
        second = self.second_trials if trials is None else self.second_trials[:, trials]
        return float(self.control[int(np.argmax(second.mean(1)))])


def percolation_curve(
    n_entities: int, n_properties: int, control: np.ndarray, by: str = "density", trials: int = 20, seed: int = 0
) -> PercolationCurve:
    """Simulate the class graph over `control` densities (by="density") or pair counts (by="pairs")."""
    if by not in ("density", "pairs"):
        raise ValueError(f"by must be 'density' or 'pairs', got {by!r}")
    rng = np.random.default_rng(seed)
    n = n_entities + n_properties
    control = np.asarray(control)
    largest = np.zeros((len(control), trials))
    second = np.zeros((len(control), trials))
    for i, value in enumerate(control):
        for t in range(trials):
            if by == "density":
                left, right = sample_bipartite(n_entities, n_properties, float(value), rng)
            else:
                left, right = sample_pairs(n_entities, n_properties, int(value), rng)
            sizes = component_sizes(n_entities, n_properties, left, right)
            largest[i, t] = sizes[0] / n
            second[i, t] = (sizes[1] if len(sizes) > 1 else 0) / n
    return PercolationCurve(control, largest, second)


def fit_power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares fit of log y = a + b log x; returns (exponent b, prefactor e^a)."""
    slope, intercept = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(slope), float(np.exp(intercept))
