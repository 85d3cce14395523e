"""The package's layering, read from its imports through the AST (docs/architecture.md).

Every module has a place in one list, in the order data flows through the
package; a module may import only modules before it. That forbids import
cycles and upward imports (a family importing an estimator, anything below
the CLI importing it). On top of the order, the generic machinery (starts,
engine, runner, restarts, checkpoints) may import the family protocol but no
family module.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dask_em"

LAYERS = [
    ("foundation", ["_version", "_json", "_validation", "_namespace", "_machine", "_compiled"]),
    ("input and the family protocol", ["_zarr_read", "io", "family"]),
    ("families", ["_parsimonious", "_covariance", "_array_api", "_incomplete", "prior", "gaussian", "bayesian", "_discrete_kernel", "discrete", "datasets"]),
    ("starts", ["hierarchical", "starts"]),
    ("engine and runner", ["engine", "runner"]),
    ("restarts", ["progress", "accelerate", "stepwise", "restarts", "checkpoint"]),
    ("estimators", ["_fitted", "_base", "gaussian_mixture", "bayesian_mixture", "discrete_mixture", "mixture", "registry"]),
    ("users of fitted estimators", ["selection", "output", "store", "plot"]),
    ("command line and package", ["cli", "__main__", "__init__"]),
]
ORDER = [module for _, modules in LAYERS for module in modules]
FAMILY_MODULES = {"_parsimonious", "_covariance", "_array_api", "_incomplete", "prior", "gaussian", "bayesian", "_discrete_kernel", "discrete", "datasets"}
GENERIC = {"starts", "engine", "runner", "progress", "accelerate", "stepwise", "restarts", "checkpoint"}


def package_imports(module: str) -> set[str]:
    """The package modules ``module`` imports, anywhere in its body (function-level imports too)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and not (node.module or "").startswith("dask_em"):
                continue
            base = (node.module or "").removeprefix("dask_em").lstrip(".")
            if base:
                found.add(base.split(".")[0])
            else:  # from . import x
                found |= {alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").exists()}
                if not any((PACKAGE / f"{alias.name}.py").exists() for alias in node.names):
                    found.add("__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "dask_em":
                    found.add("__init__")
                elif alias.name.startswith("dask_em."):
                    found.add(alias.name.split(".")[1])
    found.discard(module)
    return found


def test_every_module_has_a_place():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert sorted(ORDER) == modules, "place new modules in LAYERS (and docs/architecture.md)"


@pytest.mark.parametrize("module", ORDER)
def test_imports_point_down(module):
    position = ORDER.index(module)
    upward = sorted(m for m in package_imports(module) if ORDER.index(m) > position)
    assert not upward, f"{module} imports {upward}, which come after it in the data flow"


@pytest.mark.parametrize("module", sorted(GENERIC))
def test_generic_machinery_imports_no_family(module):
    assert not package_imports(module) & FAMILY_MODULES


def test_no_cycles():
    """Follows from the order, checked directly so a failure names the cycle."""
    graph = {m: package_imports(m) for m in ORDER}
    state: dict[str, int] = {}

    def visit(node, path):
        if state.get(node) == 1:
            raise AssertionError(" -> ".join(path[path.index(node):] + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        state[node] = 2

    for m in ORDER:
        visit(m, [])


def test_the_checker_sees_upward_imports(tmp_path, monkeypatch):
    """A deliberately upward import is caught (the checker is not vacuous)."""
    fake = tmp_path / "dask_em"
    fake.mkdir()
    for name in ORDER:
        (fake / f"{name}.py").write_text("")
    (fake / "family.py").write_text("from .gaussian_mixture import GaussianMixture\n")
    (fake / "engine.py").write_text("def f():\n    from dask_em.cli import main\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert package_imports("family") == {"gaussian_mixture"}
    assert package_imports("engine") == {"cli"}
    with pytest.raises(AssertionError, match="family imports"):
        test_imports_point_down("family")
