"""Chunks of any array-API library, fitted on their device: the code a GPU runs, run on CPU.

``array_api_strict`` holds the arrays here, on its second emulated device
(``device1``), where it refuses any implicit conversion to numpy, as CuPy does
on a GPU: a numpy-only call in the device path fails these tests. Results are
checked against the numpy kernels and against scikit-learn's own array-API
``GaussianMixture``.
"""

import os
import warnings

import dask.array as da
from dask.array.dispatch import concatenate_lookup
from dask.core import flatten
from dask.local import get_sync
import numpy as np
import pytest
import sklearn
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from conftest import assert_close, mixture, sklearn_start
from dask_em import BayesianGaussianMixture, BernoulliMixture, GaussianMixture, select_model
from dask_em._namespace import to_numpy
from dask_em.gaussian import GaussianFamily

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
xps = pytest.importorskip("array_api_strict")
DEVICE = xps.Device("device1")


def on_device(a):
    return xps.asarray(np.asarray(a), device=DEVICE)


ARRAY = type(on_device(np.zeros(1)))

# dask concatenates CuPy blocks through its registration of CuPy's concatenate; the emulated
# device's arrays get the same registration here (dask's blocks of one chunk pass through it).
concatenate_lookup.register(ARRAY, lambda arrays, axis=0: xps.concat(list(arrays), axis=axis))


def device_chunks(X, rows):
    """A dask array whose chunks live on the emulated device (dask's meta stays numpy)."""
    return da.from_array(X, chunks=(rows, -1)).map_blocks(on_device, dtype=X.dtype, meta=np.empty((0, 0), X.dtype))


def blocks(lazy):
    """The blocks of a lazy result, each as computed (dask cannot concatenate array_api_strict)."""
    keys = list(flatten(lazy.__dask_keys__()))
    return get_sync(dict(lazy.__dask_graph__()), keys)


@pytest.fixture(scope="module")
def data():
    X, _, _ = mixture(np.random.default_rng(7), n=900, d=3, k=3, offset=5.0)
    return X


def assert_stats_close(got, ref, rtol, x, c, w=None):
    """Statistics equal up to the round-off of their sums: each adds n terms of at most
    max|x - c|**2 (times the row weight) in size, so an entry near zero (a centered
    mean's sum) carries absolute round-off of that size, whatever the BLAS kernel."""
    scale = len(x) * max(1.0, float(np.abs(x - c).max())) ** 2 * (1.0 if w is None else float(np.max(w)))
    assert ref.keys() == got.keys()
    for key, value in ref.items():
        np.testing.assert_allclose(got[key], value, rtol=rtol, atol=rtol * scale, err_msg=key)


def fitted_params(X, ct):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(3, covariance_type=ct, max_iter=2, random_state=0).fit(X)
    c = X.mean(0)
    return c, {"weights": gm.weights_, "means": gm.means_ - c, "precisions_cholesky": gm.precisions_cholesky_,
               "covariances": gm.covariances_, "covariance_type": ct}


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical", "VEV", "EEI"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_estep_on_a_device_equals_the_numpy_kernels(data, ct, dtype):
    c, params = fitted_params(data, ct)
    params["compute_dtype"] = dtype
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(data))
    family = GaussianFamily()
    ref = family.estep(data, w, [params], c, entropy=True)[0]
    got = family.estep(on_device(data), w, [params], c, entropy=True)[0]
    # float64: the same sums in another order; float32: two float32 computations of them.
    rtol = 1e-12 if dtype == "float64" else 1e-5
    for key in ("loglik", "wsum", "entropy"):
        assert got[key] == pytest.approx(ref[key], rel=rtol)
    assert_close(got["nk"], ref["nk"], rtol=rtol)
    assert_stats_close(got["stats"], ref["stats"], rtol, data, c, w)


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical", "VEV", "EEI"])
def test_the_array_api_kernel_under_numpy_equals_the_numpy_kernels(data, ct):
    """The device kernel itself, run with numpy as its namespace (array_api_compat's numpy)."""
    from dask_em import _array_api

    c, params = fitted_params(data, ct)
    ref = GaussianFamily().estep(data, None, [params], c, entropy=True)[0]
    got = _array_api.estep(data, None, [params], c, True, [np.dtype(np.float64)])[0]
    assert got["loglik"] == pytest.approx(ref["loglik"], rel=1e-12)
    assert_stats_close(got["stats"], ref["stats"], 1e-12, data, c)


