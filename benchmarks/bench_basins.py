"""Which fixed point accelerated EM reaches: plain EM against SQUAREM from several starts.

For a few multimodal cases of ``bench_passes.py`` and ``random_state`` 0..N-1
(``n_init=1``, both run to tol 1e-10 by the change rule), count the starts where
SQUAREM's final bound is within 1e-6 nats/row of plain EM's, above it, or below it.
Extrapolation changes the path, so it can change which local maximum a start
reaches, in either direction.

    python benchmarks/bench_basins.py --starts 8
"""

from __future__ import annotations

import argparse
import logging
import warnings

from bench_passes import gaussian_data, make

CASES = [("breast_cancer", "tied", 6), ("wine", "diag", 6), ("iris", "full", 4), ("digits-pca10", "spherical", 6)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=8)
    args = parser.parse_args(argv)
    logging.getLogger("dask_em").setLevel(logging.ERROR)
    data = gaussian_data()
    print(f"final bound of SQUAREM against plain EM's, same start, {args.starts} starts (random_state 0..)")
    print(f"{'data':<16} {'model':<14} {'same':>5} {'higher':>7} {'lower':>6}  gaps (plain - squarem, nats/row)")
    for name, cov, k in CASES:
        same = higher = lower = 0
        gaps = []
        for seed in range(args.starts):
            fits = []
            for kw in ({}, {"accelerate": "squarem"}):
                m = make("gaussian", cov, k, tol=1e-10, max_iter=3000, stopping="change", **kw)
                m.set_params(random_state=seed)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m.fit(data[name])
                fits.append(m.lower_bound_)
            gap = fits[0] - fits[1]
            gaps.append(gap)
            same += abs(gap) <= 1e-6
            higher += gap < -1e-6
            lower += gap > 1e-6
        print(f"{name:<16} {cov + f' K={k}':<14} {same:>5} {higher:>7} {lower:>6}  "
              + " ".join(f"{g:.1e}" for g in gaps), flush=True)


if __name__ == "__main__":
    main()
