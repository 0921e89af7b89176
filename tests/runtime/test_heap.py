"""jaxlm.runtime.heap: freed large buffers stay in the heap, so touching them again does not fault.

Each probe allocates, fills and frees a 64 MiB block six times, on the main thread or on a second
thread (XLA's worker threads allocate a step's temporaries; glibc gives such threads secondary
arenas, which map any block above 64 MiB afresh), and counts the page faults of the last five.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import ctypes, resource, sys, threading
from jaxlm.runtime import keep_freed_memory
result = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MiB)
def step():
    p = libc.malloc(size)
    libc.memset(p, 1, size)
    libc.free(p)
def probe():
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print(result, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
if sys.argv[2] == "thread":
    worker = threading.Thread(target=probe)
    worker.start()
    worker.join()
else:
    probe()
"""


def _faults(mode: str, where: str = "main", env: dict[str, str] | None = None) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, where],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_keep_freed_memory_stops_page_faults_on_reused_buffers(where):
    result, kept = _faults("keep", where)
    _, default = _faults("default", where)
    assert result == "True"
    # Default glibc maps and unmaps each 64 MiB block: 5 x 16,384 fresh 4 KiB pages.
    assert default > 5 * 8_000, default
    assert kept < default / 20, (kept, default)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_environment_settings_win():
    import os

    for name, value in [("MALLOC_MMAP_THRESHOLD_", "131072"), ("MALLOC_ARENA_MAX", "4")]:
        result, _ = _faults("keep", env=dict(os.environ, **{name: value}))
        assert result == "False", name
