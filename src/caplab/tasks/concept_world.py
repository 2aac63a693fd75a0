"""The type-constraint graph of the concept language: which values each entity allows.

Inside concept class c, the entities E_c and the values K_c (the paper's
"properties") form a bipartite graph; an edge (e, v) means sentences may say
that e has value v. The percolation model of emergence (Lubana et al., ICLR
2025) assumes this graph is random with edge density p and predicts a giant
component above p_c = 1 / sqrt(|E_c| |K_c|). Two constructions:

- `balanced` (default): a uniformly random bipartite graph with
  round(p |E_c| |K_c|) edges whose entity degrees differ by at most one, and
  whose value degrees differ by at most one (a configuration model; repeated
  edges are removed by random swaps). No entity is left without a value and,
  where p |E_c| >= 1, no value without an entity.
- `rolled` (the paper's code): per property, a random base set of
  round(p x values) values, rolled by the entity's key (its index in the
  class). When round(p x values) = 1 every entity allows one value per
  property and the class splits into `values` disconnected pieces: the
  theory's premise is missing, which `graph_report` shows.

Everything is numpy and seeded by the world's generator.
"""

from __future__ import annotations

import numpy as np

from caplab.analysis.percolation import component_labels, critical_density


def _spread(total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n non-negative integers summing to `total` that differ by at most one, the larger ones at random places."""
    degrees = np.full(n, total // n)
    degrees[rng.permutation(n)[: total % n]] += 1
    return degrees


def balanced_bipartite(n_left: int, n_right: int, n_edges: int, rng: np.random.Generator) -> np.ndarray:
    """A random simple bipartite graph with `n_edges` edges and near-equal degrees on both sides.

    Returns the (n_left, n_right) boolean adjacency matrix. Dense requests are
    built as the complement of a sparse one, so the swaps always converge.
    """
    if not 0 <= n_edges <= n_left * n_right:
        raise ValueError(f"{n_edges} edges do not fit {n_left} x {n_right} nodes")
    if 2 * n_edges > n_left * n_right:
        return ~balanced_bipartite(n_left, n_right, n_left * n_right - n_edges, rng)
    left = np.repeat(np.arange(n_left), _spread(n_edges, n_left, rng))
    right = np.repeat(np.arange(n_right), _spread(n_edges, n_right, rng))
    rng.shuffle(right)
    for _ in range(10_000):
        key = left * n_right + right
        order = np.argsort(key, kind="stable")
        repeated = order[1:][key[order][1:] == key[order][:-1]]  # second and later copies of an edge
        if len(repeated) == 0:
            break
        for i, j in zip(repeated, rng.integers(len(right), size=len(repeated))):  # one swap at a time keeps the degrees
            right[i], right[j] = right[j], right[i]
    else:  # pragma: no cover - needs an adversarial degree sequence
        raise RuntimeError("could not draw a simple balanced bipartite graph")
    adjacency = np.zeros((n_left, n_right), bool)
    adjacency[left, right] = True
    return adjacency


def rolled_graph(n_entities: int, n_properties: int, n_values: int, density: float, rng: np.random.Generator) -> np.ndarray:
    """The paper's construction: (n_entities, n_properties * n_values) adjacency, base sets rolled by the entity key."""
    k = max(1, int(round(density * n_values)))
    adjacency = np.zeros((n_entities, n_properties, n_values), bool)
    keys = np.arange(n_entities)[:, None]
    for prop in range(n_properties):
        base = rng.choice(n_values, k, replace=False)
        adjacency[keys, prop, (base[None, :] + keys) % n_values] = True
    return adjacency.reshape(n_entities, n_properties * n_values)


def random_subgraph(adjacency: np.ndarray, n_edges: int, rng: np.random.Generator) -> np.ndarray:
    """`n_edges` edges of `adjacency` chosen uniformly without replacement (the pairs a corpus shows)."""
    edges = np.flatnonzero(adjacency)
    if n_edges > len(edges):
        raise ValueError(f"{n_edges} pairs requested but the class allows only {len(edges)}")
    out = np.zeros(adjacency.size, bool)
    out[rng.choice(edges, n_edges, replace=False)] = True
    return out.reshape(adjacency.shape)


def graph_report(adjacency: np.ndarray) -> dict:
    """Components of one class's bipartite graph, its density and the critical density p_c.

    Returns components (counting isolated nodes), the largest component's
    fraction of all nodes, isolated entities and values, edges, density and
    p_c = 1 / sqrt(|E_c| |K_c|).
    """
    n_left, n_right = adjacency.shape
    left, right = np.nonzero(adjacency)
    labels = component_labels(n_left + n_right, left, n_left + right)
    sizes = np.bincount(labels)
    sizes = sizes[sizes > 0]
    return {
        "entities": n_left, "values": n_right, "edges": int(len(left)),
        "density": float(len(left) / (n_left * n_right)), "critical_density": float(critical_density(n_left, n_right)),
        "components": int(len(sizes)), "largest_component_fraction": float(sizes.max() / (n_left + n_right)),
        "isolated_entities": int((~adjacency.any(1)).sum()), "isolated_values": int((~adjacency.any(0)).sum()),
    }
