"""glibc malloc settings for tensor work on CPU: keep freed memory in the process and reuse it.

By default glibc serves every allocation above a threshold (128 KiB, adapting up to 32 MiB) with a fresh mmap and
hands it back to the kernel when it is freed, so each new tensor of a layer's or the model's size is faulted in
page by page again. A meta-step creates dozens of them (the inner gradient, the adapted weights, the outer
gradient and its partial sums, the update's backward), and on CPU the page faults cost as much as the arithmetic.
With mmap per block off and trimming limited, freed blocks stay in the heap and the next tensor of that size
reuses them. Measured on SmolLM2-135M (docs/performance.md): the exact second-order meta-step about 2x faster, a
plain forward + backward about 1.5x, the same peak RSS.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (glibc malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # free memory kept at the top of the heap before it is returned (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (no mmap per large block, trim only above 2 GiB free at
    the heap's top); True if applied. A no-op off Linux/glibc, or when the environment sets PROMPTSTEP_MALLOC=default.
    Affects allocations made after the call, in the whole process; results are unchanged, only where memory comes
    from (the process's peak RSS is the same; its RSS after a peak stays nearer the peak)."""
    if os.environ.get("PROMPTSTEP_MALLOC", "").strip().lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
