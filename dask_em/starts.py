"""Starts: initial parameters from a uniform sample of rows drawn out-of-core.

A :class:`StartPlan` fixes, before any data is read, every restart's seed and
start kind and the rows of the sample; its :meth:`StartPlan.graph` reads the
sample and fits every start.

The sample is read in one pass (tasks ``em-init-sample-*``, one per row chunk
that holds sampled rows); each restart then fits its start on the sample in a
task of its own (``em-init-*``), so the restarts' k-means runs side by side on
the cluster. Restarts that follow scikit-learn's one stream (:attr:`StartPlan.chained`)
draw one after another instead (``em-init-draw-*``, each waiting for the state
the one before left, ``em-init-state-*``), and fit their starts side by side.
The initial parameters are the M-step of the sample's statistics under the
start's responsibilities, as scikit-learn computes them on all rows.
"""

from __future__ import annotations

import logging
import operator
import threading
from dataclasses import dataclass
from typing import Callable

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import delayed

from ._namespace import is_foreign, like, namespace, to_numpy, weights_like
from ._validation import child_sequence, is_int, scikit_learn_none, seed_sequence, state_sequence
from .family import SCIKIT_LEARN_STARTS, Family
from .io import check_weights
from .hierarchical import DEFAULT_MAX_ROWS, hc_responsibilities, term_responsibilities

INIT_METHODS = (*SCIKIT_LEARN_STARTS, "hierarchical")
# The starts of init_strategy="emEM": EMEM_FIRST (mclust's own start, the hierarchical tree
# of the sample), then MIXED_STARTS in turn. Measured by benchmarks/bench_optima.py at
# convergence (docs/optima.md): the tree alone, or k-means-like starts alone, each lose cases the
# other wins; a half-sample tree gives the hierarchical kind variety across restarts.
EMEM_FIRST = ("hierarchical",)
MIXED_STARTS = ("k-means++", "random_from_data", "kmeans-subsample", "hierarchical-subsample")
# When the sample holds more rows than one tree clusters (DEFAULT_MAX_ROWS), Mclust's start is a
# lottery over its random subset: on the generated 3,000-row sets of benchmarks/bench_optima.py
# (tol 1e-6), mclust under R seeds 0-3 beat emEM with one tree in 6-8 of 84 cases each, in
# different cases per seed. emEM then starts TREE_DRAWS trees, each on its own draw (the
# restart's seed), all run to convergence: worse cases per seed 4/4/3/6 with 3 trees, 2/3/3/5
# with 5 (docs/optima.md). Each costs a tree of 2,000 rows at the start (under a
# second) and a restart's E-step work in every round of the long phase (no extra read).
TREE_DRAWS = 5
# Start kinds that emEM never stops (restarts.keep_best, restarts.prune): mclust runs EM from its
# hierarchical start to convergence, so emEM's answer is never worse than that run's. A short
# phase judges it too early: at tol 1e-6, wine tied K=5 and K=6 lost mclust's optimum when the
# tree's restart was not among the best after 10 iterations (benchmarks/bench_optima.py).
PROTECTED_STARTS = ("hierarchical",)


def emem_methods(n_starts: int, sample_size: int | None = None) -> list[str]:
    """The start kind of each of emEM's short-phase restarts: ``n_starts`` of them, and more trees.

    ``sample_size``: the rows of the start's sample. With more than one tree clusters, the
    hierarchical start has :data:`TREE_DRAWS` restarts (each draws its own rows): the first in
    its place, the others after the ``n_starts``, so the other starts (kinds and seeds, by
    restart index) are those of a smaller sample. With fewer rows every tree would be the same.
    """
    first = list(EMEM_FIRST[:n_starts])
    methods = first + [MIXED_STARTS[i % len(MIXED_STARTS)] for i in range(n_starts - len(first))]
    if "hierarchical" in first and (sample_size or 0) > DEFAULT_MAX_ROWS:
        methods += ["hierarchical"] * (TREE_DRAWS - 1)
    return methods

logger = logging.getLogger("dask_em")


# The key of the sample's stream among the children of a fit's root stream (restart i's is i): fixed, so
# the sample is the same for any n_init.
SAMPLE_STREAM = 2**31
# Held while a fit takes a RandomState's stream or sets it (numpy's global one is shared by threads).
_TAKING_STATE = threading.Lock()