def test_estep_shares_each_tile_between_restarts(data):
    """Several restarts of several types in one call: each as it is alone."""
    c, full = fitted_params(data, "full")
    _, diag = fitted_params(data, "diag")
    family = GaussianFamily()
    x = on_device(data)
    together = family.estep(x, None, [full, diag], c)
    for params, rec in zip([full, diag], together):
        alone = family.estep(x, None, [params], c)[0]
        assert rec["loglik"] == alone["loglik"]
        for key, value in alone["stats"].items():
            np.testing.assert_array_equal(rec["stats"][key], value)


@pytest.mark.parametrize("ct", ["full", "diag", "tied", "spherical", "VVE"])
def test_fit_of_device_chunks_equals_the_numpy_fit(data, ct):
    X = da.from_array(data, chunks=(300, -1))
    settings = dict(n_components=3, covariance_type=ct, random_state=0, tol=1e-8)
    ref = GaussianMixture(**settings).fit(X)
    got = GaussianMixture(**settings).fit(device_chunks(data, 300))
    assert got.n_iter_ == ref.n_iter_
    assert got.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-12)
    # VVE's M-step iterates (an MM algorithm) to its own tolerance, which round-off in the
    # statistics moves by ~1e-9; the closed forms keep the E-step's round-off.
    rtol = 1e-8 if ct == "VVE" else 1e-10
    assert_close(got.means_, ref.means_, rtol=rtol)
    assert_close(got.covariances_, ref.covariances_, rtol=rtol)
    assert_close(got.weights_, ref.weights_, rtol=rtol)


@pytest.mark.parametrize("settings", [
    {"accelerate": "squarem"}, {"init_params": "hierarchical", "covariance_type": "VVV"}, {"stepwise_passes": 2},
    {"prior": "default", "reg_covar": 0.0}, {"init_strategy": "emEM", "n_init": 4},
], ids=lambda s: "-".join(map(str, s.values())))
def test_every_route_of_a_fit_reads_device_chunks(data, settings):
    ref = GaussianMixture(3, random_state=0, **settings).fit(da.from_array(data, chunks=(300, -1)))
    got = GaussianMixture(3, random_state=0, **settings).fit(device_chunks(data, 300))
    assert got.n_iter_ == ref.n_iter_
    assert_close(got.means_, ref.means_, rtol=1e-10)


def test_checkpointed_fit_of_device_chunks_resumes(data, tmp_path):
    path = str(tmp_path / "fit.npz")
    ref = GaussianMixture(3, random_state=0, tol=1e-8).fit(data)
    GaussianMixture(3, random_state=0, tol=1e-8, max_iter=2).fit(device_chunks(data, 300), checkpoint=path)
    got = GaussianMixture(3, random_state=0, tol=1e-8).fit(device_chunks(data, 300), checkpoint=path, resume=True)
    assert got.n_iter_ == ref.n_iter_
    assert_close(got.means_, ref.means_, rtol=1e-10)


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_float32_and_weighted_fit_of_device_chunks(data, ct):
    w = np.random.default_rng(2).uniform(0.2, 3.0, len(data))
    settings = dict(n_components=3, covariance_type=ct, random_state=0, tol=0, max_iter=15, compute_dtype="float32")
    ref = GaussianMixture(**settings).fit(data, sample_weight=w)
    got = GaussianMixture(**settings).fit(device_chunks(data, 250), sample_weight=da.from_array(w, chunks=250))
    # Two float32 computations of the same iterations: float32's stated tolerance (1e-4).
    assert_close(got.means_, ref.means_, rtol=1e-4)
    assert_close(got.covariances_, ref.covariances_, rtol=1e-4)


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_bayesian_fit_of_device_chunks(data, ct):
    settings = dict(n_components=4, covariance_type=ct, random_state=0, tol=1e-8, max_iter=200)
    ref = BayesianGaussianMixture(**settings).fit(data)
    got = BayesianGaussianMixture(**settings).fit(device_chunks(data, 300))
    assert got.n_iter_ == ref.n_iter_
    assert_close(got.means_, ref.means_, rtol=1e-10)
    assert_close(got.weight_concentration_, ref.weight_concentration_, rtol=1e-10)


