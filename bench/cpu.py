"""CPU speed: keep freed memory in the process instead of handing it back to the kernel.

glibc's malloc serves allocations above 128 KiB-32 MiB (its dynamic mmap threshold) with fresh
``mmap`` pages and returns freed heap tops to the kernel; PyTorch's CPU allocator does not cache,
so every activation of every training step is a new page-faulting allocation. On the 2-core VM
this suite is developed on, that made the small CNN's steps (batch 128) 10-25% slower and noisier
(session 2, two runs each of ``bench.timing.build_step``: CE 24.9-26.6 -> 21.3-21.8 ms, MW-Net
79.6-92.2 -> 75.0-76.3 ms; CurveNet SL=3 48.5 either way). :func:`keep_freed_memory` raises the
mmap threshold to glibc's maximum (32 MiB) and turns trimming off, so freed blocks are reused:
the same effect as ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` in the environment, but
set from inside the process. The cost is a process that keeps its peak heap (a few hundred MB for
the quick runs). Nothing happens on other C libraries or operating systems.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024   # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TOP_PAD = 64 * 1024 * 1024
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc malloc as the module docstring says (once per process); True if it applied."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
                 and mallopt(M_TOP_PAD, TOP_PAD))
    return _done


def has_native_bf16() -> bool:
    """Whether this CPU computes bf16 convolutions and matmuls natively (AVX512-BF16 or AMX, as
    oneDNN reports it). Without it, bf16 autocast on the CPU is emulated: on this suite's AVX2 VM
    the small CNN's CE step ran 15x slower in bf16 (435 ms against 30 ms in fp32)."""
    import torch
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 either
        return False


def warn_if_slow_bf16(device, precision: str) -> None:
    """One line on stderr when ``--precision bf16`` would run emulated on this CPU."""
    if precision == "bf16" and str(device).startswith("cpu") and not has_native_bf16():
        print("bench: note: this CPU has no native bf16 (no AVX512-BF16 or AMX): --precision bf16 runs "
              "emulated, many times slower than fp32", file=sys.stderr)
