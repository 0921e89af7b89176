"""Counting n-grams: sentence segmentation, the ``<s>`` symbols and the count tables.

An n-gram of order ``n`` is the integer key ``id(context) * (V + 1) + word``, where
``id(context)`` is the row of its ``(n-1)``-gram prefix in the order ``n-1`` table (a trie
flattened into sorted arrays). Counting is one sort per order; there is no Python loop over
tokens. Sentences start after each ``eos_id`` (and, for a ``[B, T]`` batch, at each row); with
``add_bos`` each starts from the context ``<s>``, the extra id ``V``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """While it lasts, numpy asks for no transparent huge pages for its large arrays.

    NumPy calls ``madvise`` on every allocation of 4 MiB or more, asking for huge pages. Where
    the kernel then compacts memory on the fault (``/sys/kernel/mm/transparent_hugepage/defrag``
    set to ``madvise``, a common default), counting, which makes many short-lived arrays of a
    few to a few hundred MB, spends more time in the kernel than in numpy: the PTB 5-gram run
    took 0.4-1.1 s of system time with them and 0.2-0.35 s without (wall median 2.23 s against
    1.98 s, five runs each). This is ``NUMPY_MADVISE_HUGEPAGE=0`` for a block of code
    (numpy's ``_set_madvise_hugepage``; nothing where a numpy lacks it), the previous setting
    restored after.

    Example:
      >>> with small_pages():
      ...     x = np.ones(1 << 20)
    """
    switch = getattr(np._core.multiarray, "_set_madvise_hugepage", None)
    if switch is None:
        yield
        return
    before = switch(False)
    try:
        yield
    finally:
        switch(before)


# glibc's mallopt parameters (malloc.h) and the values that keep_freed_memory sets: serve
# requests below 1 GiB from the heap, keep up to 2 GiB of free heap top (mallopt takes an int),
# and grow the heap 256 MiB at a time. After it: the values glibc's adaptive thresholds reach
# once a program has freed large arrays (mmap 32 MiB, trim twice that), and its top pad.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP = {_M_MMAP_THRESHOLD: 1 << 30, _M_TRIM_THRESHOLD: 2**31 - 1, _M_TOP_PAD: 256 << 20}
_AFTER = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20, _M_TOP_PAD: 128 << 10}
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_kept_lock = threading.Lock()
_kept_depth = 0


def _glibc_malloc() -> tuple[Callable[[int, int], int], Callable[[int], int]] | None:
    """glibc's ``(mallopt, malloc_trim)``, or None off glibc or where the environment already
    tunes malloc (``MALLOC_*_`` variables or ``glibc.malloc`` tunables: the caller's choice)."""
    if sys.platform != "linux" or any(v in os.environ for v in _MALLOC_ENV):
        return None
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return mallopt, trim


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[None]:
    """While it lasts, glibc's malloc keeps the memory numpy frees and serves the next arrays
    from it, instead of mapping fresh pages from the kernel for every large array.

    By default glibc maps each allocation above its (adaptive) threshold of at most 32 MiB
    afresh and unmaps it on ``free``, and hands the top of its heap back past 128 KiB. Counting
    makes many short-lived arrays of tens to hundreds of MB, so every one of them page-faults
    its memory in again. A 16M-token 5-gram built in three chunks (two alternating pairs) took
    29.2-29.8 s with glibc's defaults and 23.3-24.5 s inside this block (2.75M and 0.19M minor
    faults in runs of the build alone); the memory kept is reused, not added: the process,
    which then wrote the ARPA file, peaked at 882-885 MiB against 1,064-1,065 MiB.

    The setting is process-wide (``mallopt``), so nested and concurrent blocks share one: the
    outermost sets it, and its end sets the thresholds that glibc's adaptive ones reach once a
    program has freed large arrays (mmap 32 MiB, trim 64 MiB): ``mallopt`` turns the adaptation
    off, and glibc's starting 128 KiB would map every later array of 128 KiB or more afresh. The
    end of every block hands the kept memory back to the kernel (``malloc_trim``), so what
    comes after a build (writing the ARPA file, scoring) does not carry the build's memory in
    its resident set. Nothing happens off glibc, or where ``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or a ``glibc.malloc`` tunable is set: the
    environment's choice stands.

    Example:
      >>> with keep_freed_memory():
      ...     x = np.ones(1 << 20)
    """
    global _kept_depth
    libc = _glibc_malloc()
    if libc is None:
        yield
        return
    mallopt, trim = libc
    with _kept_lock:
        _kept_depth += 1
        if _kept_depth == 1:
            for param, value in _KEEP.items():
                mallopt(param, value)
    try:
        yield
    finally:
        with _kept_lock:
            _kept_depth -= 1
            if _kept_depth == 0:
                for param, value in _AFTER.items():
                    mallopt(param, value)
        trim(0)


def _segments(tokens: np.ndarray, eos_id: int | None, row_len: int | None) -> np.ndarray:
    """Indices in ``tokens`` where a sentence (or stream, or row) starts, ascending, with 0."""
    n = len(tokens)
    starts = [np.zeros(1, np.int64)]
    if eos_id is not None and n:
        after = np.flatnonzero(tokens[:-1] == eos_id) + 1
        starts.append(after.astype(np.int64))
    if row_len:
        starts.append(np.arange(row_len, n, row_len, dtype=np.int64))
    if not n:
        return np.zeros(0, np.int64)
    # each part is sorted; a sort and a mask, not np.unique (numpy 2.4's takes 0.39 s for the
    # 541k sentence starts of 10.7M tokens, its sort of them 5 ms)
    joined = np.concatenate(starts)
    if len(starts) > 2:
        joined.sort()
    first = np.ones(len(joined), bool)
    np.not_equal(joined[1:], joined[:-1], out=first[1:])
    return joined[first]


def pad(
    tokens: np.ndarray, bos_id: int, eos_id: int | None, add_bos: bool, row_len: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inserts ``<s>`` before each sentence: the sequence that counting and scoring walk.

    Args:
      tokens: 1-D token ids.
      bos_id: the id of ``<s>`` (``V``).
      eos_id: sentence-end id; a sentence starts after each one. None: one stream.
      add_bos: insert ``<s>``; False leaves the tokens as they are.
      row_len: also start a sentence every ``row_len`` tokens (the rows of a ``[B, T]`` batch).

    Returns:
      ``(seq, hist, token_pos)``: the int64 sequence with the ``<s>`` symbols; for each position
      of ``seq``, how many symbols of its sentence come before it (its usable history, ``<s>``
      included); and the position in ``seq`` of each of the original tokens.

    Example:
      >>> seq, hist, pos = pad(np.array([1, 2, 0, 3]), bos_id=4, eos_id=0, add_bos=True)
      >>> seq.tolist(), hist.tolist(), pos.tolist()
      ([4, 1, 2, 0, 4, 3], [0, 1, 2, 3, 0, 1], [1, 2, 3, 5])
    """
    starts = _segments(tokens, eos_id, row_len)
    if add_bos and len(starts):
        token_pos = np.zeros(len(tokens), np.int64)
        token_pos[starts] = 1
        np.cumsum(token_pos, out=token_pos)  # the <s> symbols at or before each token
        token_pos += np.arange(len(tokens))
        seg_pos = starts + np.arange(len(starts))
        seq = np.empty(len(tokens) + len(starts), np.int64)
        seq[token_pos] = tokens
        seq[seg_pos] = bos_id
    else:
        seq = tokens.astype(np.int64)
        seg_pos = starts
        token_pos = np.arange(len(tokens))
    mark = np.zeros(len(seq), np.int64)
    mark[seg_pos] = seg_pos
    hist = np.arange(len(seq)) - np.maximum.accumulate(mark) if len(seq) else mark
    return seq, hist, token_pos


def check_tokens(tokens: Any, vocab_size: int, what: str) -> np.ndarray:
    """Validates a token array: integers in ``[0, vocab_size)``.

    Args:
      tokens: token ids, any shape.
      vocab_size: ``V``.
      what: names the array in the error messages.

    Returns:
      ``tokens`` as a numpy array (the same array when it already is one).

    Raises:
      TypeError: the ids are not integers.
      ValueError: an id is outside ``[0, vocab_size)``.

    Example:
      >>> check_tokens([1, 2], vocab_size=3, what="tokens").tolist()
      [1, 2]
    """
    arr = np.asarray(tokens)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what}: expected integer token ids, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(
            f"{what}: token ids must be in [0, {vocab_size}), found {int(arr.min())}.."
            f"{int(arr.max())}"
        )
    return arr


@dataclasses.dataclass
class NGramCounts:
    """Raw n-gram counts of one corpus, as sorted trie tables (one per order).

    Attributes:
      order: the highest order ``N``.
      vocab_size: ``V``; ``<s>`` is id ``V``.
      eos_id: the sentence-end id, or None for one stream.
      add_bos: whether ``<s>`` was put before each sentence.
      keys: per order ``n`` (index ``n-1``), sorted int64 keys ``prefix_id * (V+1) + word``; for
        unigrams simply ``arange(V + 1)``.
      counts: per order, raw occurrence counts (int64), aligned with ``keys``.
      suffix: per order ``n >= 2``, the row in order ``n-1`` of the n-gram without its first word
        (index 0 holds an empty array).
      bos_first: per order, whether the n-gram starts with ``<s>``.
    """

    order: int
    vocab_size: int
    eos_id: int | None
    add_bos: bool
    keys: list[np.ndarray]
    counts: list[np.ndarray]
    suffix: list[np.ndarray]
    bos_first: list[np.ndarray]

    @property
    def bos_id(self) -> int:
        """The id of ``<s>``: one past the vocabulary."""
        return self.vocab_size


def find_row(keys: list[np.ndarray], vocab_size: int, words: Any) -> int:
    """The row of an n-gram in its order's sorted trie table, or -1 if it is not there.

    The tables are :class:`NGramCounts`'s ``keys`` (and an ``NGramModel``'s, laid out alike):
    order ``n``'s keys are ``prefix_row * (V + 1) + word``, so the lookup walks the orders.

    Args:
      keys: the per-order key tables.
      vocab_size: ``V``.
      words: the n-gram's ids, oldest first (``<s>`` is ``V``).

    Returns:
      The row in order ``len(words)``'s table, or -1.

    Example:
      >>> c = count_ngrams(np.array([0, 1, 0, 1]), vocab_size=2, order=2)
      >>> int(c.counts[1][find_row(c.keys, 2, [0, 1])]), find_row(c.keys, 2, [1, 1])
      (2, -1)
    """
    m = vocab_size + 1
    row = int(words[0])
    for j, w in enumerate(words[1:], 2):
        key = row * m + int(w)
        table = keys[j - 1]
        i = int(np.searchsorted(table, key))
        if i >= len(table) or table[i] != key:
            return -1
        row = i
    return row


def buffer(pool: dict[str, np.ndarray] | None, name: str, size: int, dtype: Any) -> np.ndarray:
    """A scratch array of ``size`` entries: ``pool``'s (grown when too small), reused order after
    order so that its pages are touched once, or a fresh one without a pool."""
    if pool is None:
        return np.empty(size, dtype)
    b = pool.get(name)
    if b is None or len(b) < size or b.dtype != np.dtype(dtype):
        pool.pop(name, None)
        b = pool[name] = np.empty(size, dtype)
    return b[:size]


def unique_keys(
    keys: np.ndarray, pool: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(keys, return_index=True, return_inverse=True, return_counts=True)`` for
    non-negative keys, except that the index is of some occurrence, not always the first.

    Where a key and its position fit in 63 bits together, one ``np.sort`` of
    ``key << bits | position`` replaces ``np.argsort`` (numpy's vectorised sort of plain
    integers is several times faster than its argsort); else an unstable argsort. With a
    ``pool`` the temporaries are its buffers, and so is the returned inverse: use it before
    the next call.

    Returns:
      ``(unique keys, inverse, counts, index of one occurrence of each)``.

    Example:
      >>> u, inv, cnt, at = unique_keys(np.array([5, 3, 5, 7]))
      >>> u.tolist(), inv.tolist(), cnt.tolist(), bool((np.array([5, 3, 5, 7])[at] == u).all())
      ([3, 5, 7], [1, 0, 1, 2], [1, 2, 1], True)
    """
    size = len(keys)
    bits = max(int(size - 1).bit_length(), 1)
    top = int(keys.max()) if size else 0
    if top.bit_length() + bits <= 63:
        sk = buffer(pool, "sk", size, np.int64)
        np.left_shift(keys, bits, out=sk)
        if pool is None:
            sk |= np.arange(size, dtype=np.int64)
        else:
            ar = pool.get("arange")
            if ar is None or len(ar) < size:
                ar = pool["arange"] = np.arange(size, dtype=np.int64)
            sk |= ar[:size]
        sk.sort()
        order = buffer(pool, "order", size, np.int64)
        np.bitwise_and(sk, (1 << bits) - 1, out=order)
        sk >>= bits
    else:
        order = np.argsort(keys)
        sk = keys[order]
    new = buffer(pool, "new", size, bool)
    new[:1] = True
    np.not_equal(sk[1:], sk[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    group = buffer(pool, "group", size, np.int64)
    np.cumsum(new, dtype=np.int64, out=group)
    group -= 1
    inverse = buffer(pool, "inverse", size, np.int64)
    inverse[order] = group
    counts = np.diff(np.append(starts, size))
    return sk[starts], inverse, counts.astype(np.int64), order[starts]


def check_shape(order: int, vocab_size: int, eos_id: int | None) -> None:
    """Refuses an order below 1, an empty vocabulary or a sentence end outside it (ValueError),
    for the in-memory and the chunked counts alike."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if eos_id is not None and not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary [0, {vocab_size})")


def count_ngrams(
    tokens: Any,
    vocab_size: int,
    order: int,
    *,
    eos_id: int | None = None,
    add_bos: bool = True,
) -> NGramCounts:
    """Counts every n-gram of orders 1..``order`` in a token array, without crossing sentences.

    Args:
      tokens: 1-D integer token ids in ``[0, vocab_size)``.
      vocab_size: ``V``, the tokenizer's vocabulary size.
      order: the highest order ``N >= 1``.
      eos_id: sentence-end id; contexts restart (at ``<s>``) after each one. None: one stream.
      add_bos: put ``<s>`` (id ``V``) before each sentence.

    Returns:
      :class:`NGramCounts`.

    Example:
      >>> c = count_ngrams(np.array([1, 2, 0, 1, 0]), vocab_size=3, order=2, eos_id=0)
      >>> c.counts[0].tolist()  # <eos>, 1, 2, <s>
      [2, 2, 1, 2]
    """
    check_shape(order, vocab_size, eos_id)
    tokens = check_tokens(tokens, vocab_size, "count_ngrams tokens").reshape(-1)
    if tokens.size == 0:
        raise ValueError("count_ngrams: the training token array is empty")
    m = vocab_size + 1
    if (2 * len(tokens) + 2) * m >= 2**63:  # keys are row * m + word, rows < len(seq)
        raise ValueError(f"vocab_size {vocab_size} and {len(tokens)} tokens overflow int64 keys")
    seq, hist, _ = pad(tokens, vocab_size, eos_id, add_bos)
    keys = [np.arange(m, dtype=np.int64)]
    counts = [np.bincount(seq, minlength=m).astype(np.int64)]
    suffix = [np.zeros(0, np.int64)]
    bos_first = [keys[0] == vocab_size]
    ids_prev = seq
    for n in range(2, order + 1):
        pos = np.flatnonzero(hist >= n - 1)
        if len(pos) == 0:
            raise ValueError(
                f"count_ngrams: no {n}-grams in the data (sentences too short for order {order})"
            )
        # first: one occurrence of each n-gram (its suffix row is the same at every one)
        uniq, inverse, cnt, first = unique_keys(ids_prev[pos - 1] * m + seq[pos])
        keys.append(uniq)
        counts.append(cnt.astype(np.int64))
        suffix.append(ids_prev[pos[first]])
        bos_first.append(bos_first[-1][uniq // m])
        ids = np.full(len(seq), -1, np.int64)
        ids[pos] = inverse
        ids_prev = ids
    return NGramCounts(order, vocab_size, eos_id, add_bos, keys, counts, suffix, bos_first)
