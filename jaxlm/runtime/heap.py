"""Keeps large freed buffers in the process heap, so a training step does not page-fault.

XLA's CPU runtime allocates each step's temporaries with ``malloc`` on its worker threads: one
block per step that holds most of them (550 MiB for the Transformer benchmark step, 165 MiB for
the char LSTM one) and separate smaller ones (a PTB output layer's logits and their gradient, 16 MB
each). glibc maps such blocks afresh with ``mmap`` and unmaps them on ``free`` in three cases:
the block is above the mmap threshold; the thread allocates from one of glibc's secondary
arenas, whose heaps are capped at 64 MiB, so any larger block is mapped whatever the threshold;
or the freed memory at the top of the heap exceeds the trim threshold and goes back to the
kernel. Each step then touches new pages and pays a page fault (and the kernel's zeroing) for
every 4 KiB of them. :func:`keep_freed_memory` closes all three: one arena for every thread, a
high mmap threshold, no trimming. Measured on the 2-core CPU machine, training steps of the
speed benchmarks (``benchmarks/``) and ``configs/ptb.py:small``:

=============================================  ==============  ===============  ============
per step                                       glibc defaults  thresholds only  all three
=============================================  ==============  ===============  ============
Transformer benchmark: ms (page faults)        775 (152,000)   735 (150,000)    590 (0)
char LSTM benchmark: ms (page faults)          415 (42,000)    410 (42,000)     360 (0)
PTB-small trainer: tokens/s                    6,600           8,900            8,900
=============================================  ==============  ===============  ============

("thresholds only" was this module's first version.)

``python -m jaxlm.train`` calls :func:`keep_freed_memory` before JAX starts; library users may
call it themselves. The settings are those of ``MALLOC_ARENA_MAX=1``,
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in the environment, made with
``mallopt`` because the environment is read only when the process starts.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory(mmap_threshold_bytes: int = 1 << 30) -> bool:
    """Makes glibc reuse freed memory (a no-op elsewhere or when the user set its variables).

    Every thread allocates from the main heap, blocks below ``mmap_threshold_bytes`` come from
    it, and freed memory is never returned to the operating system: resident memory stays at
    the peak of a step instead of falling between steps. Call it before any thread starts (a
    thread that has already allocated keeps its arena) and before the first large allocation.

    Args:
      mmap_threshold_bytes: blocks of this size or more are still mapped separately.

    Returns:
      True if the settings were made; False when the C library is not glibc or one of the
      ``MALLOC_ARENA_MAX`` / ``MALLOC_*_THRESHOLD_`` environment variables already decides.

    Example:
      >>> from jaxlm.runtime import keep_freed_memory
      >>> keep_freed_memory()  # before JAX starts its threads  # doctest: +SKIP
      True
    """
    if any(name in os.environ for name in _ENV):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = (
        (_M_ARENA_MAX, 1),
        (_M_MMAP_THRESHOLD, mmap_threshold_bytes),
        (_M_TRIM_THRESHOLD, -1),
    )
    return all(mallopt(option, value) == 1 for option, value in settings)
