"""Write the data sets the mclust fixture is computed on (run before make_fixture.R).

iris and wine come from scikit-learn; three generated sets of 3,000 rows are drawn
here with fixed seeds. mclust's own sets (diabetes, banknote, faithful) are written
by make_fixture.R. The CSVs are committed, so the tests read exactly what R read.

    python tests/data/mclust/make_data.py && Rscript tests/data/mclust/make_fixture.R
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris, load_wine

HERE = Path(__file__).parent


def _rotation(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def generated(seed: int, d: int, k: int, n: int = 3000) -> np.ndarray:
    """A K-component mixture with unequal volumes, shapes and orientations."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 4.0))
    counts = rng.multinomial(n, weights)
    rows = []
    for j, count in enumerate(counts):
        mean = rng.normal(0.0, 4.0, d)
        scales = rng.uniform(0.5, 2.0, d)
        rot = _rotation(rng, d)
        rows.append(mean + (rng.standard_normal((count, d)) * scales) @ rot.T)
    x = np.vstack(rows)
    return x[rng.permutation(n)]


def main() -> None:
    sets = {
        "iris": load_iris().data,
        "wine": load_wine().data,
        "gen2d": generated(1, 2, 3),
        "gen3d": generated(2, 3, 4),
        "gen5d": generated(3, 5, 3),
    }
    for name, x in sets.items():
        np.savetxt(HERE / f"{name}.csv.gz", x, delimiter=",", fmt="%.10g")


if __name__ == "__main__":
    main()
