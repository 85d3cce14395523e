"""A compiled E-step for designs of products, that runs without the GIL (numba ``nogil``), where numba is installed.

The Gaussian moment design (full/tied at small d) and the diagonal design
(diag/spherical) share one shape: a row ``y = x - c`` becomes
``[y_i y_j for the design's pairs (i, j), y, 1]`` and every log-density of a
row is that vector times a (width, K) coefficient matrix; the statistics are
``sum_i r_ik phi_i``. Written with numpy, a panel of rows costs two dozen
calls whose fixed parts hold the GIL (5-15% of an E-step thread at d=16, K=8:
it capped 16 threads at 5-7x), and the panels had to be long (several MiB)
for that share to stay small, longer than a core's cache.

:func:`design_estep` does a whole chunk in one call that releases the GIL:
tiles of rows sized to half the core's L2 cache (read from the machine), the
design of a tile, its log-densities (one GEMM), the in-place log-sum-exp and
the statistics (one GEMM), summed in float64. The same arithmetic as the
numpy kernels, grouped in other tiles: equal to round-off.

numba is optional (``pip install dask-em[fast]``); without it, or with
``DASK_EM_NOGIL=0`` in the environment, the numpy kernels run.
"""

from __future__ import annotations

import functools
import os

import numpy as np

try:  # optional: the numpy kernels run without it
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

# exp() of anything below this is floored (see dask_em.family.responsibilities).
_LOG_RESP_FLOOR = -600.0
# Where the machine does not say (some virtual machines report no cache sizes).
_DEFAULT_L2_BYTES = 2**20


def enabled() -> bool:
    """Whether the compiled kernel runs: numba is importable and ``DASK_EM_NOGIL`` is not ``0``."""
    return numba is not None and os.environ.get("DASK_EM_NOGIL", "1") != "0"


@functools.lru_cache(maxsize=None)
def l2_cache_bytes() -> int:
    """The L2 cache of one core, as the operating system reports it (a default of 1 MiB where it does not)."""
    try:
        size = os.sysconf("SC_LEVEL2_CACHE_SIZE")
    except (ValueError, OSError, AttributeError):
        size = 0
    if size <= 0:
        try:
            with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as fh:
                text = fh.read().strip().upper()
            size = int(text.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        except (OSError, ValueError):
            size = 0
    return size if size > 0 else _DEFAULT_L2_BYTES


def tile_rows(width: int, itemsize: int) -> int:
    """Rows per tile: the tile's design fills half of a core's L2 cache; a power of two, 64 to 4096."""
    rows = l2_cache_bytes() // (2 * width * itemsize)
    return 1 << max(6, min(12, int(rows).bit_length() - 1))


def _design_estep(x, w, shift, pi, pj, coef, tile, entropy, stop_at_nan, stats, scalars):
    """The compiled body (see :func:`design_estep`); returns False when it stopped at a NaN log-likelihood.

    Feature-major tiles (one column per row, as the numpy kernels lay them out),
    so every loop below runs along the rows of a tile and vectorizes.
    """
    n, d = x.shape
    q = pi.shape[0]
    k, width = coef.shape
    dtype = coef.dtype
    phi = np.empty((width, tile), dtype=dtype)
    top = np.empty(tile, dtype=dtype)
    total = np.empty(tile, dtype=dtype)
    loglik, wsum, ent = 0.0, 0.0, 0.0
    for lo in range(0, n, tile):
        t = min(tile, n - lo)
        for a in range(d):
            c = shift[a]
            for r in range(t):
                phi[q + a, r] = x[lo + r, a] - c
        for m in range(q):
            yi, yj = q + pi[m], q + pj[m]
            for r in range(t):
                phi[m, r] = phi[yi, r] * phi[yj, r]
        for r in range(t):
            phi[width - 1, r] = 1.0
        block = phi[:, :t]
        lp = np.dot(coef, np.ascontiguousarray(block))  # (K, t) log-densities (plus log weights)
        for r in range(t):
            top[r] = lp[0, r]
        for j in range(1, k):
            for r in range(t):
                if lp[j, r] > top[r]:
                    top[r] = lp[j, r]
        for r in range(t):
            total[r] = 0.0
        for j in range(k):
            for r in range(t):
                v = lp[j, r] - top[r]
                e = np.exp(max(v, _LOG_RESP_FLOOR))
                lp[j, r] = e
                total[r] += e
        tile_ll, tile_w, tile_h = 0.0, 0.0, 0.0
        for r in range(t):
            weight = 1.0 if w.shape[0] == 0 else w[lo + r]
            tile_ll += weight * (np.log(total[r]) + top[r])
            tile_w += weight
            total[r] = weight / total[r]
        if stop_at_nan and np.isnan(tile_ll):
            return False
        if entropy:
            for j in range(k):
                for r in range(t):
                    rj = lp[j, r] / (total[r] * (1.0 if w.shape[0] == 0 else 1.0 / w[lo + r]))
                    if rj > 0:
                        tile_h += (1.0 if w.shape[0] == 0 else w[lo + r]) * rj * np.log(rj)
        for j in range(k):
            for r in range(t):
                lp[j, r] *= total[r]
        loglik += tile_ll
        wsum += tile_w
        ent += tile_h
        part = np.dot(lp, np.ascontiguousarray(block.T))  # (K, width) statistics of the tile
        for j in range(k):
            for m in range(width):
                stats[j, m] += part[j, m]
    scalars[0] += loglik
    scalars[1] += wsum
    scalars[2] += ent
    return True


_KERNEL = numba.njit(nogil=True, cache=True)(_design_estep) if numba is not None else None


def design_estep(x, w, shift, pairs, coef, acc: dict, entropy: bool, stop_at_nan: bool) -> bool:
    """One chunk's E-step of one restart on a product design, in one call that releases the GIL.

    ``x`` (n, d) rows; ``w`` (n,) row weights or None; ``shift`` (d,) the
    center; ``pairs`` (i, j) index arrays of the design's products; ``coef``
    (K, width) in the compute dtype, the design's coefficients (log weights
    included). Adds ``loglik``, ``wsum``, ``entropy`` and ``moments`` (K, width)
    into ``acc``. Returns False, with ``acc`` partly updated, when
    ``stop_at_nan`` and a tile's log-likelihood is NaN.
    """
    dtype = coef.dtype
    coef = np.ascontiguousarray(coef)
    weights = np.empty(0, dtype=np.float64) if w is None else np.ascontiguousarray(w, dtype=np.float64)
    rows = x if x.dtype == np.float64 or x.dtype == dtype else x.astype(np.float64)
    scalars = np.zeros(3)
    tile = tile_rows(coef.shape[1], dtype.itemsize)
    done = _KERNEL(np.ascontiguousarray(rows), weights, np.asarray(shift, dtype=np.float64), pairs[0], pairs[1], coef, tile,
                   bool(entropy), bool(stop_at_nan), acc["moments"], scalars)
    acc["loglik"] += float(scalars[0])
    acc["wsum"] += float(scalars[1])
    acc["entropy"] += float(scalars[2])
    return bool(done)
