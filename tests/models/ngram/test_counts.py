"""N-gram counting: the counts of the hand-computed tiny corpus."""

from __future__ import annotations

import numpy as np

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
