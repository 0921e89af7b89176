"""N-gram counting: the counts of the hand-computed tiny corpus."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from jaxlm.models import ngram
from jaxlm.models.ngram import counts
from tests.models.ngram.helpers import EOS, TINY, A, B, C


def test_counts_of_tiny_corpus():
    c = ngram.count_ngrams(TINY, vocab_size=4, order=3, eos_id=EOS)
    s = 4  # <s>
    got = {}
    for n in (1, 2, 3):
        m = ngram.NGramModel(n, 4, EOS, True, c.keys[:n], [], [])
        for row, cnt in zip(m.ngram_words(n).tolist(), c.counts[n - 1].tolist(), strict=True):
            if cnt:
                got[tuple(row)] = cnt
    want = {
        (EOS,): 4, (A,): 3, (B,): 4, (C,): 3, (s,): 4,
        (s, A): 3, (A, B): 3, (B, C): 3, (C, EOS): 3, (B, EOS): 1, (s, B): 1,
        (s, A, B): 3, (A, B, C): 2, (B, C, EOS): 3, (A, B, EOS): 1, (s, B, C): 1,
    }  # fmt: skip
    assert got == want


def test_small_pages_switches_numpy_huge_pages_off_and_back():
    switch = np._core.multiarray._set_madvise_hugepage
    before = switch(True)
    try:
        with counts.small_pages():
            assert switch(False) is False  # off inside (the call returns the setting)
            with counts.small_pages():
                pass
            assert switch(False) is False
        assert switch(True) is True  # restored after
    finally:
        switch(before)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost",
    )]  # fmt: skip


def _mapped_bytes() -> int:
    """Bytes glibc's malloc holds in chunks of their own ``mmap`` (``mallinfo2().hblkhd``)."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    return mallinfo2().hblkhd


def _is_mapped(nbytes: int) -> bool:
    """Whether an array of ``nbytes`` gets its own mapping (rather than heap memory)."""
    before = _mapped_bytes()
    x = np.ones(nbytes // 8)
    grew = _mapped_bytes() - before
    del x
    return grew >= nbytes


needs_glibc = pytest.mark.skipif(
    counts._glibc_malloc() is None, reason="glibc's malloc (untuned by the environment) only"
)


@needs_glibc
def test_keep_freed_memory_serves_large_arrays_from_the_heap_and_restores_after():
    big = 256 << 20  # above the 32 MiB that glibc's adaptive threshold reaches
    assert _is_mapped(big)
    with counts.keep_freed_memory():
        assert not _is_mapped(big)
        with counts.keep_freed_memory():
            pass
        assert not _is_mapped(big)  # an inner block's end keeps the outer's setting
    assert _is_mapped(big)
    assert not _is_mapped(8 << 20)  # 8 MiB stays below the 32 MiB set after


@needs_glibc
def test_keep_freed_memory_leaves_a_tuned_environment_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    assert counts._glibc_malloc() is None
    with counts.keep_freed_memory():
        assert _is_mapped(256 << 20)
