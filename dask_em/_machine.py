"""What the kernels read of the machine: the sizes of one core's caches (their working sets fit them), the
cores this process may use, and work arrays that start on a cache line."""

from __future__ import annotations

import functools
import glob
import os

import numpy as np

# What the kernels assume of a core's caches where the operating system does not say
# (the AMD EPYC machines their constants were measured on: 512 KiB of L2 per core,
# 16 MiB of L3 shared by two cores).
DEFAULT_L2_BYTES = 2**19
DEFAULT_LLC_SHARE_BYTES = 2**23


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def _cpus(cpu_list: str) -> int:
    count = 0
    for part in filter(None, cpu_list.strip().split(",")):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return max(count, 1)


@functools.lru_cache(maxsize=None)
def core_caches() -> tuple[int, int]:
    """(bytes of one core's L2, one core's share of the last-level cache), read from the machine.

    Linux reports both in sysfs (``/sys/devices/system/cpu/cpu0/cache``);
    the share is the last level's size over the CPUs that share it. Elsewhere,
    or where a virtual machine reports nothing, the sizes of the machines the
    kernels were tuned on (``DEFAULT_L2_BYTES``, ``DEFAULT_LLC_SHARE_BYTES``).
    """
    levels: dict[int, tuple[int, int]] = {}
    for entry in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(entry, "type")) as fh:
                if fh.read().strip() not in ("Data", "Unified"):
                    continue
            with open(os.path.join(entry, "level")) as fh:
                level = int(fh.read())
            with open(os.path.join(entry, "size")) as fh:
                size = _size(fh.read())
            with open(os.path.join(entry, "shared_cpu_list")) as fh:
                sharing = _cpus(fh.read())
        except (OSError, ValueError):
            continue
        levels[level] = (size, sharing)
    l2 = levels.get(2, (0, 1))[0] or DEFAULT_L2_BYTES
    last = max((lvl for lvl in levels if lvl >= 3), default=None)
    share = levels[last][0] // levels[last][1] if last is not None and levels[last][0] else DEFAULT_LLC_SHARE_BYTES
    return l2, max(share, l2)


def local_cores() -> int:
    """The cores this process may run on: the machine's, less what its affinity mask and its cgroup's CPU
    quota (a container's CPU limit, as Kubernetes sets it) leave it.

    dask's own count (``dask.system.CPU_COUNT``), which sizes its threaded scheduler's pool and a
    ``LocalCluster``: ``os.cpu_count()`` gives the node's cores, and 64 threads sharing a 4-CPU quota
    would each run in bursts and then wait out the rest of every scheduling period.
    """
    from dask.system import CPU_COUNT

    return max(1, int(CPU_COUNT))


# Work arrays start on a cache line. numpy's large allocations start 16 bytes past a page (glibc's mmap chunk
# header); a panel design there ran OpenBLAS's SkylakeX (AVX-512) GEMM of the log-densities 1.4x slower than
# one on 64 bytes, and the whole E-step 1.15x (full covariance, d=16, K=8, float64, one thread, Intel Xeon: 0.093
# against 0.066 s per 2M rows for the GEMM at offsets 16, 32 and 48, against 0 and 64).
ALIGN_BYTES = 64


def aligned_empty(size: int, dtype, align: int = ALIGN_BYTES) -> np.ndarray:
    """An uninitialised 1-d array of ``size`` values of ``dtype`` whose first value is on ``align`` bytes."""
    dtype = np.dtype(dtype)
    raw = np.empty(size * dtype.itemsize + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + size * dtype.itemsize].view(dtype)
