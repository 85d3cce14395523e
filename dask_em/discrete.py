"""Bernoulli, Poisson and categorical families (their estimators: :mod:`dask_em.discrete_mixture`).

Each family is a frozen dataclass of pure functions (see :mod:`dask_em.family`);
rows arrive as stored (bool, uint8, int32, ...) and are turned into float64
one panel of rows at a time (``prepare_rows``), never the whole dataset.

Formulas (``r_ik`` the responsibility of component k for row i, times the row's
weight; ``n_k = sum_i r_ik``; ``a`` the ``pseudo_count``):

* Bernoulli: ``log p(x | k) = sum_j x_j log p_kj + (1 - x_j) log(1 - p_kj)``;
  M-step ``p_kj = (sum_i r_ik x_ij + a) / (n_k + 2a)`` (the mode of a
  Beta(1 + a, 1 + a) posterior, which keeps p off 0 and 1).
* Poisson: ``log p(x | k) = sum_j x_j log l_kj - l_kj - log(x_j!)``;
  M-step ``l_kj = (sum_i r_ik x_ij + a) / n_k`` (a Gamma(1 + a, 0) prior, which
  keeps the rates positive).
* Categorical: ``log p(x | k) = sum_j log P_kj[x_j]``; M-step
  ``P_kjc = (sum_i r_ik [x_ij = c] + a) / (n_k + a C_j)`` (a symmetric
  Dirichlet(1 + a) prior).

The hierarchical start (``init_params="hierarchical"``) merges the two clusters whose
union loses the least classification log-likelihood at its maximum: Bernoulli the
increase of ``sum_k n_k H(p_k)`` (entropies weighted by cluster size), categorical the
same per feature over its categories, Poisson the loss of the pooled rates'
log-likelihood (``*_merge_term``, :func:`dask_em.hierarchical.term_merges`).

With ``pseudo_count=0`` these are plain maximum-likelihood EM and the lower
bound (the mean log-likelihood) never falls; with a pseudo-count EM climbs the
posterior, whose difference from the likelihood is ``O(a / n_k)`` per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import gammaln, xlogy

from ._discrete_kernel import DesignFamily, buffer, cached, panel_rows
from ._namespace import device, dtype_kind, dtype_name, like, namespace
from .family import MASS_EPS, Family, all_missing_row, fill_columns, responsibilities

# Probabilities are kept inside [_TINY, 1 - 2**-53] so that 0 * log(0) never
# enters a GEMM as 0 * -inf = NaN; only a pseudo_count of 0 can reach the ends.
_TINY = np.finfo(np.float64).tiny
_ONE_MINUS = 1.0 - 2.0**-53


def _valid_on_device(family, x, kind: str, valid) -> bool:
    """:meth:`check_rows`' verdict on a device chunk, computed there: ``valid(xp)`` the valid values
    (with missing values marginalised, NaN is valid, but not a row of nothing but NaN)."""
    xp = namespace(x)
    ok = valid(xp)
    if family.missing != "error" and kind == "f":
        nan = xp.isnan(x)
        empty = xp.any(xp.all(nan, axis=1)) if x.shape[1] else xp.asarray(False, device=device(x))
        return bool(xp.all(ok | nan) & ~empty)
    return bool(xp.all(ok))


def _first_bad(bad: np.ndarray) -> tuple[int, int] | None:
    if not bad.any():
        return None
    row = int(np.flatnonzero(bad.any(1))[0])
    return row, int(np.flatnonzero(bad[row])[0])


def _as_float(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(np.float64, copy=False)


def _holes(x: np.ndarray) -> np.ndarray | None:
    """The (rows, d) float mask of missing values (NaN) of float rows, or None when none is missing."""
    if x.dtype.kind != "f":
        return None
    miss = np.isnan(x)
    return miss.astype(np.float64) if miss.any() else None


def _split(xp):
    """(values, missing mask or None) of what ``prepare_rows`` made in missing='marginalize' mode."""
    if isinstance(xp, dict):
        return xp["x"], xp.get("miss")
    return xp, None


def _posterior(family: Family, x: np.ndarray, params: dict, context) -> np.ndarray:
    """(K, rows) responsibilities of rows under a fitted model (their observed values)."""
    wlp = np.ascontiguousarray(family.weighted_log_prob(x, params, context).T)
    return responsibilities(wlp)[1]


def _fill_expected(x: np.ndarray, expected: np.ndarray) -> np.ndarray:
    out = np.array(x, dtype=np.float64)
    miss = np.isnan(out)
    out[miss] = expected[miss]
    return out


def _flagged(what: str, value) -> str:
    """``what`` led by the phrase scikit-learn's tools look for when ``value`` is NaN, inf or negative."""
    if isinstance(value, float) and not np.isfinite(value):
        return f"X contains NaN or infinity: {what}"
    if value < 0:
        return f"Negative values in data: {what}"
    return what