def take_stream(random_state: np.random.RandomState, taken: dict) -> tuple[tuple, tuple]:
    """A fit's take of ``random_state``: the state its starts draw from, and the state it is moved on to
    meanwhile, a stream of its own seeded from four words of this one (0.2 ms; a 2**128 jump took 1 ms), so
    that a fit started beside it on another thread takes another stream. The plans of one fit share one take
    (``taken``): a grid's candidates start as each would alone."""
    with _TAKING_STATE:
        if id(random_state) not in taken:
            first = random_state.get_state()
            words = random_state.randint(2**32, size=4, dtype=np.uint64)
            random_state.set_state(np.random.MT19937(np.random.SeedSequence(words)).state)
            taken[id(random_state)] = (first, random_state.get_state())
        return taken[id(random_state)]


def settle_stream(random_state: np.random.RandomState, moved: tuple, state: tuple) -> None:
    """Set ``random_state`` to ``state`` (where a fit's starts left it, or as the fit found it), unless
    another fit has taken it since this one moved it on to ``moved``."""
    with _TAKING_STATE:
        now = random_state.get_state()
        if now[2] == moved[2] and np.array_equal(now[1], moved[1]):
            random_state.set_state(state)


def default_sample_size(n_samples: int, n_components: int) -> int:
    """Rows for k-means: plenty per component, capped by the data."""
    return int(min(n_samples, max(20_000, 1_000 * n_components)))


def sample_indices(n_samples: int, size: int, rng: np.random.Generator) -> np.ndarray:
    if size >= n_samples:
        return np.arange(n_samples)
    return np.sort(rng.choice(n_samples, size=size, replace=False))


def _take_rows(block, local_rows, start: int, family: Family):
    if is_foreign(block):  # a chunk on a device: gather the sampled rows there, then copy them
        xp = namespace(block)
        rows = to_numpy(xp.take(block, like(local_rows, block, np.int64), axis=0))
    else:
        rows = np.asarray(block)[local_rows]
    bad = family.check_rows(rows)
    if bad is not None:
        index, what, fix = bad
        row = start + int(local_rows[index])
        stop = start + block.shape[0] - 1
        raise ValueError(
            f"{what} in rows {start}-{stop}; the first found is row {row} (read while "
            f"drawing the initialisation sample). {fix}"
        )
    return rows


def _take_weights(block, local_rows, lo=0, index=0):
    """The sampled rows' weights (float64, on the host), refused as the E-step would refuse them: a bad weight
    among them would otherwise reach the start as a numerical failure."""
    if is_foreign(block):  # weights on a device: the sampled ones gathered there, then copied
        xp = namespace(block)
        block = xp.take(xp.reshape(block, (-1,)), like(local_rows, block, np.int64), axis=0)
        taken = to_numpy(block, np.float64)
    else:
        taken = np.asarray(block, dtype=np.float64).reshape(-1)[local_rows]
    check_weights(taken, f"row {{}} + {lo} (chunk {index})", rows=local_rows)  # as the E-step names a row
    return taken


def _concat(parts):
    return np.concatenate(parts, axis=0)


def sample_graph(X: da.Array, w: da.Array | None, indices: np.ndarray, family: Family, salt: str = ""):
    """Delayed (rows, weights) of the sampled rows, one read task per chunk."""
    token = tokenize(X, w, indices, salt)
    bounds = np.cumsum((0,) + X.chunks[0])
    blocks = X.to_delayed().ravel()
    wblocks = w.to_delayed().ravel() if w is not None else [None] * len(blocks)
    rows, weights = [], []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        sel = indices[(indices >= lo) & (indices < hi)] - lo
        if sel.size == 0:
            continue
        rows.append(
            delayed(_take_rows, pure=True)(
                blocks[i], sel, int(lo), family, dask_key_name=(f"em-init-sample-{token}", i)
            )
        )
        if wblocks[i] is not None:
            weights.append(
                delayed(_take_weights, pure=True)(
                    wblocks[i], sel, int(lo), i, dask_key_name=(f"em-init-sample-weight-{token}", i)
                )
            )
    sample = delayed(_concat, pure=True)(rows, dask_key_name=f"em-init-sample-{token}")
    sw = (
        delayed(_concat, pure=True)(weights, dask_key_name=f"em-init-sample-weight-{token}")
        if weights
        else None
    )
    return sample, sw


