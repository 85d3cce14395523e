"""The installed distribution's version (``0.0.0`` when running from a bare source tree)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dask-em")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
