"""What the kernels read of the machine: the sizes of one core's caches (their working sets fit them)."""

from __future__ import annotations

import functools
import glob
import os

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