def start_responsibilities(
    xc: np.ndarray, n_components: int, method: str, seed: int | np.random.RandomState,
    merge_term: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Responsibilities of the sample rows under one restart's start.

    ``seed``: an int (the start draws from ``RandomState(seed)``), or a
    ``RandomState`` drawn from (and advanced) as scikit-learn draws its
    starts. ``merge_term`` (:meth:`Family.merge_criterion`) replaces the
    Gaussian tree of the hierarchical starts by the family's own criterion.
    """
    from sklearn.cluster import KMeans, kmeans_plusplus

    n = xc.shape[0]
    if isinstance(seed, np.random.RandomState):
        rng = seed
        if method.startswith("hierarchical"):  # the trees take an int seed
            seed = int(rng.randint(2**31))
    else:
        rng = np.random.RandomState(seed)
    resp = np.zeros((n, n_components))
    if method == "kmeans":
        # More components than distinct rows: KMeans's ConvergenceWarning says so, as in scikit-learn's start.
        labels = KMeans(n_clusters=n_components, n_init=1, random_state=rng).fit(xc).labels_
        resp[np.arange(n), labels] = 1
    elif method == "random":
        resp = rng.uniform(size=(n, n_components))
        resp /= resp.sum(1, keepdims=True)
    elif method == "random_from_data":
        idx = rng.choice(n, size=n_components, replace=False)
        resp[idx, np.arange(n_components)] = 1
    elif method == "k-means++":
        _, idx = kmeans_plusplus(xc, n_components, random_state=rng)
        resp[idx, np.arange(n_components)] = 1
    elif method == "kmeans-subsample":
        # k-means on a random half of the sample: restarts see different data.
        half = rng.choice(n, size=max(n_components, n // 2), replace=False)
        km = KMeans(n_clusters=n_components, n_init=1, random_state=rng).fit(xc[half])
        resp[np.arange(n), km.predict(xc)] = 1
    elif method == "hierarchical-subsample":
        # The same tree on a random half of the sample (at most 2,000 rows, drawn with this
        # restart's seed), the rest by E-step: emEM's restarts get different partitions even
        # when the sample is small enough for "hierarchical" to be deterministic.
        rows = max(n_components, min(DEFAULT_MAX_ROWS, n // 2))
        if merge_term is not None:
            resp = term_responsibilities(xc, n_components, merge_term, rng=seed, max_rows=rows)
        else:
            resp = hc_responsibilities(xc, n_components, rng=seed, max_rows=rows, others="posterior")
    elif method == "hierarchical" and merge_term is not None:
        # The family's own criterion (a discrete family): at most 2,000 rows clustered,
        # the start's M-step on those.
        resp = term_responsibilities(xc, n_components, merge_term, rng=seed)
    elif method == "hierarchical":
        # mclust's start: the "VVV" model-based tree on the SVD-transformed sample,
        # at most 2,000 rows clustered (drawn with this restart's seed; transformed by their
        # own moments, as hc(data[subset, ])); the start's M-step on those rows, as Mclust's.
        resp = hc_responsibilities(xc, n_components, rng=seed)
    else:  # pragma: no cover - validated by the estimator
        raise ValueError(method)
    return resp


def init_restart(family: Family, sample, sample_weight, context, *, settings: dict, method: str, seed: int,
                 state: tuple | None = None) -> dict:
    """Initial parameters of one restart: a start's responsibilities, then the family's M-step.

    With ``state`` (a ``RandomState``'s state), the start draws from that state instead of
    ``seed``, and the state it leaves is returned under ``"rng_state"``.
    """
    rows = _whole_rows(family, sample, sample_weight)
    return _params_from(family, rows, sample_weight, context, settings,
                        _drawn(family, rows, context, settings, method, seed, state))


def draw_start(family: Family, sample, sample_weight, context, *, settings: dict, method: str, seed: int,
               state: tuple | None = None) -> dict:
    """The random part of :func:`init_restart`: ``{"resp": the start's responsibilities (None for a start the
    user gave), "rng_state": the state a RandomState drawn from is left in (None when drawing from seed)}``.

    The family's M-step (:func:`start_params`) draws nothing, so chained restarts (each drawing from
    the ``state`` the one before left) wait for each other's draws only and compute their M-steps
    side by side.
    """
    return _drawn(family, _whole_rows(family, sample, sample_weight), context, settings, method, seed, state)


def start_params(family: Family, sample, sample_weight, context, *, settings: dict, drawn: dict) -> dict:
    """Initial parameters of a restart from its :func:`draw_start` (its ``rng_state`` passed on)."""
    # The sample's missing values are filled again here (column means, cheap beside the draw), so that the
    # filled sample need not travel from the draw's task.
    rows = _whole_rows(family, sample, sample_weight, log=False)
    return _params_from(family, rows, sample_weight, context, settings, drawn)


def _drawn(family: Family, rows, context, settings: dict, method: str, seed: int, state: tuple | None) -> dict:
    rng = None
    if state is not None:
        rng = np.random.RandomState()
        rng.set_state(state)
    resp = None
    if not family.start_given(settings):
        features = family.init_features(rows, context)
        resp = start_responsibilities(features, settings["n_components"], method, seed if rng is None else rng,
                                      merge_term=family.merge_criterion())
    return {"resp": resp, "rng_state": None if rng is None else rng.get_state(), "method": method}


def _params_from(family: Family, rows, sample_weight, context, settings: dict, drawn: dict) -> dict:
    try:
        # The start's kind travels with the settings: the Gaussian start weighs its components as the
        # library whose start it is (scikit-learn's four, or mclust's trees).
        settings = {**settings, "start": drawn["method"]}
        params = family.init_params(rows, sample_weight, drawn["resp"], context, settings)
    except (ArithmeticError, np.linalg.LinAlgError) as exc:
        params = {"error": f"at the start: {exc}"}
    params.setdefault("dropped", [])
    if drawn["rng_state"] is not None:
        params["rng_state"] = drawn["rng_state"]
    return params


def _whole_rows(family: Family, sample, sample_weight, log: bool = True):
    """The sample with its missing values filled for the start (k-means and the start's M-step need whole
    rows; EM itself marginalises)."""
    if family.missing != "error":
        sample = np.asarray(sample)
        if sample.dtype.kind == "f":
            holes = int(np.isnan(sample).sum())
            if holes:
                if log:
                    logger.info(
                        "the start filled %d missing value(s) of its %d-row sample (family.fill_for_start: "
                        "column means of the observed values), for the start only", holes, sample.shape[0],
                    )
                sample = family.fill_for_start(sample, sample_weight)
    return sample


def init_graph(
    X: da.Array,
    w: da.Array | None,
    *,
    family: Family,
    settings: dict,
    method: str | list[str],
    seeds: list[int],
    sample_rows: np.ndarray,
    salt: str = "",
    first_state: tuple | None = None,
    chained: bool = False,
):
    """Delayed (context, [params of each restart]) for one compute.

    ``settings`` (``n_components`` and anything family-specific, such as
    user-given initial parameters) go to :meth:`Family.init_params`;
    ``first_state``, a ``RandomState``'s state the first restart draws from.
    ``chained``: each later restart draws on from the state the one before it
    left, as scikit-learn's initialisations share one stream (the draws then
    run one after another, the M-steps side by side); otherwise each draws from
    its own seed, side by side.
    """
    methods = [method] * len(seeds) if isinstance(method, str) else list(method)
    sample, sw = sample_graph(X, w, sample_rows, family, salt)
    token = tokenize(sample, sw, seeds, methods, family, settings, first_state, chained)
    context = delayed(family.context, pure=True)(
        sample, sw, dask_key_name=f"em-init-context-{tokenize(sample, sw, family)}"
    )
    if not chained:
        starts = [
            delayed(init_restart, pure=True)(
                family, sample, sw, context, settings=settings, method=methods[i], seed=seed,
                state=first_state if i == 0 else None, dask_key_name=f"em-init-{token}-{i}",
            )
            for i, seed in enumerate(seeds)
        ]
        return delayed(tuple, pure=True)([context, starts], dask_key_name=f"em-init-collect-{token}")
    # Chained: each draw waits for the state the one before left (not its responsibilities); each start's
    # M-step runs as soon as its draw is done.
    draws: list = []
    for i, seed in enumerate(seeds):
        state = first_state
        if draws:  # a small task beside the draw before: its state travels, its responsibilities do not
            state = delayed(operator.getitem, pure=True)(draws[-1], "rng_state",
                                                         dask_key_name=f"em-init-state-{token}-{i}")
        draws.append(delayed(draw_start, pure=True)(
            family, sample, sw, context, settings=settings, method=methods[i], seed=seed, state=state,
            dask_key_name=f"em-init-draw-{token}-{i}",
        ))
    starts = [
        delayed(start_params, pure=True)(
            family, sample, sw, context, settings=settings, drawn=draw, dask_key_name=f"em-init-{token}-{i}",
        )
        for i, draw in enumerate(draws)
    ]
    return delayed(tuple, pure=True)([context, starts], dask_key_name=f"em-init-collect-{token}")


@dataclass
class StartPlan:
    """Every restart's seed and start kind, and the sample's rows, for one model (no data read).

    Seeds and sample rows depend only on ``random_state``, the number of
    starts, K and n, so a candidate of a model-selection grid starts exactly
    as the estimator fitted alone.
    """

    family: Family
    settings: dict
    seeds: list[int]
    methods: list[str]
    sample_rows: np.ndarray
    variant: str | None = None
    # Settings that need the data (e.g. a prior from the moments of all rows):
    # a function (X, w) -> {name: Delayed}, computed with the start, sharing its reads.
    data_settings: Callable[[da.Array, da.Array | None], dict] | None = None
    # A RandomState given as random_state (owner): the first restart draws from its state, as scikit-learn's
    # first initialisation draws from it, and the instance is left where the starts left its stream; meanwhile
    # it holds moved_state (take_stream).
    first_state: tuple | None = None
    owner: np.random.RandomState | None = None
    # Where the sample is every row and restart 0 draws from a RandomState, the later restarts draw on
    # from the stream it leaves, one after another, as scikit-learn's initialisations: the same
    # random_state then gives scikit-learn's starts for every n_init.
    chained: bool = False
    moved_state: tuple | None = None

    @classmethod
    def make(
        cls,
        family: Family,
        settings: dict,
        *,
        n_samples: int,
        n_starts: int,
        methods: list[str] | str,
        random_state,
        sample_size: int | None,
        variant: str | None = None,
        data_settings: Callable[[da.Array, da.Array | None], dict] | None = None,
        chain: bool = False,
        taken: dict | None = None,
    ) -> "StartPlan":
        """The plan of ``n_starts`` restarts; ``chain``: scikit-learn's ``n_init`` scheme (one kind of start),
        whose restarts draw on from one stream where the sample is every row and ``random_state`` is an int
        or a ``RandomState`` (:attr:`chained`); ``taken``: the fit's takes of its RandomStates
        (:func:`take_stream`)."""
        random_state = scikit_learn_none(random_state)
        given = isinstance(random_state, np.random.RandomState)
        moved_state = None
        if given:
            first_state, moved_state = take_stream(random_state, {} if taken is None else taken)
            root = state_sequence(first_state)
        else:
            root = seed_sequence(random_state)
        # Children at fixed keys: restart i's stream is the same for any n_init, and so is the sample's.
        seeds = [int(child_sequence(root, i).generate_state(1)[0]) for i in range(n_starts)]
        sample_seed = child_sequence(root, SAMPLE_STREAM)
        int_seed = is_int(random_state) and 0 <= random_state < 2**32
        if int_seed and seeds:
            # scikit-learn's first initialisation draws from RandomState(random_state): so does the first
            # restart's, and the same random_state gives scikit-learn's start where the sample is every row.
            seeds[0] = int(random_state)
        size = sample_size or default_sample_size(n_samples, settings["n_components"])
        rows = sample_indices(n_samples, min(size, n_samples), np.random.default_rng(sample_seed))
        methods = [methods] * n_starts if isinstance(methods, str) else list(methods)
        chained = bool(chain and (given or int_seed) and n_starts > 1 and len(rows) == n_samples)
        if not given:
            first_state = np.random.RandomState(seeds[0]).get_state() if chained else None
        return cls(family, settings, seeds, methods, rows, variant, data_settings,
                   first_state, random_state if given else None, chained, moved_state)

    def give_back(self) -> None:
        """Leave the ``RandomState`` given as ``random_state`` as this plan found it: its starts are not
        drawn (a warm start, a resumed checkpoint, a fit refused before its starts), as scikit-learn's fit
        then draws nothing."""
        if self.owner is not None:
            settle_stream(self.owner, self.moved_state, self.first_state)

    def graph(self, X: da.Array, w: da.Array | None, salt: str = ""):
        """Delayed (context, [params of each start]) for one compute."""
        settings = self.settings if self.data_settings is None else {**self.settings, **self.data_settings(X, w)}
        return init_graph(
            X, w, family=self.family, settings=settings, method=self.methods, seeds=self.seeds,
            sample_rows=self.sample_rows, salt=salt, first_state=self.first_state, chained=self.chained,
        )


# ---------------------------------------------------------------------------
# The moments of all rows (data-dependent priors), read in the start's compute
# ---------------------------------------------------------------------------


def chunk_moments(x, w=None, full: bool = True) -> dict:
    """Weight, mean and scatter about the mean of one chunk (scatter (d, d) or its diagonal (d,))."""
    if is_foreign(x):
        return _foreign_chunk_moments(x, w, full)
    x = np.asarray(x, dtype=np.float64)
    if w is None:
        n = float(x.shape[0])
        mean = x.mean(0) if x.shape[0] else np.zeros(x.shape[1])
        centered = x - mean
        wc = centered
    else:
        w = to_numpy(w, np.float64).reshape(-1)
        n = float(w.sum())
        mean = (w @ x) / n if n > 0 else np.zeros(x.shape[1])
        centered = x - mean
        wc = centered * w[:, None]
    scatter = wc.T @ centered if full else np.einsum("ij,ij->j", wc, centered)
    return {"n": n, "mean": mean, "scatter": scatter}


def _foreign_chunk_moments(x, w, full: bool) -> dict:
    """:func:`chunk_moments` of a chunk of another array-API library, computed on its device."""
    xp = namespace(x)
    x = xp.astype(x, xp.float64)
    if w is None:
        n = float(x.shape[0])
        mean = xp.mean(x, axis=0) if x.shape[0] else like(np.zeros(x.shape[1]), x)
        wc = centered = x - mean
    else:
        w = weights_like(w, x)
        n = float(xp.sum(w))
        mean = xp.sum(x * w[:, None], axis=0) / n if n > 0 else like(np.zeros(x.shape[1]), x)
        centered = x - mean
        wc = centered * w[:, None]
    scatter = xp.matrix_transpose(wc) @ centered if full else xp.sum(wc * centered, axis=0)
    return {"n": n, "mean": to_numpy(mean), "scatter": to_numpy(scatter)}


def merge_moments(parts: list[dict]) -> dict:
    """Chan et al.'s pairwise update: exact merging of centered moments."""
    out = parts[0]
    for part in parts[1:]:
        n = out["n"] + part["n"]
        if part["n"] == 0:
            continue
        if out["n"] == 0:
            out = part
            continue
        delta = part["mean"] - out["mean"]
        mean = out["mean"] + delta * (part["n"] / n)
        cross = np.outer(delta, delta) if out["scatter"].ndim == 2 else delta**2
        scatter = out["scatter"] + part["scatter"] + cross * (out["n"] * part["n"] / n)
        out = {"n": n, "mean": mean, "scatter": scatter}
    return out


def data_moments_graph(X, w, covariance_type: str, split_every: int = 8):
    """Delayed moments of all rows of the dask array ``X``: a tree of merges over its chunks.

    Computed with the initialisation sample, it shares each chunk read with it.
    """
    full = covariance_type in ("full", "tied")
    token = tokenize(X, w, full)
    blocks = X.to_delayed().ravel()
    wblocks = w.to_delayed().ravel() if w is not None else [None] * len(blocks)
    level = [
        delayed(chunk_moments, pure=True)(b, wb, full, dask_key_name=(f"em-prior-moments-{token}", i))
        for i, (b, wb) in enumerate(zip(blocks, wblocks))
    ]
    depth = 0
    while len(level) > 1:
        depth += 1
        level = [
            delayed(merge_moments, pure=True)(
                level[i : i + split_every], dask_key_name=(f"em-prior-merge-{token}-{depth}", i)
            )
            for i in range(0, len(level), split_every)
        ]
    return level[0]
