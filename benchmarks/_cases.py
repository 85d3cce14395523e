"""Generated hard cases shared by the optima and passes benchmarks (3,000 rows, 3 features)."""

from __future__ import annotations

import numpy as np


def draw(rng: np.random.Generator, means, covs, weights, n: int) -> np.ndarray:
    """``n`` rows of a Gaussian mixture, drawn component by component."""
    labels = rng.choice(len(weights), size=n, p=weights)
    return np.vstack([rng.multivariate_normal(means[k], covs[k], (labels == k).sum()) for k in range(len(weights))])


def hard_cases(rng: np.random.Generator, stretched: str, smallest: float, d: int = 3, n: int = 3000) -> dict:
    """Overlapping components, unequal weights, and rotated covariances with eigenvalues (10, 0.3, ``smallest``)."""
    out = {
        "overlapping": draw(rng, rng.normal(scale=1.2, size=(5, d)), [np.eye(d)] * 5, np.full(5, 0.2), n),
        "unequal-weights": draw(rng, rng.normal(scale=4, size=(5, d)), [np.eye(d) * s for s in (1, 0.5, 2, 1, 0.3)],
                                np.array([0.8, 0.1, 0.05, 0.03, 0.02]), n),
    }
    covs = []
    for _ in range(4):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        covs.append(q @ np.diag([10.0, 0.3, smallest]) @ q.T)
    out[stretched] = draw(rng, rng.normal(scale=2, size=(4, d)), covs, np.full(4, 0.25), n)
    return out
