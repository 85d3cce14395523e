"""The family protocol: what a mixture's component distribution provides.

The library fits a mixture of any family that subclasses :class:`Family`.
The engine (:mod:`dask_em.engine`) owns the mixture weights, the
responsibilities, the log-likelihood and the tree reduction; the restarts,
checkpoints and the model store sit above it and never look inside a family's
parameters. A family only ever sees rows, their (responsibility x sample) weights,
and its own parameters, so a component never knows it sits in a mixture
(pomegranate's ``summarize`` / ``from_summaries`` split).

Parameters are a dict of numpy arrays (plus, optionally, JSON-able scalars or
strings); ``params["weights"]`` of shape (K,) belongs to the engine and is
present whenever a family method receives ``params``. Statistics are a dict of
float64 arrays **with the component axis first**; the default merge is their
sum and the default component drop indexes their first axis.

A family must provide (rows ``x`` of shape (n, d), as stored: bool, int or
float; ``rw`` of shape (n, K) the responsibilities times the sample weights):

``name``
    A short lower-case name (``"bernoulli"``), used by the model store and CLI.
``check_dtype(dtype, n_features)``
    Raise ``TypeError`` (or ``ValueError`` for a width that does not fit the
    family's settings) saying what was received and how to fix it. Metadata
    only; no data is read. [Any numeric dtype.]
``check_rows(x)``
    ``None`` if every row is valid, else ``(row, what, fix)`` for the first bad
    row (``row`` relative to ``x``; ``what`` says what is wrong, ``fix`` how to
    mend it). The engine adds the chunk's row range and raises before the fit
    goes on: in the initialisation sample, in the first E-step of a fit (later
    rounds read the same rows), and in inference.
``log_prob(xp, params)``
    (n, K) log-density (or log-pmf) of every row under every component,
    without the mixture weights. ``xp = prepare_rows(x)``.
``chunk_stats(xp, rw, params)``
    Partial sufficient statistics of the rows, component axis first.
``m_step(stats, nk, params)``
    New parameters (without ``weights``) from statistics reduced over all
    chunks; ``nk`` (K,) is the responsibility mass of each component.
``n_parameters(params)``
    Free parameters of the K component distributions (the engine adds the
    K - 1 of the weights).
``sample(params, labels, context, rng)``
    One row per label (an int array), drawn from that label's component.

and may override (defaults in brackets):

``prepare_rows(x)``
    What ``log_prob`` and ``chunk_stats`` receive, computed once per panel of
    rows and shared by both: a float64 copy, a one-hot matrix. [``x``]
``row_log_constant(xp)``, ``total_log_constant(xp, w)``
    A per-row term of the log-density that no component changes (``-log x!``
    for Poisson counts), which ``log_prob`` may leave out; the engine adds it
    to the log-likelihood, using the (``w``-weighted) total in the E-step.
    [``None``; the total sums the per-row array]
``merge(parts)``
    [key-wise sum]
``select(params_or_stats, keep)``
    Keep the components where the boolean ``keep`` is True. [index the first
    axis of every array]
``context(sample, weights)``
    Data-dependent constants computed once from the initialisation sample and
    handed to every call that takes ``context`` (the Gaussian centering point).
    [``None``]
``recenter(params, context, new_context)``
    The same parameters expressed under another context (model selection
    runs candidates whose samples differ under one context). [unchanged]
``init_features(sample, context)``
    Where the k-means of the starts runs. [``sample`` as float64]
``merge_criterion()``
    The hierarchical start's criterion (``init_params="hierarchical"``, emEM's
    tree starts): a function ``term(n, s)`` of a cluster's row count ``n`` (m,)
    and the sums ``s`` (m, f) of its rows of ``init_features``, returning (m,):
    the cost of merging two clusters is the term of the union minus theirs
    (:func:`dask_em.hierarchical.term_merges`); minus the cluster's maximised
    classification log-likelihood (up to terms additive in rows) is the usual
    choice. [``None``: mclust's Gaussian ``"VVV"`` tree on ``init_features``]
``init_params(x, w, resp, context, settings)``
    Initial parameters from the sample; ``settings`` holds ``n_components``,
    the start's kind (``"start"``) and whatever the estimator passes
    (user-given initial parameters).
    [the M-step of the sample's statistics under the start's ``resp``]
``start_given(settings)``
    True when ``settings`` leave nothing for a start to compute. [False]
``estep(x, w, params_list, context, entropy)``
    The E-step of several restarts on one chunk; override to fuse work across
    restarts, as the Gaussian family does. [``prepare_rows``, ``log_prob``,
    the engine's log-sum-exp and ``chunk_stats``, on panels of rows]
``weighted_log_prob(x, params, context)``
    For predict / score. [``log_prob`` + the row constant + log weights]
``to_public(params, context)``
    The fitted attributes, as ``{"name_": value}``. [every parameter]
``lazy_row_check``
    True when invalid rows always make the log-likelihood non-finite (NaN for
    a Gaussian), so ``check_rows`` runs only then. [False]
``array_api``
    True when ``estep`` and ``weighted_log_prob`` take a chunk of any
    array-API library (CuPy, PyTorch, ...) and compute on its device,
    returning host statistics and, for ``weighted_log_prob``, an array of the
    chunk's library; ``estep``'s row weights ``w`` are then a float64 vector
    on the chunk's device. Otherwise the engine copies such a chunk to the host
    first (and the inference results back). [False]
``rows_valid(x)``
    Whether every row of a device chunk passes ``check_rows``, tested on its
    device (one boolean back); spares the chunk's copy to the host. [False:
    the copy is made]
``panel_rows``
    Rows per panel of the default ``estep``; set it when ``prepare_rows``
    makes wide rows. [None: PANEL_CELLS // K]
``mixture_weights(nk, params)``
    The ``weights`` stored in the new ``params`` after an M-step (``params``
    are the family's M-step output). [``(nk + MASS_EPS) / sum``]
``round_bound(record, params)``
    The lower bound reported for a round, from its reduced E-step record and
    the new ``params``. [``record["loglik"] / record["wsum"]``: the mean
    log-likelihood of the parameters that entered the round]
``needs_entropy``
    True makes every E-step sum ``sum_k r log r`` into ``record["entropy"]``
    (a variational bound needs it). [False]
``drops_empty_components``
    False keeps a component whose mass falls below 10 eps of a row's
    (:func:`empty_components`; a prior keeps it regular). [True]
``align_stats(stats, params, reference)``
    Statistics E-stepped under ``params`` as an E-step under ``reference``
    would report them for the same responsibilities (statistics taken about a
    restart's means are shifted to the reference's means), so that statistics
    of successive iterations can be combined linearly (accelerated EM).
    [unchanged]
``invalid_stats(stats, nk)``
    ``None`` when (extrapolated) statistics could come from data, else what
    is wrong (a count below zero): accelerated EM then falls back to plain
    EM's step. [None]
``bound_fell_hint(params)``
    Why this family's EM bound can fall beyond round-off (logged with the
    warning when it does). [a generic sentence]
``bound_falls_by_design(params)``
    True where the M-step is not the bound's maximiser by construction (a
    covariance floor added after it): a fall is then logged at INFO, not as a
    warning, as scikit-learn stays silent on it. [False]
``bound_resolution(bound, params)``
    The round-off of a round's bound near ``bound`` (of ``params``), absolute: the size of the
    changes its arithmetic cannot resolve (a reduced-precision E-step's). A
    change within it is neither a fall nor progress. A family that returns a
    positive value must also run a restart's E-step in float64 when its
    parameters carry ``"compute_dtype": "float64"``: the restart then continues
    in exact arithmetic (:func:`dask_em.restarts.advance` decides when). [0.0]

Missing values (``missing="marginalize"`` on an estimator). A family opts in
by setting ``supports_missing = True`` and having a dataclass field
``missing: str = "error"``; the estimator hands it
``with_missing("marginalize")``. Then rows reach ``check_rows``,
``prepare_rows``, ``log_prob`` and ``chunk_stats`` with NaN where a value is
missing (float data): ``check_rows`` must accept NaN (and refuse a row whose
every value is missing, :func:`all_missing_row`), ``log_prob`` must give
the marginal density of each row's observed values (a missing coordinate
drops out), and ``chunk_stats`` the expected statistics of the missing ones
under each component given ``params`` (EM for data missing at random). It may
define ``impute(x, params, context)``: each row with its missing values
replaced by their conditional expectation under the fitted mixture. The
starts see the sample with missing values filled by ``fill_for_start``
[column means of the observed values], for the start only. A family that
does not opt in is refused with the reason when ``missing="marginalize"``.

One family object serves every restart of a fit. It travels to the workers
inside the round's parameters: frozen dataclasses pickle by reference to
their module, and a family defined in a notebook pickles by value through
cloudpickle.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

import numpy as np
from scipy.special import xlogy

from . import _compiled
from ._machine import aligned_empty, core_caches  # the families size their panels by it

Params = dict[str, Any]
Stats = dict[str, Any]

# The start kinds scikit-learn's mixtures have (``init_params``); a family's ``init_params`` finds the
# kind of its start in ``settings["start"]``.
SCIKIT_LEARN_STARTS = ("kmeans", "k-means++", "random", "random_from_data")

# Components get 10 eps of mass so an empty one divides by a tiny number, not zero.
MASS_EPS = 10 * np.finfo(np.float64).eps
def empty_components(nk: np.ndarray, total_weight: float, n_rows: int) -> np.ndarray:
    """True where a component's mass ``nk`` is below :data:`MASS_EPS` of an average row's weight: empty, and
    dropped. There scikit-learn's estimates are its 10 eps floor's (a mean pulled to the origin); a component
    of more mass, however little, is kept, as scikit-learn keeps it: it can gain mass again."""
    return nk < MASS_EPS * total_weight / max(n_rows, 1)
# Rows per panel of the default E-step: the (K, rows) log-probabilities hold 2**18
# values (32768 rows at K=8). Each numpy call on a panel holds the GIL for a few
# microseconds, so panels must be long for two threads to overlap: measured on
# 2 cores (Bernoulli, 2M x 16 bool rows, K=8, in memory) 2**16 gave 0.116 s per
# pass, 2**18 0.098 s, 2**20 0.136 s (the panel falls out of cache).
PANEL_CELLS = 2**18


# This thread's work arrays (work_array): kept from panel to panel and chunk to chunk.
_WORK = threading.local()


def work_array(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """This thread's C-contiguous array ``name`` of ``shape`` and ``dtype`` (a numpy dtype object).

    A panel kernel's large temporaries (a design matrix, the (K, P)
    log-densities) made afresh for every panel or chunk were allocations
    of megabytes: glibc serves them by ``mmap`` and returns them by
    ``munmap``, both with the GIL held, and every page faults again (with
    8 MiB designs, 7% of a diagonal E-step thread's GIL-held samples were
    the allocation of a panel's log-densities and 6% the end of a chunk's
    E-step, where its design was freed; py-spy ``--native``). Here one array per name and thread grows to the
    largest size asked for and is reused (starting on a cache line:
    :func:`dask_em._machine.aligned_empty`); the view of the last shape asked
    for is kept, so a panel's call costs a dict lookup. Its contents are
    whatever the last user left. A thread holds a few of them (its panels'
    working set, a few MiB).
    """
    store = _WORK.__dict__
    held = store.get(name)
    if held is not None and held[0] == shape and held[1] is dtype:
        return held[2]
    size = math.prod(shape)
    base = store.get(name + "/base")
    if base is None or base.dtype != dtype or base.size < size:
        base = store[name + "/base"] = aligned_empty(max(size, 1), dtype)
    view = base[:size].reshape(shape)
    store[name] = (shape, dtype, view)
    return view


# exp() of anything below this is floored to exp(-600) ~ 1e-261: it keeps
# responsibilities out of the subnormal range, where every multiply in the
# statistics GEMM costs a microcode assist, and changes nothing in float64.
_LOG_RESP_FLOOR = -600.0


def responsibilities(wlp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row log-likelihood (P,) and responsibilities (K, P), overwriting ``wlp`` (K, P).

    The log-sum-exp over components is written out in place, component-major,
    so every reduction runs over long rows: ``scipy.special.logsumexp`` over
    the last axis of a (P, K) array took 70% of a Bernoulli E-step and 44% of
    a full-covariance one (profiled, K=8), for its array-API dispatch and
    its copies. A row whose every component is -inf, or that holds NaN,
    gives NaN, which the engine reports.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        return log_normalize(wlp)


def log_normalize(wlp: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`responsibilities` for a caller that already ignores numpy's invalid and overflow errors.

    The ufuncs and their reductions are called directly: each call's fixed
    cost holds the GIL, and ``ndarray.max`` / ``sum`` (Python wrappers) and
    ``np.errstate`` (a context manager) added a third to it, once per panel.
    ``rows``: an optional (2, P) array of ``wlp``'s dtype for the row maxima
    and sums (a panel kernel's reused work array); the log-likelihood
    returned is its second row.
    """
    if rows is None:
        top = np.maximum.reduce(wlp, axis=0)
        total = None
    else:
        top = np.maximum.reduce(wlp, axis=0, out=rows[0])
        total = rows[1]
    np.subtract(wlp, top, out=wlp)
    np.maximum(wlp, _LOG_RESP_FLOOR, out=wlp)
    np.exp(wlp, out=wlp)
    total = np.add.reduce(wlp, axis=0, out=total)
    np.divide(wlp, total, out=wlp)
    log_norm = np.log(total, out=total)
    log_norm += top
    return log_norm, wlp


