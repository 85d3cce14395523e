"""Model-based agglomerative hierarchical clustering: the start behind mclust's ``hc``.

Fraley (1998), "Algorithms for model-based Gaussian hierarchical clustering":
start from singletons and repeatedly merge the two clusters whose union
lowers the Gaussian classification likelihood the least. Each cluster ``C``
(``n`` rows, mean ``m``, scatter matrix ``W = sum (x - m)(x - m)^T``)
contributes a *term*; the cost of merging ``A`` and ``B`` is
``term(A u B) - term(A) - term(B)``, and the union's scatter is
``W_A + W_B + (n_A n_B / n) (m_A - m_B)(m_A - m_B)^T``. The terms, with
``alpha`` = trace of the data's scatter / (rows * features) and ``beta = 1``
as in mclust:

``"VVV"`` (unconstrained)
    ``n log(det(W / n) + beta (tr W + alpha) / n)`` when ``n > p``, otherwise
    ``n log(beta (tr W + alpha) / n)``: the regularised ``n log det(W / n)``
    of mclust's ``hcVVV``. A merge of two singletons always uses the trace form.
``"VVI"`` (diagonal; mclust has no diagonal ``hc``, this is its analogue)
    ``(n / p) sum_j log((W_jj + alpha / p) / n)``: per-feature variances,
    regularised like ``"VII"``'s pooled one.
``"VII"`` (spherical)
    ``n log((tr W + alpha) / n)``, as mclust's ``hcVII``.
``"EII"`` (equal spherical): Ward's criterion, the increase of the total
    within-cluster sum of squares, as mclust's ``hcEII``.

mclust runs ``hc`` on a transformation of the data (``hcUse``; its default is
``"SVD"``: standardised, then projected on the right singular vectors scaled
by ``1 / sqrt(singular value)``), and ``Mclust`` uses the ``"VVV"`` tree to
start every covariance model. :func:`hc_transform` offers the same choices.

Memory is ``O(n^2)`` (one float64 matrix of merge costs) plus the clusters'
scatter matrices, so :func:`hc_responsibilities` clusters at most ``max_rows``
rows (2,000 by default, mclust's ``subset``), drawn at random when there are
more, as ``Mclust`` does: the tree on the transformation of those rows
themselves, the start's M-step on them alone, EM's first E-step on all rows
(``others="subset"``). Built on those rows of the all-row transformation, the
tree's partition differed from mclust's on 3,000-row data (adjusted Rand 0.45
to 0.59 against 1.0; benchmarks/bench_optima.py's generated cases).

The discrete families have no Gaussian scatter: :func:`term_merges` runs the same
greedy agglomeration on any criterion that is a sum of per-cluster terms of
additive statistics (row count, row sums), such as a Bernoulli cluster's
size-weighted entropy; :func:`term_responsibilities` cuts it at K.

Merges are reported as pairs ``(a, b)`` with ``a < b``: the cluster whose
smallest row index is ``a`` absorbs the one whose smallest row index is ``b``.
That names clusters independently of the order of the search, so two
implementations can be compared merge by merge.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from typing import Callable

import numpy as np
from scipy import linalg
from scipy.special import logsumexp

HC_MODELS = ("VVV", "VVI", "VII", "EII")
HC_TRANSFORMS = ("VARS", "STD", "SPH", "SVD")

# The hierarchical model run for each covariance type: mclust starts every
# model from the "VVV" tree (mclust.options("hcModelName")).
DEFAULT_HC_MODEL = "VVV"
DEFAULT_MAX_ROWS = 2000


def _check_model(model: str) -> str:
    if model not in HC_MODELS:
        raise ValueError(
            f"model={model!r} is not a hierarchical model; expected one of {HC_MODELS} "
            "('VVV' unconstrained, 'VVI' diagonal, 'VII' spherical, 'EII' Ward)."
        )
    return model


def hc_transform(x: np.ndarray, use: str = "SVD") -> np.ndarray:
    """The coordinates ``hc`` clusters, as mclust's ``hcUse``.

    ``"VARS"``: the data as given. ``"STD"``: centered, unit (n - 1) variance.
    ``"SPH"``: centered and sphered (covariance with denominator n becomes I).
    ``"SVD"`` (mclust's default): standardised, then ``Z = X V diag(1/sqrt(s))``
    with ``X = U diag(s) V^T``. Constant features are dropped where mclust drops them.
    """
    if use not in HC_TRANSFORMS:
        raise ValueError(f"use={use!r} is not a transformation; expected one of {HC_TRANSFORMS}.")
    x = np.asarray(x, dtype=np.float64)
    if use == "VARS":
        return x.copy()
    centered = x - x.mean(0)
    if use == "SPH":
        n, p = x.shape
        _, s, vt = linalg.svd(centered.T @ centered / n)
        z = centered @ vt.T / np.sqrt(s)
        return z[:, np.isfinite(z).all(0)]
    sd = x.std(0, ddof=1)
    std = centered[:, sd > 0] / sd[sd > 0]
    if use == "STD":
        return std
    _, s, vt = linalg.svd(std, full_matrices=False)
    keep = s > s[0] * 1e-12 if s.size else s > 0
    return std @ vt[keep].T / np.sqrt(s[keep])


def hc_alpha(z: np.ndarray) -> float:
    """mclust's ``alpha``: trace of the scatter matrix of ``z / sqrt(n p)``."""
    n, p = z.shape
    return max(float(((z - z.mean(0)) ** 2).sum()) / (n * p), np.finfo(np.float64).eps)


# ---------------------------------------------------------------------------
# Terms of one cluster, vectorised over candidate unions
# ---------------------------------------------------------------------------


def _vvv_term(n: np.ndarray, trace: np.ndarray, logdet: np.ndarray, p: int, alpha: float, beta: float):
    """n log(det(W/n) + beta (tr W + alpha)/n), or the trace form when n <= p.

    ``logdet`` is log|det W| (``-inf`` for a singular W).
    """
    log_trace = np.log(beta * (trace + alpha) / n)
    with np.errstate(invalid="ignore"):
        both = np.logaddexp(logdet - p * np.log(n), log_trace)
    return n * np.where(n > p, both, log_trace)


def _vvi_term(n: np.ndarray, wdiag: np.ndarray, p: int, alpha: float) -> np.ndarray:
    return (n / p) * np.log((wdiag + alpha / p) / n[..., None]).sum(-1)


def _vii_term(n: np.ndarray, trace: np.ndarray, alpha: float) -> np.ndarray:
    return n * np.log((trace + alpha) / n)


class _Clusters:
    """The active clusters of the agglomeration, one slot per original row."""

    def __init__(self, z: np.ndarray, model: str, alpha: float, beta: float):
        n, p = z.shape
        self.model, self.alpha, self.beta, self.p = model, alpha, beta, p
        self.count = np.ones(n)
        self.mean = z.copy()
        self.trace = np.zeros(n)
        if model == "VVV":
            self.scatter = np.zeros((n, p, p))
        if model == "VVI":
            self.wdiag = np.zeros((n, p))
        self.term = self.singleton_terms(n)

    def singleton_terms(self, n: int) -> np.ndarray:
        a, b, p = self.alpha, self.beta, self.p
        value = {
            "VVV": math.log(a * b),
            "VVI": math.log(a / p),
            "VII": math.log(a),
            "EII": 0.0,
        }[self.model]
        return np.full(n, value)

    def union_terms(self, i: int, others: np.ndarray):
        """Terms (and the statistics they need) of ``i`` merged with each of ``others``."""
        ni, nr = self.count[i], self.count[others]
        n = ni + nr
        delta = self.mean[others] - self.mean[i]
        c = ni * nr / n
        trace = self.trace[i] + self.trace[others] + c * np.einsum("rj,rj->r", delta, delta)
        model, p = self.model, self.p
        if model == "EII":
            return trace, trace
        if model == "VII":
            return _vii_term(n, trace, self.alpha), trace
        if model == "VVI":
            wdiag = self.wdiag[i] + self.wdiag[others] + c[:, None] * delta**2
            return _vvi_term(n, wdiag, p, self.alpha), trace
        logdet = np.full(len(others), -np.inf)
        big = n > p
        if big.any():
            logdet[big] = self._union_logdet(i, others[big], c[big], delta[big])
        term = _vvv_term(n, trace, logdet, p, self.alpha, self.beta)
        # mclust merges two singletons by the trace form whatever p is.
        pair = (ni == 1) & (nr == 1)
        if pair.any():
            term[pair] = 2 * np.log(self.beta * (trace[pair] + self.alpha) / 2)
        return term, trace

    def _union_logdet(self, i: int, others: np.ndarray, c: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """log|det(W_i + W_r + c_r delta_r delta_r^T)| for each r."""
        out = np.empty(len(others))
        single = self.count[others] == 1
        wi = self.scatter[i]
        if single.any():
            # W_r = 0: a rank-one update of W_i, det(W_i)(1 + c d^T W_i^{-1} d) when W_i is regular.
            try:
                chol = np.linalg.cholesky(wi)
                diag = np.diag(chol)
                regular = bool(np.all(diag > 1e-150 * max(1.0, diag.max())))
            except np.linalg.LinAlgError:
                regular = False
            if regular:
                # The whitened differences of all singletons in one GEMM with L^{-T}.
                white = delta[single] @ np.linalg.inv(chol).T
                out[single] = 2 * np.log(diag).sum() + np.log1p(c[single] * np.einsum("rj,rj->r", white, white))
            else:
                single = np.zeros_like(single)
        rest = ~single
        if rest.any():
            w = wi + self.scatter[others[rest]] + c[rest, None, None] * delta[rest, :, None] * delta[rest, None, :]
            sign, logdet = np.linalg.slogdet(w)
            out[rest] = np.where(sign != 0, logdet, -np.inf)
        return out

    def merge(self, i: int, j: int, term: float) -> None:
        ni, nj = self.count[i], self.count[j]
        n = ni + nj
        delta = self.mean[j] - self.mean[i]
        c = ni * nj / n
        self.trace[i] += self.trace[j] + c * float(delta @ delta)
        if self.model == "VVV":
            self.scatter[i] += self.scatter[j] + c * np.outer(delta, delta)
        if self.model == "VVI":
            self.wdiag[i] += self.wdiag[j] + c * delta**2
        self.mean[i] += (nj / n) * delta
        self.count[i] = n
        self.term[i] = term


def _initial_costs(z: np.ndarray, clusters: _Clusters) -> np.ndarray:
    """Costs of merging every pair of singletons, as an (n, n) matrix (diagonal inf)."""
    n, p = z.shape
    sq = np.einsum("ij,ij->i", z, z)
    dist = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.maximum(dist, 0.0, out=dist)
    trace = dist / 2.0  # tr W of a pair is |x_i - x_j|^2 / 2
    a, b = clusters.alpha, clusters.beta
    model = clusters.model
    if model == "EII":
        cost = trace
    elif model == "VII":
        cost = 2 * np.log((trace + a) / 2) - 2 * math.log(a)
    elif model == "VVV":
        cost = 2 * np.log(b * (trace + a) / 2) - 2 * math.log(a * b)
    else:
        cost = np.zeros((n, n))
        for j in range(p):
            diff = z[:, j, None] - z[None, :, j]
            cost += np.log((diff**2 / 2 + a / p) / 2)
        cost *= 2.0 / p
        cost -= 2 * math.log(a / p)
    np.fill_diagonal(cost, np.inf)
    return cost


def _agglomerate(clusters, cost: np.ndarray, n: int, min_clusters: int,
                 ties: str = "first") -> tuple[np.ndarray, np.ndarray]:
    """Greedy merges by ``cost`` ((n, n), diagonal inf, overwritten); ``clusters`` keeps the terms.

    Each step merges the cheapest pair; each row caches its cheapest partner, so a step
    costs O(n) union terms. Equal costs: ``ties="first"`` merges the lexicographically
    first pair (a, b) in row order; ``ties="mclust"`` the pair mclust's ``hc`` keeps: the
    clusters sit in slots (row i in slot i at first), mclust scans the pairs of slots
    ``i < j`` with j outer and keeps the last minimum (``.le.``), keeps the merged
    cluster in slot i and moves the cluster of the last slot into slot j. On data with
    many equal rows or equal differences (faithful: 16 groups of duplicate rows), the
    first pair gave another tree (adjusted Rand 0.56 to mclust's ``hclass`` at K=4;
    mclust's rule: 1.0 at K = 2..9).
    """
    active = np.ones(n, dtype=bool)
    best = cost.argmin(1) if n > 1 else np.zeros(1, dtype=np.intp)
    best_cost = cost[np.arange(n), best]
    slot_of = np.arange(n)  # the slot of each cluster (by its smallest row)
    in_slot = np.arange(n)  # the cluster in each slot
    pairs = np.empty((n - min_clusters, 2), dtype=np.intp)
    costs = np.empty(n - min_clusters)
    for step in range(n - min_clusters):
        if ties == "mclust":
            i, j = _mclust_pair(cost, best_cost, slot_of)
        else:
            i = int(np.argmin(best_cost))
            j = int(best[i])
        a, b = (i, j) if i < j else (j, i)
        pairs[step] = a, b
        costs[step] = cost[a, b]
        clusters.merge(a, b, cost[a, b] + clusters.term[a] + clusters.term[b])
        low, high = sorted((slot_of[a], slot_of[b]))
        last = n - 1 - step
        in_slot[low] = a
        slot_of[a] = low
        if high != last:
            moved = in_slot[last]
            in_slot[high] = moved
            slot_of[moved] = high
        active[b] = False
        cost[b, :] = np.inf
        cost[:, b] = np.inf
        best_cost[b] = np.inf
        others = np.flatnonzero(active)
        others = others[others != a]
        if others.size:
            term, _ = clusters.union_terms(a, others)
            row = term - clusters.term[a] - clusters.term[others]
            cost[a, others] = row
            cost[others, a] = row
        # Rows whose best partner was a or b look again; the others only compare with a.
        stale = np.flatnonzero(active & ((best == a) | (best == b)))
        stale = np.union1d(stale, [a])
        if stale.size:
            best[stale] = cost[stale].argmin(1)
            best_cost[stale] = cost[stale, best[stale]]
        if others.size:
            # With ties="first", ties go to the lower index, so the merges are those of a search
            # in row order (mclust's rule looks at every tied pair when it picks one).
            to_a = cost[others, a]
            closer = (to_a < best_cost[others]) | ((to_a == best_cost[others]) & (a < best[others]))
            best[others[closer]] = a
            best_cost[others[closer]] = cost[others[closer], a]
    return pairs, costs


def _mclust_pair(cost: np.ndarray, best_cost: np.ndarray, slot_of: np.ndarray) -> tuple[int, int]:
    """The cheapest pair; among equal costs the one mclust's scan keeps: largest (higher slot, lower slot)."""
    lowest = best_cost.min()
    rows = np.flatnonzero(best_cost == lowest)
    if rows.size == 1:
        partners = np.flatnonzero(cost[rows[0]] == lowest)
        if partners.size == 1:
            return int(rows[0]), int(partners[0])
    r, c = np.nonzero(cost[rows] == lowest)
    r = rows[r]
    high = np.maximum(slot_of[r], slot_of[c])
    low = np.minimum(slot_of[r], slot_of[c])
    pick = np.lexsort((low, high))[-1]
    return int(r[pick]), int(c[pick])


def hc_merges(
    x: np.ndarray,
    model: str = "VVV",
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    min_clusters: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The merges of model-based agglomerative clustering of the rows of ``x``.

    Parameters
    ----------
    x : array-like of shape (n_samples, n_features)
        The coordinates to cluster (already transformed: see :func:`hc_transform`).
    model : {"VVV", "VVI", "VII", "EII"}
        The criterion (see the module docstring).
    alpha, beta : float
        mclust's regularisation: ``alpha`` multiplies :func:`hc_alpha` of ``x``.
    min_clusters : int
        Stop when this many clusters remain.

    Returns
    -------
    pairs : ndarray of shape (n_samples - min_clusters, 2)
        ``(a, b)``, ``a < b``: the cluster whose smallest row is ``a`` absorbs the
        cluster whose smallest row is ``b``.
    costs : ndarray of shape (n_samples - min_clusters,)
        The change of the criterion at each merge.
    """
    _check_model(model)
    z = np.asarray(x, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"x has shape {z.shape}; expected (n_samples, n_features).")
    n = z.shape[0]
    if not 1 <= min_clusters <= n:
        raise ValueError(f"min_clusters={min_clusters} must be between 1 and the {n} rows.")
    clusters = _Clusters(z, model, alpha * hc_alpha(z), beta)
    return _agglomerate(clusters, _initial_costs(z, clusters), n, min_clusters, ties="mclust")


class _TermClusters:
    """Clusters whose criterion term is a function of additive statistics: the row count and the row sums."""

    def __init__(self, z: np.ndarray, term: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        self.count = np.ones(z.shape[0])
        self.sums = z.copy()
        self.term_of = term
        self.term = np.asarray(term(self.count, self.sums), dtype=np.float64)

    def union_terms(self, i: int, others: np.ndarray):
        return self.term_of(self.count[i] + self.count[others], self.sums[i] + self.sums[others]), None

    def merge(self, i: int, j: int, term: float) -> None:
        self.count[i] += self.count[j]
        self.sums[i] += self.sums[j]
        self.term[i] = term


def term_merges(
    x: np.ndarray, term: Callable[[np.ndarray, np.ndarray], np.ndarray], *, min_clusters: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Agglomerative merges of the rows of ``x`` by a criterion of additive statistics.

    A cluster of ``n`` rows summing to ``s`` contributes ``term(n, s)`` (vectorised:
    ``n`` of shape (m,), ``s`` of shape (m, n_features), returning (m,)); the cost of
    merging ``A`` and ``B`` is ``term(n_A + n_B, s_A + s_B) - term(A) - term(B)``. A
    discrete family gives its term (:meth:`dask_em.family.Family.merge_criterion`):
    for Bernoulli rows ``n sum_j H(s_j / n)``, the cluster's entropy weighted by its
    size, i.e. minus its classification log-likelihood at the maximum. Returns
    ``(pairs, costs)`` as :func:`hc_merges`, ties to the lexicographically first pair.
    """
    z = np.asarray(x, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"x has shape {z.shape}; expected (n_samples, n_features).")
    n = z.shape[0]
    if not 1 <= min_clusters <= n:
        raise ValueError(f"min_clusters={min_clusters} must be between 1 and the {n} rows.")
    clusters = _TermClusters(z, term)
    cost = np.full((n, n), np.inf)
    two = np.full(n, 2.0)
    for i in range(n - 1):  # one row of pair costs at a time: O(n) memory beyond the matrix
        rest = np.arange(i + 1, n)
        row = term(two[rest], z[i] + z[rest]) - clusters.term[i] - clusters.term[rest]
        cost[i, rest] = row
        cost[rest, i] = row
    return _agglomerate(clusters, cost, n, min_clusters)


def term_responsibilities(
    x: np.ndarray,
    n_components: int,
    term: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Start responsibilities (n_samples, n_components) from the tree of :func:`term_merges`.

    At most ``max_rows`` rows (drawn with ``rng`` when there are more) are
    clustered and cut at ``n_components``; they get their cluster (one-hot), the
    other rows zeros, so the start's M-step sees the clustered rows only, as
    ``Mclust``'s M-step on its ``hc`` subset (EM's first E-step then covers all rows).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n_components > n:
        raise ValueError(f"n_components={n_components} is more than the {n} rows to cluster.")
    if max_rows < n_components:
        raise ValueError(f"max_rows={max_rows} must be at least n_components={n_components}.")
    rows = np.arange(n)
    if n > max_rows:
        rows = np.sort(np.random.default_rng(rng).choice(n, size=max_rows, replace=False))
    labels = cut_tree(term_merges(x[rows], term, min_clusters=n_components)[0], len(rows), n_components)
    resp = np.zeros((n, n_components))
    resp[rows, labels] = 1.0
    return resp


def cut_tree(pairs: np.ndarray, n_samples: int, n_clusters: int) -> np.ndarray:
    """Labels ``0..n_clusters-1`` (numbered by first appearance) after the first merges."""
    steps = n_samples - n_clusters
    if not 0 <= steps <= len(pairs):
        raise ValueError(
            f"cannot cut {n_samples} rows into {n_clusters} clusters with {len(pairs)} merges; "
            f"expected n_clusters between {n_samples - len(pairs)} and {n_samples}."
        )
    parent = np.arange(n_samples)
    for a, b in pairs[:steps]:
        parent[parent == b] = a
    _, first, inverse = np.unique(parent, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse]


def _partition_gaussian(z: np.ndarray, labels: np.ndarray, k: int, alpha: float):
    """Weights, means and regularised covariances of a partition (full, as hc's 'VVV')."""
    p = z.shape[1]
    weights, means, covs = np.empty(k), np.empty((k, p)), np.empty((k, p, p))
    for c in range(k):
        rows = z[labels == c]
        weights[c] = len(rows)
        means[c] = rows.mean(0)
        resid = rows - means[c]
        # hc's own regularisation: W + alpha I spread over the cluster's rows.
        covs[c] = (resid.T @ resid + alpha * np.eye(p)) / len(rows)
    return weights / weights.sum(), means, covs


def _gaussian_resp(z: np.ndarray, weights, means, covs) -> np.ndarray:
    logp = np.empty((len(z), len(weights)))
    for c, (w, m, cov) in enumerate(zip(weights, means, covs)):
        chol = linalg.cholesky(cov, lower=True)
        sol = linalg.solve_triangular(chol, (z - m).T, lower=True)
        logp[:, c] = math.log(w) - np.log(np.diag(chol)).sum() - 0.5 * (sol**2).sum(0)
    return np.exp(logp - logsumexp(logp, axis=1, keepdims=True))


def hc_responsibilities(
    x: np.ndarray,
    n_components: int,
    *,
    model: str = DEFAULT_HC_MODEL,
    use: str = "SVD",
    max_rows: int = DEFAULT_MAX_ROWS,
    rng: np.random.Generator | int | None = None,
    others: str = "subset",
) -> np.ndarray:
    """Start responsibilities of shape (n_samples, n_components) from the hierarchical tree.

    At most ``max_rows`` rows (drawn with ``rng`` when there are more) are
    clustered and cut at ``n_components``. With no more rows than that, the
    responsibilities are the partition itself (one-hot). With more, ``others``
    says what the rows left out get:

    ``"subset"`` (``Mclust``'s start from its ``subset``)
        The tree is built on the transformation of the drawn rows themselves
        (``hc(data[subset, ])``: standardised and rotated by the subset's own
        moments), the drawn rows get their cluster (one-hot) and the others
        zeros, so the start's M-step (of the model being fitted) sees the
        clustered rows only and EM's first E-step covers every row.
    ``"posterior"``
        The tree is built on the drawn rows of the all-row transformation, and
        every row gets its posterior under a full-covariance Gaussian mixture
        fitted to the partition in those coordinates (covariances regularised
        by hc's ``alpha``).
    """
    if others not in ("subset", "posterior"):
        raise ValueError(f"others={others!r}; expected 'subset' (Mclust's start) or 'posterior'.")
    _check_model(model)
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n_components > n:
        raise ValueError(f"n_components={n_components} is more than the {n} rows to cluster.")
    if max_rows < n_components:
        raise ValueError(f"max_rows={max_rows} must be at least n_components={n_components}.")
    resp = np.zeros((n, n_components))
    rows = np.arange(n)
    if n > max_rows:
        rows = np.sort(np.random.default_rng(rng).choice(n, size=max_rows, replace=False))
    if n <= max_rows or others == "subset":
        z = _transform_or_constant(x[rows], use)
        labels = cut_tree(_whole_tree(z, model), len(rows), n_components)
        resp[rows, labels] = 1.0
        return resp
    z = _transform_or_constant(x, use)
    sub = z[rows]
    labels = cut_tree(_whole_tree(sub, model), max_rows, n_components)
    return _gaussian_resp(z, *_partition_gaussian(sub, labels, n_components, hc_alpha(sub)))


# The last few whole trees, by their coordinates: a model-selection grid starts every
# candidate (every K, every covariance type) from the same rows, as Mclust cuts one tree.
_TREES: OrderedDict = OrderedDict()
_TREES_LOCK = threading.Lock()
_TREES_KEPT = 8


def _whole_tree(z: np.ndarray, model: str) -> np.ndarray:
    """The merges of :func:`hc_merges` down to one cluster (any cut), remembered for the same ``z``.

    The greedy merges are the same whatever ``min_clusters`` stops them, so one tree serves every K.
    """
    key = (hashlib.sha1(np.ascontiguousarray(z).tobytes()).hexdigest(), z.shape, model)
    with _TREES_LOCK:
        if key in _TREES:
            _TREES.move_to_end(key)
            return _TREES[key]
    pairs = hc_merges(z, model)[0]
    with _TREES_LOCK:
        _TREES[key] = pairs
        while len(_TREES) > _TREES_KEPT:
            _TREES.popitem(last=False)
    return pairs


def _transform_or_constant(x: np.ndarray, use: str) -> np.ndarray:
    """:func:`hc_transform`, or one zero column when every feature is constant."""
    z = hc_transform(x, use)
    return z if z.shape[1] else np.zeros((x.shape[0], 1))


def hc_partition(
    x: np.ndarray,
    n_components: int,
    *,
    model: str = DEFAULT_HC_MODEL,
    use: str = "SVD",
    max_rows: int = DEFAULT_MAX_ROWS,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Hard labels of shape (n_samples,) for every row: :func:`hc_responsibilities` (``others="posterior"``) at its largest."""
    return hc_responsibilities(
        x, n_components, model=model, use=use, max_rows=max_rows, rng=rng, others="posterior"
    ).argmax(1)
