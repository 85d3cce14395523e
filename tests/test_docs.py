"""The documentation's contracts: numpydoc docstrings on every public name, and docstring examples that run.

The Sphinx build (``.ci/run``) renders these docstrings with warnings as errors; these
tests keep the two properties that build relies on checkable in the normal test run.
"""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import dask_em
import dask_em.plot

validate = pytest.importorskip("numpydoc.validate")

# Public names beyond dask_em.__all__ that the API reference renders.
PLOTS = ["dask_em.plot.convergence", "dask_em.plot.clusters", "dask_em.plot.weights", "dask_em.plot.criterion"]
# The estimators' methods a user calls (scikit-learn's API and ours).
METHODS = ["fit", "partial_fit", "fit_predict", "predict", "predict_proba", "score_samples", "score", "bic",
           "aic", "sample", "impute", "summary"]
ESTIMATORS = ["GaussianMixture", "BayesianGaussianMixture", "BernoulliMixture", "PoissonMixture",
              "CategoricalMixture", "Mixture"]


def public_names() -> list[str]:
    names = [f"dask_em.{n}" for n in dask_em.__all__ if n != "__version__"]
    methods = [f"dask_em.{cls}.{m}" for cls in ESTIMATORS for m in METHODS
               if callable(getattr(getattr(dask_em, cls), m, None))]  # BayesianGaussianMixture has no bic, aic
    # Every public method a result class defines (the API reference renders them all).
    results = [f"dask_em.SelectionResult.{m}" for m, v in vars(dask_em.SelectionResult).items()
               if callable(v) and not m.startswith("_")]
    return names + PLOTS + methods + results


def _resolve(name: str):
    obj = importlib.import_module("dask_em")
    for attr in name.split(".")[1:]:
        obj = getattr(obj, attr)
    return obj


@pytest.mark.parametrize("name", public_names())
def test_public_name_has_a_numpydoc_docstring(name):
    """Classes document their Parameters; functions and methods their Parameters (when they take any) and Returns."""
    obj = _resolve(name)
    report = validate.validate(name)
    codes = {code: message for code, message in report["errors"]}
    assert "GL08" not in codes, f"{name} has no docstring"
    assert "SS01" not in codes, f"{name}'s docstring has no summary line"
    for code in ("PR01", "PR02"):  # parameters not documented / documented but not in the signature
        assert code not in codes, f"{name}: {codes.get(code)}"
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return  # an exception takes its message
    takes = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
    if inspect.isclass(obj):
        if takes:
            assert report["docstring"] and "Parameters\n" in inspect.getdoc(obj), f"{name} has no Parameters section"
    else:
        assert "RT01" not in codes, f"{name} has no Returns section"
        if takes:
            assert "Parameters\n" in inspect.getdoc(obj), f"{name} has no Parameters section"


def test_public_names_cover_the_package():
    """Every name in dask_em.__all__ exists, and the API reference lists each one."""
    from pathlib import Path

    reference = (Path(__file__).resolve().parents[1] / "docs" / "api" / "index.rst").read_text()
    for name in dask_em.__all__:
        assert hasattr(dask_em, name)
        if name != "__version__":
            assert f"   {name}\n" in reference, f"docs/api/index.rst does not list {name}"
    for name in PLOTS:
        assert f"   {name.rsplit('.', 1)[1]}\n" in reference


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(dask_em.__path__, "dask_em.")]
    return sorted(n for n in names if not n.endswith("__main__"))  # __main__ runs the command


@pytest.mark.parametrize("module", ["dask_em"] + _modules())
def test_docstring_examples_run(module, tmp_path, monkeypatch):
    """Every ``>>>`` example in the package's docstrings runs and prints what it shows."""
    monkeypatch.chdir(tmp_path)  # examples that write stores write them here
    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures = []
    for test in finder.find(mod, module):  # objects defined in this module only
        runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)
