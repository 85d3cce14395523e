"""Model selection: the grid equals independent fits, finds the truth, shares reads."""

import warnings

import numpy as np
import pytest
import zarr
from sklearn.exceptions import ConvergenceWarning

import dask_em
from conftest import mixture, assert_close
from test_engine import counting_array


def axis_aligned(rng, n=3000):
    """Three well-separated components with diagonal covariances of unequal variances."""
    means = np.array([[0, 0, 0], [8, 0, 0], [0, 9, 4]], dtype=float)
    scales = np.array([[0.5, 2.0, 1.0], [1.5, 0.4, 1.0], [1.0, 1.0, 2.5]])
    labels = rng.integers(0, 3, n)
    return means[labels] + rng.normal(size=(n, 3)) * scales[labels]


def test_criteria_equal_independent_fits(rng):
    X = mixture(rng, n=1500, d=2, k=3)[0]
    result = dask_em.select_model(X, n_components=[1, 2, 3, 4], covariance_types=("full", "diag", "tied", "spherical"),
                                  n_init=2, random_state=0, chunk_rows=400)
    for k in (1, 2, 3, 4):
        for t in ("full", "diag", "tied", "spherical"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                alone = dask_em.GaussianMixture(k, covariance_type=t, n_init=2, random_state=0).fit(X, chunk_rows=400)
            cell = result.criteria.sel(n_components=k, covariance_type=t)
            # Sharing the rounds changed nothing: the same restarts, bitwise, and the same criteria.
            est = result.estimators_[(k, t)]
            np.testing.assert_array_equal(est.means_, alone.means_)
            assert est.lower_bounds_ == alone.lower_bounds_
            assert float(cell.bic) == pytest.approx(alone.bic(X), rel=1e-12)
            assert float(cell.aic) == pytest.approx(alone.aic(X), rel=1e-12)
            assert int(cell.n_iter) == alone.n_iter_ and bool(cell.converged) == alone.converged_


def test_icl_is_bic_plus_twice_the_entropy(rng):
    X = mixture(rng, n=800, d=2, k=2, spread=2.0)[0]
    result = dask_em.select_model(X, n_components=[2], covariance_types="full", random_state=0)
    gm = result.best_estimator_
    resp = gm.predict_proba(X)
    entropy = -(resp * np.log(np.clip(resp, 1e-300, None))).sum()
    cell = result.criteria.sel(n_components=2, covariance_type="full")
    assert float(cell.icl) == pytest.approx(float(cell.bic) + 2 * entropy, rel=1e-9)


def test_true_pair_is_selected(rng):
    X = axis_aligned(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dask_em.select_model(X, n_components=range(1, 6), n_init=2, random_state=0)
    assert result.best_params_ == {"n_components": 3, "covariance_type": "diag"}
    assert result.criteria.bic.dims == ("n_components", "covariance_type")
    text = repr(result)
    assert "BIC (lower is better)" in text and "*" in text
    for name in ("bic", "aic", "icl", "lower_bound", "n_parameters", "converged", "n_iter"):
        assert name in result.criteria


def test_grid_reads_each_chunk_once_per_round(tmp_path, rng):
    X = mixture(rng, n=1200, d=2, k=3)[0]
    arr, store = counting_array(tmp_path, X, rows=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dask_em.select_model(arr, n_components=[1, 2, 3, 4], covariance_types=("full", "diag"),
                                      n_init=2, random_state=0, chunk_rows=200, max_iter=20)
    rounds = int(result.criteria.n_iter.max())
    reads = {k: v for k, v in store.reads.items() if k.startswith("c/")}
    assert len(reads) == 6
    # One read for the (shared) init sample, one per round for all 8 candidates x 2 restarts,
    # one for the final scoring pass.
    assert set(reads.values()) == {1 + rounds + 1}


def test_bad_arguments(rng):
    X = rng.normal(size=(50, 2))
    with pytest.raises(ValueError, match="criterion must be one of"):
        dask_em.select_model(X, criterion="mdl")
    with pytest.raises(ValueError, match=r"n_components must be ints >= 1"):
        dask_em.select_model(X, n_components=[0, 1])
    with pytest.raises(ValueError, match=r"covariance_types must be a subset"):
        dask_em.select_model(X, covariance_types=("full", "fancy"))
    with pytest.raises(TypeError, match="takes no means_init"):
        dask_em.select_model(X, means_init=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="Expected n_samples >= n_components, but X has .* rows and n_components=60"):
        dask_em.select_model(X, n_components=[2, 60])


def test_criterion_plot(rng):
    import matplotlib

    matplotlib.use("Agg")
    import dask_em.plot

    X = axis_aligned(rng, n=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dask_em.select_model(X, n_components=range(1, 5), covariance_types=("full", "diag"), random_state=0)
    ax = dask_em.plot.criterion(result)
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in lines] == ["full", "diag"]
    assert all(len(line.get_xdata()) == 4 for line in lines)
    (star,) = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert star.get_xdata()[0] == result.best_params_["n_components"]


def test_select_command(tmp_path, rng):
    import json

    from click.testing import CliRunner

    from dask_em.cli import main

    X = axis_aligned(rng, n=2000)
    zarr.create_array(tmp_path / "x.zarr", shape=X.shape, chunks=(500, 3), dtype="f8")[:] = X
    runner = CliRunner()
    result = runner.invoke(main, ["select", str(tmp_path / "x.zarr"), "-o", str(tmp_path / "best.zarr"),
                                  "--components", "2-4", "--covariance-types", "full,diag", "--seed", "0",
                                  "--table", str(tmp_path / "table.csv")])
    assert result.exit_code == 0, result.output
    assert "best: K=3 diag" in result.stdout
    model = dask_em.load(tmp_path / "best.zarr")
    assert model.n_components_ == 3 and model.covariance_type == "diag"
    lines = (tmp_path / "table.csv").read_text().splitlines()
    assert lines[0].startswith("n_components,covariance_type,bic") and len(lines) == 1 + 3 * 2
    as_json = runner.invoke(main, ["select", str(tmp_path / "x.zarr"), "-o", str(tmp_path / "b2.zarr"),
                                   "--components", "3", "--covariance-types", "diag", "--json",
                                   "--table", str(tmp_path / "t.json")])
    assert json.loads(as_json.stdout)["best"] == {"n_components": 3, "covariance_type": "diag"}
    bad = runner.invoke(main, ["select", str(tmp_path / "x.zarr"), "-o", str(tmp_path / "b3.zarr"), "--components", "a-b"])
    assert bad.exit_code == 2 and "--components takes a list" in bad.stderr


@pytest.mark.parametrize("family", ["bernoulli", "poisson", "categorical"])
def test_select_k_for_the_other_families(family, tmp_path):
    """A grid over K alone: the true K wins on BIC, and each candidate equals its fit alone."""
    from dask_em.datasets import make_family_mixture

    X, spec = make_family_mixture(family, 6000, 8, 3, chunk_rows=1500, seed=1)
    extra = {"n_categories": 5} if family == "categorical" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dask_em.select_model(X, n_components=range(1, 6), family=family, n_init=2, random_state=0, **extra)
    assert result.criteria.bic.dims == ("n_components",)
    assert result.best_params_ == {"n_components": 3}
    assert type(result.best_estimator_).__name__ == f"{family.capitalize()}Mixture"
    alone = type(result.best_estimator_)(4, n_init=2, random_state=0, **extra).fit(X)
    cand = result.estimators_[(4, family)]
    key = "rates" if family == "poisson" else "probabilities"
    # Same seeds and starts; a shared round walks panels sized for the largest K, so equal to round-off.
    assert_close(cand._params[key], alone._params[key], rtol=1e-9)
    assert cand.lower_bound_ == pytest.approx(alone.lower_bound_, rel=1e-12)
    assert float(result.criteria.bic.sel(n_components=4)) == pytest.approx(alone.bic(X), rel=1e-10)
    assert "K" in result.table() and family in result.table() and "*" in result.table()
    # one K and one value per line, however large the criterion (Poisson's BIC runs to 9 digits)
    assert all(len(line.split()) == 2 for line in result.table().splitlines()[2:])
    result.criteria["bic"] = result.criteria.bic * 1e6
    assert all(len(line.split()) == 2 for line in result.table().splitlines()[2:])
    with pytest.raises(ValueError, match="covariance_types applies to family='gaussian'"):
        dask_em.select_model(X, n_components=[1, 2], family=family, covariance_types="full", **extra)


def test_callback_reports_each_candidate_as_it_stops(rng):
    """One call per candidate, as soon as its restarts stop iterating (the quick ones first, while the others go
    on in the same passes), with its best restart's figures: those the fitted candidate keeps."""
    X = mixture(rng, n=1500, d=2, k=3)[0]
    events = []

    def seen(event):
        events.append(event)

    result = dask_em.select_model(X, n_components=[1, 3, 4], covariance_types=("full", "diag"), n_init=2,
                                  random_state=0, chunk_rows=500, callback=seen)
    assert sorted((e["n_components"], e["covariance_type"]) for e in events) == sorted(result.estimators_)
    for e in events:
        est = result.estimators_[(e["n_components"], e["covariance_type"])]
        assert e["n_iter"] == est.n_iter_ and e["converged"] == est.converged_
        assert e["lower_bound"] == est.lower_bound_
    # Reported in the order they stopped: never a candidate that ran more iterations before one that ran fewer.
    iterations = [max(r["n_iter"] for r in result.estimators_[(e["n_components"], e["covariance_type"])].restarts_)
                  for e in events]
    assert iterations == sorted(iterations), (events, iterations)
    assert iterations[0] < iterations[-1]  # K=1 stops after its second iteration, the others later
    # Without a callback, the same fits.
    plain = dask_em.select_model(X, n_components=[1, 3, 4], covariance_types=("full", "diag"), n_init=2,
                                 random_state=0, chunk_rows=500)
    for key, est in plain.estimators_.items():
        assert est.lower_bounds_ == result.estimators_[key].lower_bounds_


def test_callback_reports_a_candidate_whose_every_restart_failed(rng):
    """A candidate with no healthy restart is reported too (lower_bound None), after the passes."""
    X = np.repeat(mixture(rng, n=40, d=2, k=2)[0][:3], 20, axis=0)  # 3 distinct rows: K=5 cannot fit
    events = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dask_em.select_model(X, n_components=[1, 5], covariance_types="full", random_state=0,
                                      reg_covar=0.0, callback=events.append)
    by_k = {e["n_components"]: e for e in events}
    assert set(by_k) == {1, 5}
    assert by_k[1]["lower_bound"] is not None
    assert (5, "full") not in result.estimators_  # every restart failed: it has no fitted estimator
    assert by_k[5]["lower_bound"] is None and by_k[5]["n_iter"] is None and by_k[5]["converged"] is False


def test_a_grid_keeps_k_means_warnings_about_repeated_rows_out_of_the_way():
    """Candidates with more components than distinct rows: the table reports them; k-means's warning
    (which a single fit shows, as scikit-learn's does) is not repeated for each."""
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 50, axis=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dask_em.select_model(X, n_components=range(1, 5), covariance_types="full", random_state=0)
    assert not [w for w in caught if "Number of distinct clusters" in str(w.message)]
    with pytest.warns(ConvergenceWarning, match="Number of distinct clusters"):
        dask_em.GaussianMixture(3, random_state=0).fit(X)