# numpy's matmul releases the GIL only when its output holds more than 500 values (the
# threshold of its generalized-ufunc loop); a statistics GEMM with a small output, (K, 2d + 1)
# at d=16, K=8, held it for the whole product: 13% of a diagonal E-step thread's time.
_MATMUL_RELEASES_GIL = 500


def gemm_nt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` (a (m, p), b (n, p)) computed so that numpy releases the GIL during the product.

    Where ``m * n`` is at most 500, the contraction over ``p`` is split into
    batches of one batched matmul (its output, batches x m x n, is large enough)
    whose partial products are summed in float64: the same sums, grouped
    differently (float64 whatever the inputs; a plain product keeps their dtype).
    """
    m, n, p = a.shape[0], b.shape[0], a.shape[1]
    if m * n > _MATMUL_RELEASES_GIL:
        return a @ b.T
    parts = _MATMUL_RELEASES_GIL // (m * n) + 1
    step = p // parts
    if step < 64:
        return a @ b.T
    head = parts * step
    out = np.add.reduce(np.matmul(a[:, :head].reshape(m, parts, step).transpose(1, 0, 2),
                                  b[:, :head].reshape(n, parts, step).transpose(1, 2, 0)), axis=0, dtype=np.float64)
    if head < p:
        out += a[:, head:] @ b[:, head:].T
    return out


def _missing(family, method: str) -> NotImplementedError:
    return NotImplementedError(
        f"{type(family).__name__} does not define {method}(), which every family must; "
        "see the protocol in dask_em.family's docstring."
    )


def add_likelihood(acc: dict, log_norm: np.ndarray, resp: np.ndarray, w: np.ndarray | None, entropy: bool) -> None:
    """Add a panel's (weighted) log-likelihood, weight and, with ``entropy``, sum_k r log r into ``acc``."""
    if w is None:
        acc["loglik"] += float(np.add.reduce(log_norm, dtype=np.float64))
        acc["wsum"] += float(log_norm.shape[0])
    else:
        acc["loglik"] += float(np.dot(w, log_norm))
        acc["wsum"] += float(w.sum())
    if entropy:
        per_row = xlogy(resp, resp).sum(0)
        acc["entropy"] += float(per_row.sum() if w is None else np.dot(w, per_row))


def weighted_responsibilities(wlp: np.ndarray, w: np.ndarray | None, entropy: bool, record: dict) -> np.ndarray:
    """Responsibilities times the row weights ``w``, overwriting the (K, P) ``wlp``; the panel's likelihood into ``record``.

    :func:`responsibilities`, :func:`add_likelihood` and the weighting, done
    by the compiled kernel where it runs (:func:`dask_em._compiled.normalize`:
    one call that releases the GIL), else by numpy.
    """
    if _compiled.normalize(wlp, w, entropy, record, work_array(f"lse-{wlp.dtype.char}", (5, wlp.shape[1]), wlp.dtype)):
        return wlp
    log_norm, resp = responsibilities(wlp)
    add_likelihood(record, log_norm, resp, w, entropy)
    return resp if w is None else np.multiply(resp, w, out=resp)


def all_missing_row(x: np.ndarray) -> tuple[int, str, str] | None:
    """``check_rows``' answer for the first row whose every value is NaN (None if none)."""
    if x.dtype.kind != "f" or not x.shape[1]:
        return None
    empty = np.isnan(x).all(1)
    if not empty.any():
        return None
    return int(np.flatnonzero(empty)[0]), "a row has every value missing (NaN)", (
        "A row with nothing observed carries no information: drop it, "
        "e.g. X[~da.isnan(X).all(axis=1)]."
    )


def fill_columns(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A float64 copy of ``x`` with each NaN replaced by its column's entry of ``values``."""
    out = np.array(x, dtype=np.float64)
    rows, cols = np.nonzero(np.isnan(out))
    out[rows, cols] = values[cols]
    return out


MISSING_MODES = ("error", "marginalize")


class Family:
    """Base class of the component families: subclass it to fit a mixture of your own distribution.

    A subclass is a frozen dataclass whose fields are its settings; it implements
    the protocol of the ``dask_em.family`` module docstring and is fitted by
    :class:`dask_em.Mixture`.
    """

    name: str = ""
    lazy_row_check: bool = False
    array_api: bool = False
    panel_rows: int | None = None
    needs_entropy: bool = False
    drops_empty_components: bool = True
    supports_missing: bool = False
    missing: str = "error"

    def with_missing(self, missing: str) -> "Family":
        """This family with NaN meaning ``missing`` ("error" or "marginalize"); refused if unsupported."""
        if missing == self.missing:
            return self
        if missing not in MISSING_MODES:
            raise ValueError(f"missing must be one of {MISSING_MODES}; received {missing!r}.")
        import dataclasses

        if not self.supports_missing or not (
            dataclasses.is_dataclass(self) and "missing" in {f.name for f in dataclasses.fields(self)}
        ):
            raise ValueError(
                f"missing={missing!r}: the family {type(self).__name__} does not support missing values "
                "(it does not set supports_missing = True with a dataclass field `missing`, so its "
                "log_prob and chunk_stats are not known to marginalise NaN). Use missing='error' and "
                "remove or impute incomplete rows, or make the family opt in (see dask_em.family)."
            )
        return dataclasses.replace(self, missing=missing)

    def fill_for_start(self, sample: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
        """The sample with its missing values filled, for the start only: column means of the observed values."""
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.nanmean(np.asarray(sample, dtype=np.float64), axis=0)
        return fill_columns(sample, np.nan_to_num(means))

    def impute(self, x: np.ndarray, params: Params, context: Any) -> np.ndarray:
        raise NotImplementedError(
            f"{type(self).__name__} does not define impute(); only families that support missing "
            "values (supports_missing = True) and define it can impute."
        )

    # -- required -----------------------------------------------------------

    def check_dtype(self, dtype: np.dtype, n_features: int) -> None:
        if np.dtype(dtype).kind not in "biuf":
            raise TypeError(f"{self.name} data must be numeric; received dtype {dtype}.")

    def check_rows(self, x: np.ndarray) -> tuple[int, str, str] | None:
        raise _missing(self, 'check_rows')

    def rows_valid(self, x) -> bool:
        """Whether every row of ``x``, a chunk on a device, passes :meth:`check_rows`, tested where it lives.

        True spares the copy of the chunk to the host that :meth:`check_rows`
        needs; False (the default, for families without a device test) makes
        that copy, and :meth:`check_rows` finds the row to name.
        """
        return False

    def log_prob(self, x: np.ndarray, params: Params) -> np.ndarray:
        raise _missing(self, 'log_prob')

    def chunk_stats(self, x: np.ndarray, rw: np.ndarray, params: Params) -> Stats:
        raise _missing(self, 'chunk_stats')

    def m_step(self, stats: Stats, nk: np.ndarray, params: Params) -> Params:
        raise _missing(self, 'm_step')

    def n_parameters(self, params: Params) -> int:
        raise _missing(self, 'n_parameters')

    def sample(self, params: Params, labels: np.ndarray, context: Any, rng: np.random.Generator | np.random.RandomState) -> np.ndarray:
        raise _missing(self, 'sample')

    # -- optional, with defaults --------------------------------------------

    def merge(self, parts: list[Stats]) -> Stats:
        out = {key: (np.copy(v) if isinstance(v, np.ndarray) else v) for key, v in parts[0].items()}
        for part in parts[1:]:
            for key, value in part.items():
                out[key] = out[key] + value
        return out

    def select(self, params_or_stats: dict, keep: np.ndarray) -> dict:
        return {
            key: (value[keep] if isinstance(value, np.ndarray) and value.ndim else value)
            for key, value in params_or_stats.items()
        }

    def context(self, sample: np.ndarray, weights: np.ndarray | None) -> Any:
        return None

    def recenter(self, params: Params, context: Any, new_context: Any) -> Params:
        return params

    def align_stats(self, stats: Stats, params: Params, reference: Params) -> Stats:
        return stats

    def invalid_stats(self, stats: Stats, nk: np.ndarray) -> str | None:
        return None

    def bound_fell_hint(self, params: Params) -> str:
        return (
            "EM's bound cannot fall in exact arithmetic when the M-step maximises it; a prior "
            "(pseudo-count) or round-off in near-degenerate components can make it fall"
        )

    def bound_falls_by_design(self, params: Params) -> bool:
        return False

    def bound_resolution(self, bound: float, params: Params) -> float:
        return 0.0

    # Part of the contract: whether :meth:`sample` takes a ``RandomState`` (an int random_state) and draws as
    # scikit-learn's mixtures do, its rows for its random_state; otherwise it always gets a ``Generator``. A
    # subclass of the Gaussian family that overrides sample with Generator-only calls sets it back to False.
    draws_as_scikit_learn = False

    def failure_summary(self, errors: list[str]) -> str | None:
        """The sentence that leads the error of a fit whose every restart failed with ``errors`` (None: none)."""
        return None

    def init_features(self, sample: np.ndarray, context: Any) -> np.ndarray:
        return np.asarray(sample, dtype=np.float64)

    def merge_criterion(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """The hierarchical start's per-cluster term ``term(n, s)``, or None for the Gaussian tree."""
        return None

    def start_given(self, settings: dict) -> bool:
        """True when user-given initial parameters leave nothing for a start to compute."""
        return False

    def init_params(self, x, w, resp: np.ndarray, context: Any, settings: dict) -> Params:
        """Initial parameters: the M-step of the sample's statistics under ``resp``.

        May return ``{"error": message}`` for a start that cannot be used, and
        ``"dropped"`` (indices of start components with no mass, left out).
        """
        rw = resp if w is None else resp * np.asarray(w, dtype=np.float64)[:, None]
        nk = rw.sum(0)
        keep = ~empty_components(nk, float(nk.sum()), x.shape[0])
        if not keep.any():
            return {"error": "at the start: the sample has no weight"}
        dropped = [int(k) for k in np.flatnonzero(~keep)]
        rw, nk = rw[:, keep], nk[keep]
        params = self.m_step(self.chunk_stats(self.prepare_rows(x), rw, {}), nk, {})
        params["weights"] = (nk + MASS_EPS) / (nk + MASS_EPS).sum()
        params["dropped"] = dropped
        return params

    def mixture_weights(self, nk: np.ndarray, params: Params) -> np.ndarray:
        """The mixture weights stored with the M-step's new ``params``."""
        mass = nk + MASS_EPS
        return mass / mass.sum()

    def round_bound(self, record: dict, params: Params) -> float:
        """The lower bound reported for a round: by default the entering parameters' mean log-likelihood."""
        return record["loglik"] / record["wsum"]

    def prepare_rows(self, x: np.ndarray) -> Any:
        return x

    def row_log_constant(self, xp: Any) -> np.ndarray | None:
        return None

    def total_log_constant(self, xp: Any, w: np.ndarray | None) -> float:
        rows = self.row_log_constant(xp)
        if rows is None:
            return 0.0
        return float(rows.sum() if w is None else np.dot(w, rows))

    def weighted_log_prob(self, x: np.ndarray, params: Params, context: Any) -> np.ndarray:
        n, k = x.shape[0], len(params["weights"])
        out = np.empty((n, k))
        panel = max(1, self.panel_rows or PANEL_CELLS // max(k, 1))
        with np.errstate(divide="ignore"):
            log_w = np.log(params["weights"])
        for lo in range(0, n, panel):
            xp = self.prepare_rows(x[lo : lo + panel])
            out[lo : lo + panel] = self.log_prob(xp, params) + log_w
            constant = self.row_log_constant(xp)
            if constant is not None:
                out[lo : lo + panel] += constant[:, None]
        return out

    def to_public(self, params: Params, context: Any) -> dict[str, Any]:
        return {f"{k}_": v for k, v in params.items() if k != "weights"}

    def estep(
        self, x: np.ndarray, w: np.ndarray | None, params_list: list[Params], context: Any,
        entropy: bool = False,
    ) -> list[dict]:
        """E-step of several restarts on one chunk: one record per restart.

        A record is ``{"loglik", "wsum", "entropy", "nk", "stats"}``: the
        (weighted) log-likelihood sum, the weight sum, the weighted sum of
        sum_k r log r (only with ``entropy``), the (K,) masses and the family's
        statistics. Works on panels of rows so the (rows, K) arrays stay small.
        """
        n = x.shape[0]
        ks = [len(p["weights"]) for p in params_list]
        # One panel size for all restarts, so each panel is prepared once.
        panel = max(1, min(n, self.panel_rows or PANEL_CELLS // max(ks)))
        with np.errstate(divide="ignore"):
            log_ws = [np.log(p["weights"]) for p in params_list]
        records = [{"loglik": 0.0, "wsum": 0.0, "entropy": 0.0, "nk": np.zeros(k), "stats": None} for k in ks]
        for lo in range(0, max(n, 1), panel):
            xp = self.prepare_rows(x[lo : lo + panel])
            wp = None if w is None else w[lo : lo + panel]
            constant = self.total_log_constant(xp, wp)
            for params, log_w, rec in zip(params_list, log_ws, records):
                # Component-major (K, rows): free when log_prob returns the transpose
                # of a (K, rows) product, as the built-in families do.
                wlp = np.ascontiguousarray(self.log_prob(xp, params).T)
                wlp += log_w[:, None]
                rec["loglik"] += constant
                rw = weighted_responsibilities(wlp, wp, entropy, rec)
                rec["nk"] += rw.sum(1)
                part = self.chunk_stats(xp, rw.T, params)
                rec["stats"] = part if rec["stats"] is None else self.merge([rec["stats"], part])
        return records


def merge_records(family: Family, records: list[dict]) -> dict:
    """Sum E-step records of one restart from several chunks."""
    return {
        "loglik": math.fsum(r["loglik"] for r in records),
        "wsum": math.fsum(r["wsum"] for r in records),
        "entropy": math.fsum(r["entropy"] for r in records),
        "nk": np.sum([r["nk"] for r in records], axis=0),
        "stats": family.merge([r["stats"] for r in records]),
    }
