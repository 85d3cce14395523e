"""scikit-learn's own tests of its Gaussian mixtures, run against dask-em's estimators.

scikit-learn installs the tests of ``sklearn.mixture`` with the package. They are copied with
their ``from sklearn.mixture import ...`` lines pointed at ``dask_em`` (their reference
computations keep scikit-learn's private functions) and run in a child pytest with
scikit-learn's own fixtures (its ``conftest``: the global random seed and dtype), its float32
variants and its array-API variants (``SCIPY_ARRAY_API=1``: numpy and array-api-strict here;
CuPy and PyTorch where installed). Every test must pass but those of :data:`DIFFERENCES`,
each failing for the reason given; one of those passing fails this test too, so the list
stays exact. docs/compatibility.md lists the same differences for users.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import sklearn

# The list below is scikit-learn 1.9's: another release brings other tests.
SUITE_VERSION = (1, 9)

DIFFERENCES = {
    "test_check_weights": (
        "scikit-learn's message for weights outside [0, 1] calls the smallest weight the 'max value' and the "
        "largest the 'min value'; dask-em's names them the right way round (its messages for the shape and the "
        "normalisation match scikit-learn's)"
    ),
    "test_gaussian_mixture_precisions_init": (
        "calls _initialize(X, resp) and _set_parameters, private methods of scikit-learn's implementation"
    ),
    "test_compare_covar_type": "calls _check_parameters, _initialize and _m_step, private methods of scikit-learn's",
    "test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters": (
        "counts the calls of scikit-learn's private _estimate_gaussian_parameters, which dask-em never calls"
    ),
    "test_gaussian_mixture_setting_best_params": (
        "with reg_covar=0 a component collapses in the first iteration (variances of 1e-16); scikit-learn returns "
        "the collapsed model, dask-em raises scikit-learn's ill-defined-covariance ValueError, as for the "
        "collapses scikit-learn itself detects"
    ),
    "test_gaussian_mixture_raises_where_array_api_not_implemented": (
        "scikit-learn refuses init_params='kmeans' and 'k-means++' under array_api_dispatch; dask-em runs its "
        "k-means start on every array namespace"
    ),
    "test_score": (
        "float32 case: dask-em's score is the float64 mean of float64 log-densities (as in a pass over chunks), "
        "the test compares it with the float32 mean of the float32 score_samples to 7 decimals, finer than "
        "float32 resolves a score of -2.6 (3e-7); whether the two round alike depends on the BLAS kernel"
    ),
}
# Differences whose failure depends on round-off (the BLAS kernel): they may pass.
MAY_PASS = {"test_score"}

IMPORTS = re.compile(r"^from sklearn\.mixture import (.+)$", re.MULTILINE)


def _copy_suite(into: Path) -> list[str]:
    """scikit-learn's mixture tests in ``into``, importing the estimators from dask_em; the files copied."""
    source = Path(sklearn.__file__).parent / "mixture" / "tests"
    files = sorted(p for p in source.glob("test_*.py"))
    assert files, f"scikit-learn {sklearn.__version__} installed no tests in {source}"
    for path in files:
        text, swapped = IMPORTS.subn(r"from dask_em import \1", path.read_text())
        assert swapped, f"{path.name} imports no estimator from sklearn.mixture: the suite's layout changed"
        (into / path.name).write_text(text)
    (into / "pytest.ini").write_text("[pytest]\n")
    return [p.name for p in files]


# What each listed test's failure says: it fails for the reason given, not another.
SIGNATURES = {
    "test_check_weights": "should be in the range [0, 1], but got min value",
    "test_gaussian_mixture_precisions_init": "_set_parameters",
    "test_compare_covar_type": "_check_parameters",
    "test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters": "call_count",
    "test_gaussian_mixture_setting_best_params": "ill-defined empirical covariance",
    "test_gaussian_mixture_raises_where_array_api_not_implemented": "DID NOT RAISE",
    "test_score": "not almost equal to 7 decimals",
}


def _outcomes(report: Path, failures: dict | None = None) -> dict[str, list[str]]:
    """Each test function's outcomes (one per parametrization): passed, failed or skipped; ``failures`` gets
    each failing function's messages."""
    out: dict[str, list[str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name").split("[")[0]
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            if failures is not None:
                failures.setdefault(name, []).append(f"{problem.get('message', '')}\n{problem.text or ''}")
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        out.setdefault(name, []).append(outcome)
    return out


@pytest.mark.skipif(
    tuple(int(p) for p in sklearn.__version__.split(".")[:2]) != SUITE_VERSION,
    reason=f"the expected differences are those of scikit-learn {SUITE_VERSION[0]}.{SUITE_VERSION[1]}'s tests; "
    f"this is scikit-learn {sklearn.__version__}",
)
def test_scikit_learn_mixture_suite_passes_against_dask_em(tmp_path):
    pytest.importorskip("array_api_strict")
    files = _copy_suite(tmp_path)
    report = tmp_path / "report.xml"
    env = {**os.environ, "SCIPY_ARRAY_API": "1", "SKLEARN_RUN_FLOAT32_TESTS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "sklearn.conftest",
         "--rootdir", str(tmp_path), f"--junitxml={report}", *files],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert report.exists(), f"the suite did not run:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    messages: dict[str, list[str]] = {}
    outcomes = _outcomes(report, messages)
    failed = {name for name, got in outcomes.items() if "failed" in got}
    unexpected = sorted(failed - set(DIFFERENCES))
    assert not unexpected, f"scikit-learn's tests that fail against dask-em: {unexpected}\n{run.stdout[-6000:]}"
    stale = sorted(name for name in DIFFERENCES if name not in failed and name not in MAY_PASS)
    assert not stale, f"listed as differences but passing (or gone): {stale}; remove them from DIFFERENCES"
    assert set(SIGNATURES) == set(DIFFERENCES)
    for name in DIFFERENCES:
        other = [m[:1500] for m in messages.get(name, []) if SIGNATURES[name] not in m]
        assert not other, f"{name} fails for another reason than the one listed:\n{other[0]}"
    passed = sum(got.count("passed") for got in outcomes.values())
    # scikit-learn 1.9: 133 passing cases with numpy and array-api-strict, float32 and float64, 134 where
    # test_score[float32] rounds alike (more where PyTorch or CuPy is installed).
    assert passed >= 133, f"only {passed} of scikit-learn's test cases ran and passed:\n{run.stdout[-3000:]}"


def test_scikit_learn_array_api_checks_pass_with_scipy_array_api():
    """``check_array_api_input``, which scikit-learn skips unless ``SCIPY_ARRAY_API=1`` is set before scipy is
    imported: run for the five estimators in a child pytest that sets it."""
    pytest.importorskip("array_api_strict")
    checks = Path(__file__).with_name("test_sklearn_checks.py")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-k", "check_array_api_input",
         str(checks)],
        cwd=checks.parent.parent, env={**os.environ, "SCIPY_ARRAY_API": "1"}, capture_output=True, text=True,
        timeout=600,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:]
    assert run.returncode == 0 and re.search(r"\b5 passed\b", summary) and "skipped" not in summary, run.stdout[-4000:]
