"""Whole-chunk reads of local Zarr stores, decoded straight into the rows they fill.

zarr-python reads a chunk through one asyncio event loop per process: every
thread's read waits on that loop, and the Python between its awaits runs one
thread at a time. On a worker with many threads, a read-bound pass then scales
with the threads far worse than with processes. It also decodes each chunk
into a buffer of its own and copies that into the result: two more arrays of
the chunk's size, whose pages the kernel maps and zeroes afresh each time once
they are 32 MiB or more (glibc serves them by ``mmap``).

:class:`ChunkFiles` reads the same bytes without either: the chunk's file with
one read, the codec's decoder writing into the rows of the result (numcodecs'
Zstd and Blosc decoders release the GIL; uncompressed chunks are read straight
into them). It covers the layouts zarr writes by default for a table of rows
on a local file system — a regular grid of whole-row chunks, C order, native
byte order, no filters, no sharding, and no compression, Zstd or Blosc — and
checks every chunk's decoded size against its shape before a byte is written.
Everything else (other stores, codecs or layouts) goes through zarr as before,
as does every store where the environment sets ``DASK_EM_DIRECT_READS=0``.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass

import numpy as np

ENV_SWITCH = "DASK_EM_DIRECT_READS"

# numcodecs' decoders of the codecs read here, by the names in ``ChunkFiles.codec``.
_CODECS = {"zstd": "Zstd", "blosc": "Blosc"}


def _zstd_content_size(data: bytes) -> int | None:
    """The decoded size a Zstandard frame declares in its header (RFC 8878, 3.1.1.1), or None if it does not."""
    if len(data) < 6 or data[:4] != b"\x28\xb5\x2f\xfd":
        return None
    descriptor = data[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    at = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if size == 0 or len(data) < at + size:
        return None
    value = int.from_bytes(data[at : at + size], "little")
    return value + 256 if size == 2 else value


def _blosc_content_size(data: bytes) -> int | None:
    """The decoded size in a Blosc (version 1) header: bytes 4-8, little-endian."""
    return int.from_bytes(data[4:8], "little") if len(data) >= 16 else None


_CONTENT_SIZE = {"zstd": _zstd_content_size, "blosc": _blosc_content_size}


@dataclass(frozen=True)
class ChunkFiles:
    """Where a Zarr array's row chunks lie on disk, and how to decode them (see the module's docstring).

    ``key_parts``: the chunk key of row chunk ``i`` is ``prefix + str(i) +
    suffix``. Small and picklable: it travels in the task graph to the
    workers, which must see the same path (as they must to read the store
    through zarr).
    """

    directory: str
    key_parts: tuple[str, str]
    chunk_rows: int
    shape: tuple[int, int]
    dtype: str
    codec: str  # "none", "zstd" or "blosc"
    fill_value: float | int | bool

    def covers(self, key) -> bool:
        """Whether ``key`` (a dask getter's key: a tuple of two slices) asks for whole rows."""
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(s, slice) for s in key)):
            return False
        rows, cols = key
        lo, hi, step = rows.indices(self.shape[0])
        return step == 1 and lo < hi and cols.indices(self.shape[1]) == (0, self.shape[1], 1)

    def read(self, key) -> np.ndarray:
        """The rows ``key[0]`` (every column), as ``zarr.Array.__getitem__`` would return them."""
        lo, hi, _ = key[0].indices(self.shape[0])
        rows, dtype = self.chunk_rows, np.dtype(self.dtype)
        out = np.empty((hi - lo, self.shape[1]), dtype=dtype)
        scratch = None
        for c in range(lo // rows, (hi - 1) // rows + 1):
            c0 = c * rows
            a, b = max(lo, c0), min(hi, c0 + rows)
            whole = a == c0 and b == c0 + rows  # the chunk's every stored row lands in ``out``
            if whole:
                target = out[a - lo : b - lo]
            else:
                scratch = np.empty((rows, self.shape[1]), dtype=dtype) if scratch is None else scratch
                target = scratch
            if not self._decode(c, target):
                out[a - lo : b - lo] = self.fill_value  # a chunk never written holds the fill value
            elif not whole:
                out[a - lo : b - lo] = target[a - c0 : b - c0]
        return out

    def _decode(self, c: int, target: np.ndarray) -> bool:
        """Chunk ``c`` decoded into ``target`` (C-contiguous, its shape); False where its file does not exist."""
        prefix, suffix = self.key_parts
        path = os.path.join(self.directory, f"{prefix}{c}{suffix}")
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            return False
        expected = target.nbytes
        with fh:
            if self.codec == "none":
                size = os.fstat(fh.fileno()).st_size
                if size != expected:
                    raise ValueError(f"chunk {path} holds {size} bytes; its shape needs {expected}")
                got = fh.readinto(memoryview(target).cast("B"))
                if got != expected:
                    raise ValueError(f"chunk {path}: read {got} of its {expected} bytes")
                return True
            size = os.fstat(fh.fileno()).st_size
            data = _raw_buffer(size)
            got = fh.readinto(data)
            if got != size:
                raise ValueError(f"chunk {path}: read {got} of its {size} bytes")
        declared = _CONTENT_SIZE[self.codec](data)
        if declared is None:  # a frame that does not state its size (a streaming encoder's): decoded, then checked
            decoded = np.frombuffer(_decoder(self.codec).decode(data), dtype=np.uint8)
            if decoded.nbytes != expected:
                raise ValueError(f"chunk {path} decodes to {decoded.nbytes} bytes; its shape needs {expected}")
            target.reshape(-1).view(np.uint8)[:] = decoded
            return True
        if declared != expected:
            raise ValueError(f"chunk {path} decodes to {declared} bytes; its shape needs {expected}")
        _decoder(self.codec).decode(data, out=target)
        return True


_DECODERS: dict = {}
_THREAD = threading.local()


# The most encoded bytes a thread keeps between chunks (memory a dask worker does not see): larger chunks
# are read into a buffer of their own, which goes with them.
KEPT_BUFFER_BYTES = 32 * 2**20


def _raw_buffer(size: int) -> memoryview:
    """A buffer for ``size`` encoded bytes of a chunk: this thread's, kept so no chunk allocates (and
    page-faults) its own, up to ``KEPT_BUFFER_BYTES``; beyond, a fresh one."""
    if size > KEPT_BUFFER_BYTES:
        return memoryview(np.empty(size, dtype=np.uint8))
    buf = getattr(_THREAD, "raw", None)
    if buf is None or buf.nbytes < size:
        buf = _THREAD.raw = np.empty(size, dtype=np.uint8)
    return memoryview(buf)[:size]


def _decoder(codec: str):
    found = _DECODERS.get(codec)
    if found is None:
        import numcodecs

        found = _DECODERS[codec] = getattr(numcodecs, _CODECS[codec])()
    return found


def _key_parts(encode) -> tuple[str, str] | None:
    """``(prefix, suffix)`` with ``encode((i, 0)) == prefix + str(i) + suffix`` for every row chunk ``i``, or None."""
    probe = 7919
    key = encode((probe, 0))
    at = key.rfind(str(probe))
    if at < 0:
        return None
    parts = (key[:at], key[at + len(str(probe)) :])
    if any(encode((i, 0)) != f"{parts[0]}{i}{parts[1]}" for i in (0, 1, 10, 123456)):
        return None
    return parts


def _v3_codec(codecs) -> str | None:
    from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

    if not codecs or not isinstance(codecs[0], BytesCodec):
        return None  # sharding, a transpose, or another array-to-bytes codec
    endian = getattr(codecs[0].endian, "value", codecs[0].endian)
    if endian not in (None, sys.byteorder):
        return None
    rest = codecs[1:]
    if not rest:
        return "none"
    if len(rest) == 1 and type(rest[0]) is ZstdCodec:
        return "zstd"
    if len(rest) == 1 and type(rest[0]) is BloscCodec:
        return "blosc"
    return None


def _v2_codec(meta) -> str | None:
    import numcodecs

    if meta.filters or getattr(meta, "order", "C") != "C":
        return None
    compressor = meta.compressor
    if compressor is None:
        return "none"
    if type(compressor) is numcodecs.Zstd:
        return "zstd"
    if type(compressor) is numcodecs.Blosc:
        return "blosc"
    return None


def _local_root(store) -> str | None:
    """The directory of a store on the local file system: a ``LocalStore``, or an fsspec store of a ``file://``
    URL; None for any other (a subclass too: it may read its chunks its own way, a cache, a check, a retry)."""
    from zarr.storage import FsspecStore, LocalStore

    if type(store) is LocalStore:
        return str(store.root)
    if type(store) is FsspecStore:
        from fsspec.implementations.local import LocalFileSystem

        fs = getattr(store.fs, "sync_fs", store.fs)  # zarr wraps a synchronous file system for its event loop
        if type(fs) is LocalFileSystem:
            return str(store.path)
    return None


def chunk_files(arr) -> ChunkFiles | None:
    """A :class:`ChunkFiles` for the ``zarr.Array`` ``arr``, or None where zarr must read it.

    None unless ``arr`` is a 2-d array of numbers in native byte order in a
    directory of the local file system (a path or ``file://`` URL), chunked
    in whole rows on a regular grid, with no filters or sharding,
    uncompressed or compressed with Zstd or Blosc; None everywhere where the
    environment sets ``DASK_EM_DIRECT_READS=0``.
    """
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return None
    try:
        meta = arr.metadata
        store = arr.store_path.store
        dtype = np.dtype(arr.dtype)
        root = _local_root(store)
        if root is None or len(arr.shape) != 2 or dtype.kind not in "biuf":
            return None
        if not dtype.isnative or arr.chunks[1] != arr.shape[1] or arr.fill_value is None:
            return None
        if getattr(meta, "zarr_format", None) == 3:
            grid = type(meta.chunk_grid).__name__
            codec = _v3_codec(meta.codecs) if grid == "RegularChunkGrid" else None
        elif getattr(meta, "zarr_format", None) == 2:
            codec = _v2_codec(meta)
        else:
            return None
        parts = _key_parts(meta.encode_chunk_key) if codec is not None else None
        if parts is None:
            return None
        directory = os.path.join(root, arr.store_path.path)
        return ChunkFiles(directory, parts, int(arr.chunks[0]), (int(arr.shape[0]), int(arr.shape[1])), dtype.str,
                          codec, dtype.type(arr.fill_value).item())
    except Exception:  # noqa: BLE001 - a zarr version whose metadata differs: zarr reads as before
        return None
