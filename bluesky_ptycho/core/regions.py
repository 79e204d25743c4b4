"""Splitting a scan into regions for a reconstruction spread over several ranks.

As the SSRF nanoprobe's distributed system does (Zhang, Jiang, He & Li 2024): the
scan positions are clustered with k-means into compact regions of about
equal size, and each region takes in the positions of its neighbours
within an overlap distance, so the regions' objects share pixels that the
merge can tie together. Pure NumPy on host positions (they are small).
"""

from __future__ import annotations

import numpy as np


def kmeans(points: np.ndarray, k: int, iterations: int = 50, seed: int = 0) -> np.ndarray:
    """Labels ``0..k-1`` of *points* (N, 2) by Lloyd's k-means (k-means++ start).

    Deterministic for a given *seed*; every label is used (an empty cluster
    takes the point farthest from its centre).
    """
    p = np.asarray(points, np.float64).reshape(-1, 2)
    n = len(p)
    if not 1 <= k <= n:
        raise ValueError(f"cannot split {n} positions into {k} regions: use 1 to {n} ranks")
    rng = np.random.default_rng(seed)
    centres = [p[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min([((p - c) ** 2).sum(axis=1) for c in centres], axis=0)
        centres.append(p[rng.choice(n, p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(n)])
    c = np.array(centres)
    labels = np.zeros(n, np.int64)
    for _ in range(iterations):
        d2 = ((p[:, None, :] - c[None]) ** 2).sum(axis=2)
        new = d2.argmin(axis=1)
        for j in range(k):
            if not (new == j).any():  # an empty cluster takes the worst-placed point
                new[d2[np.arange(n), new].argmax()] = j
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        c = np.array([p[labels == j].mean(axis=0) for j in range(k)])
    return labels


def split_regions(positions: np.ndarray, k: int, overlap: float, seed: int = 0) -> list[np.ndarray]:
    """Indices of the positions each of *k* regions reconstructs.

    Region *j* holds its k-means cluster plus every position within
    *overlap* (same unit as *positions*) of one of the cluster's positions.
    """
    p = np.asarray(positions, np.float64).reshape(-1, 2)
    if overlap < 0:
        raise ValueError(f"overlap={overlap} must be >= 0")
    labels = kmeans(p, k, seed=seed)
    out = []
    for j in range(k):
        own = p[labels == j]
        d2 = ((p[:, None, :] - own[None]) ** 2).sum(axis=2).min(axis=1)
        out.append(np.flatnonzero((labels == j) | (d2 <= overlap**2)))
    return out
