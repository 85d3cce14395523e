"""Writing results: the codecs of the stores dask-em writes, and outputs that appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator

from .io import is_local_filesystem


def _zstd():
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=3)


def _lz4():
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


# Codecs for stores dask-em writes. Measured on 2M x 16 random float64 (256 MiB), read + sum
# on 2 threads: none 0.14 s (256 MiB), Blosc lz4+shuffle 0.27 s (229 MiB), zstd 0.31 s (234 MiB).
CODECS = {"none": lambda: None, "lz4": _lz4, "zstd": _zstd}


def exists(path: str, storage_options: dict | None = None) -> bool:
    """Whether anything is at ``path`` (a local path or an fsspec URL)."""
    import fsspec

    fs, p = fsspec.core.url_to_fs(path, **(storage_options or {}))
    return fs.exists(p)


def remove(path: str, storage_options: dict | None = None) -> None:
    import fsspec

    fs, p = fsspec.core.url_to_fs(path, **(storage_options or {}))
    fs.rm(p)


@contextlib.contextmanager
def atomic_output(path: str, storage_options: dict | None, overwrite: bool) -> Iterator[str]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    Local paths are renamed (atomic). On an object store the objects are moved
    with the root ``zarr.json`` last, so an interrupted move leaves nothing
    that opens as Zarr under the final name.
    """
    import fsspec

    fs, final = fsspec.core.url_to_fs(path, **(storage_options or {}))
    local = is_local_filesystem(fs)
    tmp_final = f"{final.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    tmp_url = tmp_final if local else fs.unstrip_protocol(tmp_final)
    try:
        yield tmp_url
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp_final, recursive=True)
        raise
    if fs.exists(final):
        if not overwrite:  # pragma: no cover - checked before any work
            raise FileExistsError(f"{path!r} appeared while writing; not replacing it.")
        fs.rm(final, recursive=True)
    if local:
        os.replace(tmp_final, final)
    else:
        files = sorted(fs.find(tmp_final), key=lambda f: f.endswith("zarr.json"))
        for f in files:
            fs.mv(f, final + f[len(tmp_final):])
        fs.rm(tmp_final, recursive=True)