# The hierarchical start's criteria (Family.merge_criterion): minus a cluster's classification
# log-likelihood at its maximum, from its row count n (m,) and its row sums s (m, f) of
# init_features, up to terms additive in rows (they cancel in a merge's cost).


_XLOGX_TABLE = 1 << 16


@lru_cache(maxsize=1)
def _xlogx_table() -> np.ndarray:
    v = np.arange(_XLOGX_TABLE, dtype=np.float64)
    return xlogy(v, v)


def _xlogx(s: np.ndarray) -> np.ndarray:
    """``s log s`` (0 at 0): a table look-up for whole counts (the usual case: three times faster than log)."""
    whole = s.astype(np.intp)
    if s.size and whole.min() >= 0 and whole.max() < _XLOGX_TABLE and np.array_equal(whole, s):
        return _xlogx_table()[whole]
    return xlogy(s, s)


def bernoulli_merge_term(n: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``n sum_j H(s_j / n)``: the cluster's size-weighted entropy of its 0/1 features."""
    n = np.asarray(n, dtype=np.float64)
    off = np.maximum(n[:, None] - s, 0.0)
    # sum_j s_j log(s_j / n) + (n - s_j) log((n - s_j) / n), with s_j + (n - s_j) = n
    return s.shape[1] * n * np.log(n) - (_xlogx(s).sum(1) + _xlogx(off).sum(1))


def categorical_merge_term(n: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``n sum_j H(P_j)`` from the one-hot sums: every feature's category counts sum to n."""
    n = np.asarray(n, dtype=np.float64)
    return s.sum(1) * np.log(n) - _xlogx(s).sum(1)


def poisson_merge_term(n: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``-sum_j s_j log(s_j / n)``: minus the log-likelihood at the pooled rates (less sum s_j and log x!)."""
    n = np.asarray(n, dtype=np.float64)
    return s.sum(1) * np.log(n) - _xlogx(s).sum(1)


def _check_numeric(name: str, dtype, fix: str) -> None:
    if np.dtype(dtype).kind not in "biuf":
        raise TypeError(f"{name} data must be numeric (bool, int or float); received dtype {np.dtype(dtype)}. {fix}")


# ---------------------------------------------------------------------------
# Bernoulli
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BernoulliFamily(DesignFamily):
    """Independent binary features per component; parameters ``probabilities`` (K, d).

    Parameters
    ----------
    pseudo_count : float, default=1e-3
        Strength of the conjugate prior (Beta, Gamma or Dirichlet) that keeps
        the probabilities of the M-step off the boundary.
    missing : {"error", "marginalize"}, default="error"
        How NaN is treated: refused, or marginalised by EM (missing at random).
    """

    pseudo_count: float = 1e-3
    missing: str = "error"
    name = "bernoulli"

    def check_dtype(self, dtype, n_features):
        _check_numeric("Bernoulli", dtype, "Store 0/1 values as bool or uint8.")

    supports_missing = True

    def rows_valid(self, x):
        kind = dtype_kind(x)
        return kind == "b" or _valid_on_device(self, x, kind, lambda xp: (x == 0) | (x == 1))

    def check_rows(self, x):
        if x.dtype.kind == "b":
            return None
        bad = (x != 0) & (x != 1)
        if self.missing != "error" and x.dtype.kind == "f":
            bad &= ~np.isnan(x)
            if not bad.any():
                return all_missing_row(x)
        found = _first_bad(bad)
        if found is None:
            return None
        row, col = found
        value = x[row, col].item()
        return row, _flagged(f"a Bernoulli mixture takes only 0 and 1, but X holds {value!r} (feature {col})", value), (
            "Binarise the data first, e.g. (X > 0).astype('u1'), or fit counts with PoissonMixture."
        )

    def prepare_rows(self, x):
        if self.missing != "error":
            miss = _holes(np.asarray(x))
            if miss is not None:  # missing values drop out of the product: zeros, and a mask
                return {"x": np.nan_to_num(_as_float(x), nan=0.0), "miss": miss}
        return _as_float(x)

    def log_prob(self, xp, params):
        xp, miss = _split(xp)
        p = np.clip(params["probabilities"], _TINY, _ONE_MINUS)
        log_q = np.log1p(-p)
        # (K, rows) products, returned transposed: the engine works component-major.
        out = (np.log(p) - log_q) @ xp.T
        if miss is None:
            out += log_q.sum(1)[:, None]
        else:
            out += log_q @ (1.0 - miss).T
        return out.T

    def chunk_stats(self, xp, rw, params):
        xp, miss = _split(xp)
        ones = rw.T @ xp
        if miss is not None:  # E[x_j | k] = p_kj for a missing x_j
            ones += (rw.T @ miss) * params["probabilities"]
        return {"ones": ones}

    # The E-step's design (dask_em._discrete_kernel): the row itself; A = log p - log(1 - p),
    # c = sum_j log(1 - p_j).
    def design_width(self, n_features):
        return n_features

    def fill_design(self, x, z):
        np.copyto(z[:, :-1], x)

    def compiled_design(self, n_features):
        # The design [x, 1]; a subclass with its own design or row constant keeps the numpy kernel.
        own = type(self).fill_design is BernoulliFamily.fill_design
        return "copy" if own and type(self).design_constant is BernoulliFamily.design_constant else None

    def device_design(self, xp, x):
        return xp.astype(x, xp.float64)

    def coefficients(self, params):
        p = np.clip(params["probabilities"], _TINY, _ONE_MINUS)
        log_q = np.log1p(-p)
        return np.log(p) - log_q, log_q.sum(1)

    def stats_from(self, sums, params):
        return {"ones": sums}

    def impute(self, x, params, context):
        resp = _posterior(self, x, params, context)
        return _fill_expected(x, resp.T @ params["probabilities"])

    def invalid_stats(self, stats, nk):
        ones = stats["ones"]
        if (ones < 0).any() or (ones > nk[:, None]).any():
            return "a probability outside [0, 1]"
        return None

    def m_step(self, stats, nk, params):
        a = self.pseudo_count
        p = (stats["ones"] + a) / (nk[:, None] + MASS_EPS + 2 * a)
        return {"probabilities": np.clip(p, 0.0, 1.0)}

    def n_parameters(self, params):
        return int(params["probabilities"].size)

    def merge_criterion(self):
        return bernoulli_merge_term

    def sample(self, params, labels, context, rng):
        p = params["probabilities"][labels]
        return (rng.random(p.shape) < p).astype(np.uint8)

    def to_public(self, params, context):
        return {"probabilities_": params["probabilities"]}


# ---------------------------------------------------------------------------
# Poisson
# ---------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _log_factorials(size: int) -> np.ndarray:
    return gammaln(np.arange(size, dtype=np.float64) + 1.0)


@lru_cache(maxsize=1)
def _pair_log_factorials() -> np.ndarray:
    """log(a!) + log(b!) at index a + 256 b (symmetric: either byte order reads the same)."""
    one = _log_factorials(256)
    return (one[:, None] + one[None, :]).reshape(-1)


def _small_counts(x: np.ndarray) -> int | None:
    """The size of a log-factorial table covering ``x`` (non-negative ints below 2**16), else None."""
    if x.dtype.kind in "bu" or (x.dtype.kind == "i" and x.size and x.min() >= 0):
        top = int(x.max()) if x.size else 0
        if top < 1 << 16:
            return 1 << max(8, top.bit_length())  # few distinct tables, each cached
    return None


@dataclass(frozen=True)
class PoissonFamily(DesignFamily):
    """Independent counts per component; parameters ``rates`` (K, d).

    Parameters
    ----------
    pseudo_count : float, default=1e-3
        Strength of the conjugate prior (Beta, Gamma or Dirichlet) that keeps
        the rates of the M-step off the boundary.
    missing : {"error", "marginalize"}, default="error"
        How NaN is treated: refused, or marginalised by EM (missing at random).
    """

    pseudo_count: float = 1e-3
    missing: str = "error"
    name = "poisson"

    def check_dtype(self, dtype, n_features):
        _check_numeric("Poisson", dtype, "Store counts as an unsigned or signed integer type.")

    supports_missing = True

    def rows_valid(self, x):
        kind = dtype_kind(x)
        if kind in "bu":
            return True
        if kind == "i":
            return _valid_on_device(self, x, kind, lambda xp: x >= 0)
        return _valid_on_device(self, x, kind, lambda xp: (x >= 0) & (x == xp.floor(x)) & xp.isfinite(x))

    def check_rows(self, x):
        kind = x.dtype.kind
        if kind in "bu":
            return None
        bad = x < 0 if kind == "i" else ~(x >= 0) | (x != np.floor(x)) | ~np.isfinite(x)
        if self.missing != "error" and kind == "f":
            bad &= ~np.isnan(x)
            if not bad.any():
                return all_missing_row(x)
        found = _first_bad(bad)
        if found is None:
            return None
        row, col = found
        value = x[row, col].item()
        return row, _flagged(
            f"a Poisson mixture takes non-negative integer counts, but X holds {value!r} (feature {col})", value
        ), "Round and clip the counts first, e.g. X.clip(0).round(), or fit real values with GaussianMixture."

    def prepare_rows(self, x):
        x = np.asarray(x)
        if self.missing != "error":
            miss = _holes(x)
            if miss is not None:  # missing counts drop out: zeros (log 0! = 0), and a mask
                x0 = np.nan_to_num(_as_float(x), nan=0.0)
                return {"x": x0, "counts": x0, "table": None, "miss": miss}
        return {"x": _as_float(x), "counts": x, "table": _small_counts(x)}

    def log_prob(self, xp, params):
        # sum_j x_j log l_kj - l_kj; the -log(x_j!) terms are the same for every
        # component: row_log_constant, which the engine adds to the likelihood.
        rates = np.maximum(params["rates"], _TINY)
        out = np.log(rates) @ xp["x"].T
        if xp.get("miss") is None:
            out -= rates.sum(1)[:, None]
        else:
            out -= rates @ (1.0 - xp["miss"]).T
        return out.T

    # The E-step's design (dask_em._discrete_kernel): the counts; A = log l, c = -sum_j l_j,
    # and the -log(x!) terms as the design constant.
    def design_width(self, n_features):
        return n_features

    def fill_design(self, x, z):
        np.copyto(z[:, :-1], x)

    def device_design(self, xp, x):
        return xp.astype(x, xp.float64)

    def device_row_constant(self, xp, x, z):
        """-sum_j log(x_j!) per row, by a table look-up on the device (counts below 2**16; else the host)."""
        if z.shape[0] == 0:
            return 0.0
        top = int(xp.max(z))
        if top >= 1 << 16:
            return None
        size = 1 << max(8, top.bit_length())
        table = like(_log_factorials(size), z)
        counts = xp.reshape(xp.astype(z, xp.int64), (-1,))
        logs = xp.reshape(xp.take(table, counts), z.shape)
        return -xp.sum(logs, axis=1)

    def coefficients(self, params):
        rates = np.maximum(params["rates"], _TINY)
        return np.log(rates), -rates.sum(1)

    def stats_from(self, sums, params):
        return {"sums": sums}

    def design_constant(self, x, z, w):
        size = _small_counts(x)
        if size is None:
            rows = gammaln(z[:, :-1] + 1.0).sum(1)
            return -float(rows.sum() if w is None else np.dot(w, rows))
        # A table look-up (np.take releases the GIL; np.bincount's min/max pass holds it).
        if x.dtype.itemsize == 1 and x.shape[1] % 2 == 0 and x.flags.c_contiguous:
            # Two one-byte counts per look-up, read as one uint16 (2.5x faster per panel).
            values, table = x.view(np.uint16), _pair_log_factorials()
        else:
            values, table = x, _log_factorials(size)
        counts = buffer("counts", values.shape, np.intp)
        np.copyto(counts, values)
        logs = buffer("log_factorials", values.shape)
        np.take(table, counts, out=logs, mode="clip")  # in range by construction; "clip" skips the check
        return -float(logs.sum() if w is None else np.dot(w, logs).sum())

    def impute(self, x, params, context):
        resp = _posterior(self, x, params, context)
        return _fill_expected(x, resp.T @ params["rates"])

    def row_log_constant(self, xp):
        size = xp["table"]
        if size is not None:
            return -_log_factorials(size)[xp["counts"]].sum(1)
        return -gammaln(xp["x"] + 1.0).sum(1)

    def total_log_constant(self, xp, w):
        size = xp["table"]
        if w is None and size is not None:
            # sum over every value of log(v!) = sum_v (how often v occurs) log(v!)
            counts = xp["counts"]
            values = counts.view(np.uint8) if counts.dtype.kind == "b" else counts
            return -float(np.bincount(values.ravel(), minlength=size)[:size] @ _log_factorials(size))
        return super().total_log_constant(xp, w)

    def chunk_stats(self, xp, rw, params):
        sums = rw.T @ xp["x"]
        if xp.get("miss") is not None:  # E[x_j | k] = l_kj for a missing x_j
            sums += (rw.T @ xp["miss"]) * params["rates"]
        return {"sums": sums}

    def invalid_stats(self, stats, nk):
        return "a negative rate" if (stats["sums"] < 0).any() else None

    def m_step(self, stats, nk, params):
        return {"rates": (stats["sums"] + self.pseudo_count) / (nk[:, None] + MASS_EPS)}

    def n_parameters(self, params):
        return int(params["rates"].size)

    def merge_criterion(self):
        return poisson_merge_term

    def sample(self, params, labels, context, rng):
        return rng.poisson(params["rates"][labels]).astype(np.int64)

    def to_public(self, params, context):
        return {"rates_": params["rates"]}


# ---------------------------------------------------------------------------
# Categorical
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CategoricalFamily(DesignFamily):
    """Independent categorical codes per component.

    ``n_categories`` is one int for every feature or a tuple, one per feature.
    Parameters: ``probabilities`` (K, sum_j C_j), feature j's categories in
    columns ``offsets[j]:offsets[j + 1]``.

    Parameters
    ----------
    n_categories : int or tuple of int, default=2
        Number of categories of every feature, or of each feature.
    pseudo_count : float, default=1e-3
        Strength of the conjugate prior (Beta, Gamma or Dirichlet) that keeps
        the probabilities of the M-step off the boundary.
    missing : {"error", "marginalize"}, default="error"
        How NaN is treated: refused, or marginalised by EM (missing at random).
    """

    n_categories: int | tuple[int, ...] = 2
    pseudo_count: float = 1e-3
    missing: str = "error"
    name = "categorical"
    panel_rows = 8192  # one-hot panels are sum_j C_j wide: keep them near the cache's size

    def sizes(self, n_features: int) -> np.ndarray:
        if isinstance(self.n_categories, (int, np.integer)):
            return np.full(n_features, int(self.n_categories), dtype=np.int64)
        return np.asarray(self.n_categories, dtype=np.int64)

    def offsets(self, n_features: int) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes(n_features))])

    supports_missing = True

    def check_dtype(self, dtype, n_features):
        if self.missing != "error" and np.dtype(dtype).kind == "f":
            pass  # codes with NaN for the missing ones; check_rows checks they are whole numbers
        elif np.dtype(dtype).kind not in "biu":
            raise TypeError(
                f"categorical codes must be stored as integers; received dtype {dtype}. Convert "
                "them after checking they are whole numbers, e.g. X.astype('i4')."
            )
        if not isinstance(self.n_categories, (int, np.integer)) and len(self.n_categories) != n_features:
            raise ValueError(
                f"n_categories has {len(self.n_categories)} entries but X has {n_features} features; "
                "give one count per feature, or a single int for all."
            )

    def rows_valid(self, x):
        kind = dtype_kind(x)
        if kind not in "iuf":
            return False
        dtype = np.dtype(dtype_name(x.dtype))
        top = np.asarray(self.sizes(x.shape[1]), dtype=np.int64) - 1  # each feature's largest code, in x's dtype
        if kind != "f":  # a code the dtype cannot hold cannot occur: clip (uint64's top is beyond int64's)
            top = np.minimum(top, min(np.iinfo(dtype).max, np.iinfo(np.int64).max))
        top = like(top.astype(dtype), x)
        if kind == "f":
            return _valid_on_device(self, x, kind, lambda xp: (x >= 0) & (x <= top) & (x == xp.floor(x)))
        return _valid_on_device(self, x, kind, lambda xp: (x >= 0) & (x <= top))

    def check_rows(self, x):
        sizes = self.sizes(x.shape[1])
        bad = (x < 0) | (x >= sizes)
        if x.dtype.kind == "f":
            bad |= x != np.floor(x)
            if self.missing != "error":
                bad &= ~np.isnan(x)
                if not bad.any():
                    return all_missing_row(x)
            else:
                bad |= np.isnan(x)
        found = _first_bad(bad)
        if found is None:
            return None
        row, col = found
        value = x[row, col].item()
        return row, _flagged(
            f"feature {col} has {sizes[col]} categories (codes 0..{sizes[col] - 1}), but X holds code {value!r}",
            value,
        ), "Recode the feature, or raise its entry of n_categories."

    def prepare_rows(self, x):
        """The one-hot matrix (rows, sum_j C_j) of the codes, in float64.

        A scatter into zeros: measured faster than a broadcast comparison
        against 0..C-1 (0.17 s against 0.29 s per 2M x 16 codes, C=5).
        """
        x = np.asarray(x)
        n, d = x.shape
        offsets = self.offsets(d)
        onehot = np.zeros((n, int(offsets[-1])))
        if self.missing != "error":
            miss = _holes(x)
            if miss is not None:  # a missing feature's block stays zero: it drops out of the product
                rows, cols = np.nonzero(miss == 0)
                onehot[rows, x[rows, cols].astype(np.intp) + offsets[cols]] = 1.0
                return {"x": onehot, "miss": miss}
        onehot[np.arange(n)[:, None], x.astype(np.intp) + offsets[:-1]] = 1.0
        return onehot

    # The E-step's design (dask_em._discrete_kernel): the one-hot codes; A = log P, c = 0.
    def design_width(self, n_features):
        return int(self.offsets(n_features)[-1])

    def compiled_design(self, n_features):
        # The one-hot design; a subclass with its own design or row constant keeps the numpy kernel.
        own = type(self).fill_design is CategoricalFamily.fill_design
        return self.offsets(n_features) if own and type(self).design_constant is CategoricalFamily.design_constant \
            else None

    def fill_design(self, x, z):
        """The one-hot codes, scattered into zeros through flat positions (row * stride + column)."""
        n, d = x.shape
        z.fill(0.0)  # contiguous: several times faster than zeroing the strided z[:, :-1]
        z[:, -1] = 1.0
        stride, offsets = z.shape[1], self.offsets(d)[:-1]
        rows = max(n, panel_rows(stride - 1))
        # The flat position of code 0 of each (row, feature), made once per thread and layout.
        first = cached("onehot_positions", (stride, tuple(offsets), rows),
                       lambda: (stride * np.arange(rows))[:, None] + offsets)
        at = buffer("positions", (n, d), np.intp)
        np.add(first[:n], x, out=at, dtype=np.intp, casting="unsafe")
        z.reshape(-1)[at.reshape(-1)] = 1.0

    def device_design(self, xp, x):
        """The one-hot codes, one block of comparisons per feature."""
        n, d = x.shape
        offsets = self.offsets(d)
        codes = xp.astype(x, xp.int64)
        blocks = [
            xp.astype(codes[:, j : j + 1] == xp.arange(int(offsets[j + 1] - offsets[j]), device=device(x)), xp.float64)
            for j in range(d)
        ]
        return xp.concat(blocks, axis=1)

    def coefficients(self, params):
        log_p = np.log(np.maximum(params["probabilities"], _TINY))
        return log_p, np.zeros(len(log_p))

    def stats_from(self, sums, params):
        return {"counts": sums}

    def fill_for_start(self, sample, weights):
        """Missing codes filled with each column's most frequent observed code, for the start only."""
        sample = np.asarray(sample, dtype=np.float64)
        modes = np.zeros(sample.shape[1])
        for j, column in enumerate(sample.T):
            seen = column[~np.isnan(column)].astype(np.int64)
            modes[j] = np.bincount(seen).argmax() if seen.size else 0
        return fill_columns(sample, modes)

    def impute(self, x, params, context):
        """Each missing code replaced by the most probable one under the mixture, given the row's observed codes."""
        x = np.asarray(x, dtype=np.float64)
        resp = _posterior(self, x, params, context)
        probs = resp.T @ params["probabilities"]  # (rows, sum_j C_j) predictive probabilities
        offsets = self.offsets(x.shape[1])
        best = np.stack([probs[:, lo:hi].argmax(1) for lo, hi in zip(offsets[:-1], offsets[1:])], axis=1)
        return _fill_expected(x, best.astype(np.float64))

    def init_features(self, sample, context):
        return _split(self.prepare_rows(sample))[0]

    def merge_criterion(self):
        return categorical_merge_term

    def log_prob(self, xp, params):
        xp, _ = _split(xp)
        return (np.log(np.maximum(params["probabilities"], _TINY)) @ xp.T).T

    def chunk_stats(self, xp, rw, params):
        xp, miss = _split(xp)
        counts = rw.T @ xp
        if miss is not None:  # E[[x_j = c] | k] = P_kjc for a missing x_j
            sizes = np.diff(self.offsets(miss.shape[1]))
            counts += np.repeat(rw.T @ miss, sizes, axis=1) * params["probabilities"]
        return {"counts": counts}

    def _blocks(self, width: int) -> list[tuple[int, int]]:
        """Each feature's columns (lo, hi) in a one-hot layout ``width`` wide."""
        if isinstance(self.n_categories, (int, np.integer)):
            c = int(self.n_categories)
            return [(lo, lo + c) for lo in range(0, width, c)]
        offsets = np.concatenate([[0], np.cumsum(self.n_categories)]).tolist()
        return list(zip(offsets[:-1], offsets[1:]))

    def invalid_stats(self, stats, nk):
        return "a negative category count" if (stats["counts"] < 0).any() else None

    def m_step(self, stats, nk, params):
        counts = stats["counts"] + self.pseudo_count
        probs = np.empty_like(counts)
        for lo, hi in self._blocks(counts.shape[1]):
            probs[:, lo:hi] = counts[:, lo:hi] / counts[:, lo:hi].sum(1, keepdims=True)
        return {"probabilities": probs}

    def n_parameters(self, params):
        k, width = params["probabilities"].shape
        return int(k * (width - len(self._blocks(width))))

    def sample(self, params, labels, context, rng):
        probs = params["probabilities"]
        blocks = self._blocks(probs.shape[1])
        out = np.empty((len(labels), len(blocks)), dtype=np.int64)
        for j, (lo, hi) in enumerate(blocks):
            cdf = np.cumsum(probs[labels, lo:hi], axis=1)
            u = rng.random(len(labels)) * cdf[:, -1]
            out[:, j] = np.minimum((u[:, None] >= cdf).sum(1), hi - lo - 1)
        return out

    def to_public(self, params, context):
        probs = params["probabilities"]
        return {"probabilities_": [probs[:, lo:hi] for lo, hi in self._blocks(probs.shape[1])]}