def test_missing_values_on_device_chunks(data):
    X = data.copy()
    X[np.random.default_rng(3).random(X.shape) < 0.05] = np.nan
    w = np.random.default_rng(4).uniform(0.5, 2.0, len(X))
    for ct in ("full", "diag"):
        settings = dict(n_components=3, covariance_type=ct, random_state=0, tol=1e-8, missing="marginalize")
        ref = GaussianMixture(**settings).fit(da.from_array(X, chunks=(300, -1)), sample_weight=w)
        got = GaussianMixture(**settings).fit(device_chunks(X, 300), sample_weight=w)
        assert got.n_iter_ == ref.n_iter_
        assert_close(got.means_, ref.means_, rtol=1e-10)
        assert_close(got.covariances_, ref.covariances_, rtol=1e-10)


def discrete_data(name, rng):
    if name == "bernoulli":
        return (rng.random((600, 5)) < np.linspace(0.1, 0.9, 5)).astype(np.uint8), {}
    if name == "poisson":
        return rng.poisson(np.linspace(0.5, 20.0, 4), size=(600, 4)).astype(np.int64), {}
    return rng.integers(0, 3, size=(600, 4)).astype(np.int32), {"n_categories": 3}


@pytest.mark.parametrize("name", ["bernoulli", "poisson", "categorical"])
def test_discrete_families_on_device_chunks(name):
    from dask_em import CategoricalMixture, PoissonMixture

    cls = {"bernoulli": BernoulliMixture, "poisson": PoissonMixture, "categorical": CategoricalMixture}[name]
    X, kw = discrete_data(name, np.random.default_rng(4))
    w = np.random.default_rng(5).uniform(0.5, 2.0, len(X))
    ref = cls(3, random_state=0, tol=1e-8, **kw).fit(da.from_array(X, chunks=(200, -1)), sample_weight=w)
    got = cls(3, random_state=0, tol=1e-8, **kw).fit(device_chunks(X, 200), sample_weight=w)
    assert got.n_iter_ == ref.n_iter_
    assert got.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-12)
    state, gstate = ref.fitted_state(), got.fitted_state()
    for key, value in state.params.items():
        if isinstance(value, np.ndarray):
            assert_close(gstate.params[key], value, rtol=1e-10, err_msg=key)
    # The E-step ran on the device: the records equal the numpy kernels', entropy included.
    family = got.fitted_state().family
    records = family.estep(on_device(X), w, [gstate.params], gstate.context, entropy=True)[0]
    expected = family.estep(X, w, [gstate.params], gstate.context, entropy=True)[0]
    for key in ("loglik", "wsum", "entropy"):
        assert records[key] == pytest.approx(expected[key], rel=1e-12)
    assert_stats_close(records["stats"], expected["stats"], 1e-12, X, 0.0, w)
    for method in ("predict", "predict_proba", "score_samples"):
        parts = blocks(getattr(got, method)(device_chunks(X, 200)))
        assert all(isinstance(b, ARRAY) and b.device == DEVICE for b in parts), method
        out = np.concatenate([to_numpy(b) for b in parts])
        if method == "predict":
            np.testing.assert_array_equal(out, ref.predict(X))
        else:
            assert_close(out, getattr(ref, method)(X), rtol=1e-12)


def test_invalid_rows_on_a_device_are_named():
    X = np.zeros((400, 3))
    X[250, 1] = 2.0
    with pytest.raises(ValueError, match="in rows 200-399.*row 250"):
        BernoulliMixture(2, random_state=0).fit(device_chunks(X, 200))


def test_a_user_family_reads_device_chunks_on_the_host():
    from dask_em import Mixture

    sys_path_examples = os.path.join(os.path.dirname(__file__), "..", "examples")
    import importlib.util

    spec = importlib.util.spec_from_file_location("custom_family", os.path.join(sys_path_examples, "custom_family.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    X = np.random.default_rng(6).exponential(size=(400, 2)) * np.array([1.0, 5.0])
    ref = Mixture(module.Exponential(), 2, random_state=0).fit(X)
    got = Mixture(module.Exponential(), 2, random_state=0).fit(device_chunks(X, 200))
    assert got.n_iter_ == ref.n_iter_
    assert got.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-12)
    parts = blocks(got.predict(device_chunks(X, 200)))
    assert all(isinstance(b, ARRAY) and b.device == DEVICE for b in parts)


def test_inference_stays_on_the_chunks_device(data):
    model = GaussianMixture(3, random_state=0).fit(data)
    X = device_chunks(data, 300)
    for method in ("predict", "predict_proba", "score_samples"):
        parts = blocks(getattr(model, method)(X))
        assert all(isinstance(b, ARRAY) and b.device == DEVICE for b in parts), method
        got = np.concatenate([to_numpy(b) for b in parts])
        want = getattr(model, method)(data)
        if method == "predict":
            np.testing.assert_array_equal(got, want)
        else:
            assert_close(got, want, rtol=1e-12)


@pytest.fixture
def dispatch(monkeypatch):
    # scikit-learn refuses array_api_dispatch unless scipy's array API support is asked for.
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    with sklearn.config_context(array_api_dispatch=True):
        yield


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_in_memory_arrays_follow_scikit_learns_array_api_convention(data, ct, dispatch):
    x = on_device(data)
    with sklearn.config_context(array_api_dispatch=False):  # the same start for both: the same iterations
        start = sklearn_start(data, 3, ct)
    settings = dict(covariance_type=ct, init_params="random", random_state=0, tol=0, max_iter=12)
    start = {k: on_device(v) for k, v in start.items()}  # as scikit-learn takes them: on the data's device
    theirs = SkGaussianMixture(3, **start, **settings).fit(x)
    ours = GaussianMixture(3, **start, **settings).fit(x)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        value = getattr(ours, name)
        assert isinstance(value, ARRAY) and value.device == DEVICE, name
        assert value.dtype == getattr(theirs, name).dtype
        assert_close(to_numpy(value), to_numpy(getattr(theirs, name)), rtol=1e-10, err_msg=name)
    for method in ("predict", "predict_proba", "score_samples"):
        out = getattr(ours, method)(x)
        assert isinstance(out, ARRAY) and out.device == DEVICE, method
        if method == "predict":
            np.testing.assert_array_equal(to_numpy(out), to_numpy(theirs.predict(x)))
        else:
            assert_close(to_numpy(out), to_numpy(getattr(theirs, method)(x)), rtol=1e-10)
    sample, labels = ours.sample(5)
    assert isinstance(sample, ARRAY) and sample.device == DEVICE
    # scikit-learn's bound is a 0-d array of the input's library; ours a Python float of the same value.
    assert isinstance(theirs.lower_bound_, ARRAY) and isinstance(ours.lower_bound_, float)
    assert float(ours.lower_bound_) == pytest.approx(float(theirs.lower_bound_), rel=1e-10)


def test_float32_arrays_under_dispatch_keep_scikit_learns_dtypes(data, dispatch):
    x = on_device(data.astype(np.float32))
    settings = dict(init_params="random_from_data", random_state=0, max_iter=5, tol=0)
    theirs = SkGaussianMixture(3, **settings).fit(x)
    ours = GaussianMixture(3, **settings).fit(x)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert getattr(ours, name).dtype == getattr(theirs, name).dtype == xps.float32, name
    for method in ("predict_proba", "score_samples"):
        out = getattr(ours, method)(x)
        assert isinstance(out, ARRAY) and out.device == DEVICE
        assert out.dtype == getattr(theirs, method)(x).dtype == xps.float32, method


def test_in_memory_array_api_input_without_dispatch_gives_numpy_attributes(data):
    x = on_device(data)
    model = GaussianMixture(3, random_state=0).fit(x)
    assert isinstance(model.means_, np.ndarray)
    ref = GaussianMixture(3, random_state=0).fit(data)
    assert_close(model.means_, ref.means_, rtol=1e-10)
    labels = model.predict(x)  # results live where the data lives
    assert isinstance(labels, ARRAY) and labels.device == DEVICE
    np.testing.assert_array_equal(to_numpy(labels), ref.predict(data))


def test_bayesian_mixture_on_in_memory_device_arrays(data, dispatch):
    # scikit-learn's BayesianGaussianMixture does not take array-API input; ours does.
    model = BayesianGaussianMixture(n_components=3, random_state=0).fit(on_device(data))
    ref = BayesianGaussianMixture(n_components=3, random_state=0).fit(data)
    assert isinstance(model.means_, ARRAY)
    assert_close(to_numpy(model.means_), ref.means_, rtol=1e-10)


def test_fitted_attributes_of_tuples_and_lists_are_in_the_inputs_namespace(data, dispatch):
    from dask_em import CategoricalMixture

    model = BayesianGaussianMixture(n_components=3, random_state=0).fit(on_device(data))
    ref = BayesianGaussianMixture(n_components=3, random_state=0).fit(data)
    assert isinstance(model.weight_concentration_, tuple) and len(model.weight_concentration_) == 2
    for got, want in zip(model.weight_concentration_, ref.weight_concentration_):
        assert isinstance(got, ARRAY) and got.device == DEVICE
        assert_close(to_numpy(got), want, rtol=1e-10)
    X, _ = discrete_data("categorical", np.random.default_rng(4))
    cat = CategoricalMixture(2, n_categories=[3, 3, 4, 3], random_state=0).fit(on_device(X))
    ref = CategoricalMixture(2, n_categories=[3, 3, 4, 3], random_state=0).fit(X)
    assert isinstance(cat.probabilities_, list)
    for got, want in zip(cat.probabilities_, ref.probabilities_):
        assert isinstance(got, ARRAY) and got.device == DEVICE
        assert_close(to_numpy(got), want, rtol=1e-10)


def device_weights(w, rows):
    return da.from_array(w, chunks=rows).map_blocks(on_device, dtype=w.dtype, meta=np.empty((0,), w.dtype))


def test_row_weights_on_the_device(data, dispatch, host_copies):
    w = np.random.default_rng(8).uniform(0.2, 3.0, len(data))
    settings = dict(n_components=3, random_state=0, tol=1e-8, init_sample_size=250)
    ref = GaussianMixture(**settings).fit(data, sample_weight=w)
    in_memory = GaussianMixture(**settings).fit(on_device(data), sample_weight=on_device(w))
    assert isinstance(in_memory.means_, ARRAY)
    chunked = GaussianMixture(**settings).fit(device_chunks(data, 300), sample_weight=device_weights(w, 300))
    for got in (in_memory, chunked):
        assert got.n_iter_ == ref.n_iter_
        assert_close(to_numpy(got.means_), ref.means_, rtol=1e-10)
        assert_close(to_numpy(got.covariances_), ref.covariances_, rtol=1e-10)
    # The weights stayed on the device: nothing but the start's 250 sampled rows (and their weights) came over.
    assert all(not shape or shape[0] <= 250 for shape in host_copies), host_copies
    # Weights on another device than the chunks' (array_api_strict's default one) go through the host.
    other = GaussianMixture(**settings).fit(device_chunks(data, 300), sample_weight=xps.asarray(w))
    assert_close(to_numpy(other.means_), ref.means_, rtol=1e-10)


@pytest.mark.parametrize("where", ["in memory", "chunks"])
def test_bad_row_weights_on_the_device_are_named(data, dispatch, where):
    w = np.ones(len(data))
    w[417] = -1.0
    if where == "in memory":
        X, sw, match = on_device(data), on_device(w), "received -1.0 at row 417"
    else:
        X, sw, match = device_chunks(data, 300), device_weights(w, 300), r"received -1.0 at row 117 \+ 300"
    with pytest.raises(ValueError, match=f"sample_weight must be finite and non-negative; {match}"):
        GaussianMixture(2, random_state=0).fit(X, sample_weight=sw)


@pytest.fixture
def host_copies(monkeypatch):
    """The shapes of the arrays the library brings from the emulated device to the host
    (``to_numpy`` reads them through ``np.from_dlpack``)."""
    shapes, real = [], np.from_dlpack

    def counted(x, *args, **kwargs):
        shapes.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(np, "from_dlpack", counted)
    return shapes


def test_categorical_codes_of_every_integer_width_are_checked_on_the_device(host_copies):
    from dask_em import CategoricalMixture

    X, kw = discrete_data("categorical", np.random.default_rng(4))
    model = CategoricalMixture(3, random_state=0, max_iter=3, **kw).fit(X)
    want = model.predict_proba(X)
    for dtype in (np.int8, np.uint8, np.int64, np.uint64):
        got = np.concatenate([to_numpy(b) for b in blocks(model.predict_proba(device_chunks(X.astype(dtype), 200)))])
        assert_close(got, want, rtol=1e-12, err_msg=str(dtype))
    assert all(not s or s[0] < 200 or s[1:] == (3,) for s in host_copies), host_copies


@pytest.mark.parametrize("name", ["bernoulli", "poisson", "categorical"])
def test_valid_discrete_chunks_are_checked_on_the_device(name, host_copies):
    from dask_em import CategoricalMixture, PoissonMixture

    cls = {"bernoulli": BernoulliMixture, "poisson": PoissonMixture, "categorical": CategoricalMixture}[name]
    X, kw = discrete_data(name, np.random.default_rng(4))
    kw["missing"] = "marginalize"  # float codes and counts taken too (with NaN for missing values)
    model = cls(3, random_state=0, max_iter=3, init_sample_size=90, **kw).fit(device_chunks(X, 200))
    blocks(model.predict_proba(device_chunks(X, 200)))
    blocks(model.predict_proba(device_chunks(X.astype(np.float32), 200)))
    # The start's sample (90 rows, gathered on the device) came over; no chunk did.
    assert all(not s or s[0] < 200 for s in host_copies), host_copies


BAD_ROWS = [
    ("gaussian-inf", np.inf, {"missing": "marginalize"}, "X contains infinity"),
    ("gaussian-nan", np.nan, {}, "X contains NaN or infinity"),
    ("gaussian-empty-row", "row", {"missing": "marginalize"}, "a row has every value missing"),
    ("bernoulli", 2.0, {}, "takes only 0 and 1, but X holds 2.0"),
    ("bernoulli-nan", np.nan, {}, "X contains NaN or infinity"),
    ("poisson-negative", -1.0, {}, "non-negative integer counts, but X holds -1.0"),
    ("poisson-fraction", 1.5, {"missing": "marginalize"}, "non-negative integer counts, but X holds 1.5"),
    ("categorical", 3.0, {"n_categories": 3, "missing": "marginalize"}, "has 3 categories .* but X holds code 3.0"),
    ("categorical-fraction", 0.5, {"n_categories": 3, "missing": "marginalize"}, "but X holds code 0.5"),
    ("categorical-int", 3, {"n_categories": 3}, "has 3 categories .* but X holds code 3"),
    ("categorical-int-negative", -1, {"n_categories": [3, 2, 3]}, "has 2 categories .* but X holds code -1"),
]


@pytest.mark.parametrize("case", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_invalid_device_rows_get_the_hosts_message(case):
    from dask_em import CategoricalMixture, PoissonMixture

    name, value, kw, message = case
    cls = {"gaussian": GaussianMixture, "bernoulli": BernoulliMixture, "poisson": PoissonMixture,
           "categorical": CategoricalMixture}[name.split("-")[0]]
    X = np.random.default_rng(9).integers(0, 2, (400, 3)).astype(np.float64)
    if value == "row":
        X[250] = np.nan
    else:
        X[250, 1] = value
    if "-int" in name:
        X = X.astype(np.int8)
    clean = np.where(np.arange(400)[:, None] == 250, 0, X).astype(X.dtype)
    model = cls(2, random_state=0, **kw).fit(clean)
    for source in (da.from_array(X, chunks=(200, -1)), device_chunks(X, 200)):
        # In a fit (by the start's sample, or by the first E-step: 10 rows drawn) and in inference.
        with pytest.raises(ValueError, match=f"{message}.* in rows 200-399.* row 250"):
            cls(2, random_state=0, init_sample_size=10, **kw).fit(source)
        with pytest.raises(ValueError, match=f"{message}.* in rows 200-399 .*the first is row 250"):
            blocks(model.predict_proba(source))


def test_inference_with_missing_values_copies_only_incomplete_rows(data, host_copies):
    X = data.copy()
    holes = np.random.default_rng(3).random(len(X)) < 0.1
    X[np.flatnonzero(holes), np.random.default_rng(4).integers(0, 3, holes.sum())] = np.nan
    model = GaussianMixture(3, random_state=0, missing="marginalize").fit(X)
    for method in ("predict", "predict_proba", "score_samples", "impute"):
        del host_copies[:]
        parts = blocks(getattr(model, method)(device_chunks(X, 300)))
        assert all(isinstance(b, ARRAY) and b.device == DEVICE for b in parts), method
        # Only each chunk's incomplete rows came to the host (the results come over below, for the check).
        assert host_copies and all(not shape or shape[0] < 100 for shape in host_copies), (method, host_copies)
        got = np.concatenate([to_numpy(b) for b in parts])
        want = getattr(model, method)(X)
        if method == "predict":
            np.testing.assert_array_equal(got, want)
        else:
            assert got.dtype == np.float64
            assert_close(got, want, rtol=1e-12)


def test_device_option_is_checked_before_any_work(data):
    with pytest.raises(ValueError, match="device must be None .* received 'gpu'"):
        GaussianMixture(2).fit(data, device="gpu")
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install cupy"):
            GaussianMixture(2).fit(data, device="cuda")


def test_device_cpu_brings_device_chunks_to_the_host(data):
    ref = GaussianMixture(3, random_state=0).fit(data)
    got = GaussianMixture(3, random_state=0).fit(device_chunks(data, 300), device="cpu")
    assert_close(got.means_, ref.means_, rtol=1e-10)
    labels = got.predict(device_chunks(data, 300), device="cpu").compute()
    np.testing.assert_array_equal(labels, ref.predict(data))


def test_bad_dtype_of_a_device_array_is_refused_first():
    with pytest.raises(TypeError, match="complex"):
        GaussianMixture(2).fit(xps.asarray(np.ones((10, 2), dtype=np.complex128), device=DEVICE))


def test_scores_and_criteria_of_device_data(data):
    model = GaussianMixture(3, random_state=0).fit(data)
    for x in (on_device(data), device_chunks(data, 300)):
        assert model.score(x) == pytest.approx(model.score(data), rel=1e-12)
        assert model.bic(x) == pytest.approx(model.bic(data), rel=1e-12)


def test_model_selection_over_device_chunks(data):
    kw = dict(n_components=range(1, 4), covariance_types=["full", "diag", "VEV"], random_state=0, tol=1e-8)
    ref = select_model(data, **kw)
    got = select_model(device_chunks(data, 300), **kw)
    assert got.best_params_ == ref.best_params_
    assert_close(got.best_estimator_.means_, ref.best_estimator_.means_, rtol=1e-8)


def test_device_chunks_on_a_distributed_cluster(data):
    from distributed import Client, LocalCluster

    ref = GaussianMixture(3, random_state=0, tol=1e-8).fit(data)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster):
        got = GaussianMixture(3, random_state=0, tol=1e-8).fit(device_chunks(data, 300))
    assert got.n_iter_ == ref.n_iter_
    assert_close(got.means_, ref.means_, rtol=1e-10)


def _cupy():
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception:  # no CuPy, or no GPU behind it
        return None


cupy = _cupy()
needs_gpu = pytest.mark.skipif(cupy is None, reason="needs CuPy and a GPU")


@needs_gpu
@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical", "VEV"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gpu_fit_equals_the_cpu_fit(data, ct, dtype):
    settings = dict(n_components=3, covariance_type=ct, random_state=0, tol=0, max_iter=20, compute_dtype=dtype)
    ref = GaussianMixture(**settings).fit(data)
    chunks = da.from_array(data, chunks=(300, -1))
    for X, kw in ((cupy.asarray(data), {}), (chunks, {"device": "cuda"})):
        got = GaussianMixture(**settings).fit(X, **kw)
        rtol = 1e-10 if dtype == "float64" else 1e-4  # float32: the mode's stated tolerance
        assert_close(got.means_, ref.means_, rtol=rtol)
        assert_close(got.covariances_, ref.covariances_, rtol=rtol)
    labels = got.predict(chunks, device="cuda").compute()
    assert isinstance(labels, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(labels), ref.predict(data))


@needs_gpu
def test_gpu_in_memory_follows_scikit_learns_convention(data, dispatch):
    x = cupy.asarray(data)
    model = GaussianMixture(3, random_state=0).fit(x)
    assert isinstance(model.means_, cupy.ndarray) and isinstance(model.predict_proba(x), cupy.ndarray)
    ref = GaussianMixture(3, random_state=0).fit(data)
    assert_close(cupy.asnumpy(model.means_), ref.means_, rtol=1e-10)


def test_command_line_device_option(tmp_path):
    from click.testing import CliRunner

    from dask_em.cli import main
    from dask_em.store import load

    store, model = tmp_path / "x.zarr", tmp_path / "m.zarr"
    runner = CliRunner()
    assert runner.invoke(main, ["generate", str(store), "-n", "3000", "-d", "3", "-k", "2",
                                "--chunk-rows", "1000"]).exit_code == 0
    if cupy is None:
        result = runner.invoke(main, ["fit", str(store), "-o", str(model), "-k", "2", "--device", "cuda", "-q"])
        assert result.exit_code == 2 and "pip install cupy" in result.output
        assert not model.exists()  # refused before any work
    result = runner.invoke(main, ["fit", str(store), "-o", str(model), "-k", "2", "--seed", "0", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    plain = tmp_path / "plain.zarr"
    assert runner.invoke(main, ["fit", str(store), "-o", str(plain), "-k", "2", "--seed", "0", "-q"]).exit_code == 0
    assert_close(load(str(model)).means_, load(str(plain)).means_, rtol=1e-10)


def test_the_gpu_benchmark_runs_on_the_emulated_device(monkeypatch, capsys):
    """``bench_gpu.py --smoke``: every column's code path (the store's included) on array_api_strict."""
    import importlib.util

    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    here = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    monkeypatch.syspath_prepend(here)
    spec = importlib.util.spec_from_file_location("bench_gpu", os.path.join(here, "bench_gpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (row,) = module.main(["--smoke", "--iters", "2", "--types", "full", "--dtypes", "float64", "--shapes", "2000x4"])
    shape, cov, k, dtype, gpu_s, sk_s, _, cpu_s, _, floor, _, zarr_s, h2d, _, diff, _ = row
    assert (shape, cov, k, dtype) == ("2000x4", "full", 8, "float64")
    assert all(np.isfinite(v) and v > 0 for v in (gpu_s, sk_s, cpu_s, floor, zarr_s, h2d))
    assert diff < 1e-10  # the device fit equals the host fit from the same start
    assert "2000x4 | full | 8 | float64" in capsys.readouterr().out


ESTIMATORS = ["gaussian", "bayesian", "bernoulli", "poisson", "categorical"]


@pytest.mark.parametrize("name", ESTIMATORS)
def test_every_estimator_under_dispatch_answers_in_the_inputs_namespace(data, name, dispatch):
    """scikit-learn code run unchanged on device arrays: every fitted array attribute, and every method's
    array output, in the input's library on its device, equal to the numpy fit's."""
    from dask_em import CategoricalMixture, PoissonMixture

    if name in ("gaussian", "bayesian"):
        X = data
        cls = GaussianMixture if name == "gaussian" else BayesianGaussianMixture
        model = lambda: cls(n_components=3, init_params="random_from_data", random_state=0, max_iter=20)  # noqa: E731
    else:
        X, kw = discrete_data(name, np.random.default_rng(4))
        cls = {"bernoulli": BernoulliMixture, "poisson": PoissonMixture, "categorical": CategoricalMixture}[name]
        model = lambda: cls(3, random_state=0, max_iter=20, **kw)  # noqa: E731
    with sklearn.config_context(array_api_dispatch=False):
        ref = model().fit(X)
    got = model().fit(on_device(X))
    arrays = {key: value for key, value in vars(ref).items()
              if key.endswith("_") and not key.startswith("_") and isinstance(value, (np.ndarray, tuple, list))}
    assert arrays
    for key, want in arrays.items():
        value = getattr(got, key)
        parts = zip(value, want) if isinstance(want, (tuple, list)) else [(value, want)]
        for part, expected in parts:
            if isinstance(expected, np.ndarray):
                assert isinstance(part, ARRAY) and part.device == DEVICE, key
                assert_close(to_numpy(part), expected, rtol=1e-9, err_msg=key)
    x = on_device(X)
    for method in ("predict", "predict_proba", "score_samples", "fit_predict"):
        fitted = (model(), model()) if method == "fit_predict" else (got, ref)
        out = getattr(fitted[0], method)(x)
        assert isinstance(out, ARRAY) and out.device == DEVICE, method
        with sklearn.config_context(array_api_dispatch=False):
            want = getattr(fitted[1], method)(X)
        assert_close(to_numpy(out), want, rtol=1e-9, err_msg=method)
    rows, labels = got.sample(4)
    assert isinstance(rows, ARRAY) and isinstance(labels, ARRAY)
    for criterion in ("score",) if name == "bayesian" else ("score", "bic", "aic"):  # the variational fit has none
        assert getattr(got, criterion)(x) == pytest.approx(getattr(ref, criterion)(X), rel=1e-10), criterion
