"""Counting and estimating under a memory budget: corpora larger than memory.

The in-memory path (:func:`~jaxlm.models.ngram.counts.count_ngrams` and
:func:`~jaxlm.models.ngram.smoothing.estimate`) holds every order's tables and the whole padded
token stream at once, about a kilobyte per training token for a 5-gram. :func:`build_chunked`
builds the same model, to the last bit of every probability and back-off weight, holding only
what a budget allows:

1. **Counting, order by order.** The token stream is cut into chunks that fit the budget (each
   read with the ``N - 1`` tokens before it, so no n-gram is lost at a cut). For order ``n``
   each chunk's n-grams get the trie keys of the in-memory tables, ``row(prefix) * (V + 1) +
   word``, from the rows of order ``n - 1`` found by the previous pass (kept on disk, one int64
   per token); each chunk's sorted unique keys, counts and suffix rows are spilled to disk as
   flat integer arrays. A k-way merge of the sorted runs, in vectorised blocks (each round takes
   every entry up to the smallest of the runs' block ends, sorts them together and sums equal
   keys), writes the order's table and, per run, the global row of each of its entries, from
   which a sweep writes the rows of order ``n`` for the next pass.
2. **Adjusted counts, order by order**: continuation counts ``N1+(. w)`` accumulate over the
   next order's suffix rows in blocks; counts of counts give the discounts.
3. **Interpolation, order by order**, in blocks of whole contexts over the sorted tables with
   :func:`~jaxlm.models.ngram.smoothing.interpolate_order`, the in-memory estimate's own
   function; only the next lower order's probabilities (8 bytes per n-gram) are held whole.
   Each block's output goes straight to disk.

The model's tables end up in files that the returned :class:`NGramModel` memory-maps
(``np.memmap``), so a model larger than the budget can still be scored and saved; the files are
unlinked at once and vanish with the model.

KenLM's ``lmplz`` (Heafield et al. 2013) is the reference design: it counts the highest order in
a fixed memory block (``-S``), sorts and spills to a temporary folder (``-T``), then derives the
lower orders' adjusted counts from the sorted highest-order stream, in suffix order. What this
adds: the result is exactly this library's in-memory model (the same trie tables, the same
floats), in numpy with no Python loop per n-gram, and every method of
:mod:`~jaxlm.models.ngram.smoothing` (cut-offs and add-k too), not only modified Kneser-Ney.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.errors import ConfigError
from jaxlm.models.ngram.counts import buffer as _buf
from jaxlm.models.ngram.counts import check_shape, check_tokens, pad
from jaxlm.models.ngram.counts import unique_keys as _unique
from jaxlm.models.ngram.model import NGramModel
from jaxlm.models.ngram.smoothing import (
    _KN_METHODS,
    METHODS,
    _cutoff_list,
    count_of_counts,
    discount_tables,
    interpolate_order,
    unigram_probs,
)

# Working memory, measured with tracemalloc on PTB and rounded up: bytes per token of a counting
# chunk (the padded window, its keys and np.unique's sort), and per n-gram of a merge or an
# estimate block (its columns and temporaries).
TOKEN_BYTES = 176
ENTRY_BYTES = 160
MIN_CHUNK = 4096  # tokens: a budget that cannot hold this many is too small to make progress
MIN_MERGE_BLOCK = 1024  # entries per run in a merge round
# Entries per block of the estimate at most: its temporaries (8 MB each) then come from the
# allocator's heap, reused block after block, instead of fresh pages for every order (a
# whole-order block of a 16M-token corpus allocated ~1 GB of temporaries per order, and first
# touches of memory cost up to ~8 s per GB on the VM this was measured on); the block count
# does not change the floats (blocks end at context boundaries).
MAX_BLOCK = 1 << 20

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "t": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}
EXPECTED = "bytes, '4GB' or a fraction of RAM in (0, 1]"


def physical_memory() -> int:
    """This machine's RAM in bytes (``sysconf``), what a fractional ``memory_limit`` scales.

    Example:
      >>> physical_memory() > 0
      True
    """
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def parse_memory_limit(value: Any) -> int | None:
    """``config.model.memory_limit`` in bytes: an int of bytes, ``"4GB"``, or a fraction of RAM.

    ``K``/``M``/``G``/``T`` and ``KiB``... are powers of 1024, ``KB``/``MB``/``GB``/``TB``
    powers of 1000; a float (or a decimal string such as ``"0.25"``) in ``(0, 1]`` is that share
    of :func:`physical_memory`.

    Args:
      value: the field's value; None or ``""`` is no limit.

    Returns:
      Bytes, or None for no limit (the in-memory path).

    Raises:
      ValueError: anything else, naming the value and what was expected.

    Example:
      >>> parse_memory_limit("4GB"), parse_memory_limit("512MiB"), parse_memory_limit(10**9)
      (4000000000, 536870912, 1000000000)
      >>> parse_memory_limit(0.5) == physical_memory() // 2
      True
      >>> parse_memory_limit("4XB")
      Traceback (most recent call last):
      ...
      ValueError: memory_limit='4XB': expected bytes, '4GB' or a fraction of RAM in (0, 1]
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    bad = ValueError(f"memory_limit={value!r}: expected {EXPECTED}")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int | np.integer):
        if value < 1:
            raise bad
        return int(value)
    if isinstance(value, float):
        if not (math.isfinite(value) and 0 < value <= 1):
            raise bad
        return int(value * physical_memory())
    if not isinstance(value, str):
        raise bad
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
    if not match or match.group(2).lower() not in _UNITS:
        raise bad
    number, unit = match.group(1), match.group(2).lower()
    if not unit and "." in number:
        return parse_memory_limit(float(number))
    size = int(math.ceil(float(number) * _UNITS[unit]))
    if size < 1:
        raise bad
    return size


def _size(n: float) -> str:
    """Bytes as ``"12.3 MB"`` (decimal units, as ``"4GB"`` in a config means)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class _Disk:
    """Flat binary columns in a scratch folder: append blocks, read ranges back.

    Columns are held in memory while they fit ``ram_bytes`` (the part of the budget that the
    working arrays leave free), and written to files in ``root`` from the first block that does
    not fit: a corpus that one chunk covers never waits on the disk (the disk's write speed, not
    the sorts, was most of such a build). A block appended in memory is kept as it is (made
    read-only), so callers must not change it afterwards; reads of held columns are views.
    """

    def __init__(self, root: Path, ram_bytes: int = 0) -> None:
        self.root = root
        self.ram_bytes = ram_bytes
        self.used = 0
        self.held: dict[str, list[np.ndarray]] = {}
        self.dtypes: dict[str, np.dtype] = {}  # each column's, from its first block

    def path(self, name: str) -> Path:
        return self.root / name

    def _spill(self, name: str) -> None:
        """Moves a held column to its file."""
        blocks = self.held.pop(name)
        with open(self.root / name, "wb") as f:
            for b in blocks:
                b.tofile(f)
        self.used -= sum(b.nbytes for b in blocks)

    def append(self, name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        if self.dtypes.setdefault(name, arr.dtype) != arr.dtype:
            raise AssertionError(f"{name}: {arr.dtype} appended to {self.dtypes[name]}")
        if name in self.held:
            if self.used + arr.nbytes <= self.ram_bytes:
                if not arr.flags.owndata:  # a view would hold its whole base
                    arr = arr.copy()
                arr.flags.writeable = False
                self.held[name].append(arr)
                self.used += arr.nbytes
                return
            self._spill(name)
        with open(self.root / name, "ab") as f:
            arr.tofile(f)

    def touch(self, name: str) -> None:
        self.remove(name)
        self.dtypes.pop(name, None)
        if self.ram_bytes > 0:
            self.held[name] = []
        else:
            open(self.root / name, "wb").close()

    def _whole(self, name: str, dtype: Any) -> np.ndarray:
        """A held column as one array (its blocks joined once)."""
        blocks = self.held[name]
        if len(blocks) != 1:
            whole = np.concatenate(blocks) if blocks else np.zeros(0, dtype)
            whole.flags.writeable = False
            blocks[:] = [whole]
        return blocks[0].view(dtype)

    def read(self, name: str, dtype: Any, start: int = 0, count: int = -1) -> np.ndarray:
        """Entries ``start .. start + count`` (to the end for -1), in the column's own dtype
        (``dtype`` for a column never appended to)."""
        dtype = self.dtypes.get(name, np.dtype(dtype))
        if name in self.held:
            whole = self._whole(name, dtype)
            return whole[start:] if count < 0 else whole[start : start + count]
        with open(self.root / name, "rb") as f:
            f.seek(start * dtype.itemsize)
            return np.fromfile(f, dtype, count)

    def length(self, name: str, dtype: Any) -> int:
        dtype = self.dtypes.get(name, np.dtype(dtype))
        if name in self.held:
            return sum(b.nbytes for b in self.held[name]) // np.dtype(dtype).itemsize
        return (self.root / name).stat().st_size // np.dtype(dtype).itemsize

    def remove(self, *names: str) -> None:
        for name in names:
            if name in self.held:
                self.used -= sum(b.nbytes for b in self.held.pop(name))
            (self.root / name).unlink(missing_ok=True)

    def rename(self, old: str, new: str) -> None:
        self.remove(new)
        if old in self.dtypes:
            self.dtypes[new] = self.dtypes.pop(old)
        if old in self.held:
            self.held[new] = self.held.pop(old)
        else:
            (self.root / old).rename(self.root / new)

    def memmap(self, name: str, dtype: Any) -> np.ndarray:
        """The column read-only: the held array itself, or a map of its file."""
        dtype = self.dtypes.get(name, np.dtype(dtype))
        if name in self.held:
            return self._whole(name, dtype)
        n = self.length(name, dtype)
        if n == 0:
            return np.zeros(0, dtype)
        return np.memmap(self.root / name, dtype=dtype, mode="r", shape=(n,))


def _chunks(num_tokens: int, chunk: int) -> list[tuple[int, int]]:
    """``[start, end)`` token ranges of at most ``chunk`` tokens covering the stream."""
    return [(s, min(s + chunk, num_tokens)) for s in range(0, num_tokens, chunk)]


def _window(
    tokens: np.ndarray,
    s: int,
    e: int,
    order: int,
    vocab_size: int,
    eos_id: int | None,
    add_bos: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The padded window of chunk ``[s, e)`` with the ``order - 1`` tokens before it.

    Returns ``(seq, hist, tpos, s0)``: the window's padded symbols, histories and the padded
    position of each of its tokens (as :func:`pad` gives them), and the window's first token
    (the chunk's own tokens are ``tpos[s - s0:]``). The window may start inside a sentence,
    where :func:`pad` puts a ``<s>`` that is not there; no n-gram of the chunk's own tokens
    reaches it, since they all lie ``order - 1`` tokens or more into the window, and their
    histories only count as at least ``order - 1``.
    """
    s0 = max(0, s - (order - 1))
    window = np.asarray(tokens[s0:e])
    seq, hist, tpos = pad(window, vocab_size, eos_id, add_bos)
    return seq, hist, tpos, s0


def _count_order(
    disk: _Disk,
    tokens: np.ndarray,
    bounds: list[tuple[int, int]],
    n: int,
    order: int,
    vocab_size: int,
    eos_id: int | None,
    add_bos: bool,
    windows: dict[int, tuple[np.ndarray, ...]] | None = None,
    idx: Any = np.int64,
    pool: dict[str, np.ndarray] | None = None,
) -> list[int]:
    """Spills each chunk's sorted order-``n`` counts; returns the runs' lengths.

    Per chunk ``c``: ``run{c}.keys/.counts/.suffix`` (the unique keys, their counts and suffix
    rows) and ``run{c}.inv`` (per token, its n-gram's index in the run, -1 for none).
    ``windows``, when given, keeps each chunk's padded window for the next order (one chunk's
    window is part of its counting memory, so a lone chunk is padded once, not once per order).
    Rows and counts are stored as ``idx`` (int32 where the corpus is small enough for them).
    ``pool`` holds scratch buffers reused from order to order (see :func:`_buf`).
    """
    m = vocab_size + 1
    lengths = []
    for c, (s, e) in enumerate(bounds):
        if windows is not None and c in windows:
            seq, tpos, own, hist_own, s0 = windows[c]
        else:
            seq, hist, tpos, s0 = _window(tokens, s, e, order, vocab_size, eos_id, add_bos)
            tpos = tpos.astype(idx)
            own = tpos[s - s0 :]
            # only whether a history reaches n - 1 matters, and m fits 32 bits: a compact window
            hist_own = np.minimum(hist[own], order).astype(np.int8 if order < 127 else np.int64)
            seq = seq.astype(np.int32 if m < 2**31 else np.int64)
            del hist
            if windows is not None:
                windows[c] = (seq, tpos, own, hist_own, s0)
        if n == 2:
            prev = seq
        else:  # rows of the (n-1)-grams ending at each padded position; none at <s>
            prev = _buf(pool, "prev", len(seq), idx)
            prev.fill(-1)
            prev[tpos] = disk.read(f"ids{n - 1}", idx, s0, e - s0)
        has = hist_own >= n - 1
        pos = own[has]
        keys = _buf(pool, "keys", len(pos), np.int64)
        np.multiply(prev[pos - 1], m, out=keys, dtype=np.int64)
        keys += seq[pos]
        uniq, inverse, cnt, first = _unique(keys, pool)
        del keys
        suffix = prev[pos[first]]  # every occurrence of an n-gram has the same suffix
        inv = np.full(len(own), -1, np.int32)  # chunk-local indices fit in 32 bits
        inv[has] = inverse
        for name, arr in (
            (f"run{c}.keys", uniq),
            (f"run{c}.counts", cnt.astype(idx)),
            (f"run{c}.suffix", suffix),
            (f"run{c}.inv", inv),
        ):
            disk.touch(name)
            disk.append(name, arr)
        lengths.append(len(uniq))
    return lengths


def _merge(disk: _Disk, lengths: list[int], n: int, budget: int, idx: Any = np.int64) -> int:
    """k-way merge of the sorted runs into ``keys{n}/counts{n}/suffix{n}``; per run ``c``,
    ``run{c}.map``: the merged row of each of its entries. Returns the merged length."""
    k = len(lengths)
    for name in (f"keys{n}", f"counts{n}", f"suffix{n}"):
        disk.touch(name)
    if k == 1:  # one run is already the table; its rows are its own (no run0.map)
        for col in ("keys", "counts", "suffix"):
            disk.rename(f"run0.{col}", f"{col}{n}")
        return lengths[0]
    block = max(MIN_MERGE_BLOCK, budget // (k * ENTRY_BYTES))
    pos = [0] * k
    for c in range(k):
        disk.touch(f"run{c}.map")
    total = 0
    while True:
        live = [c for c in range(k) if pos[c] < lengths[c]]
        if not live:
            break
        heads = {c: disk.read(f"run{c}.keys", np.int64, pos[c], block) for c in live}
        # every entry up to the smallest block end is final: later entries of each run are
        # larger than its block's end
        limit = min(int(h[-1]) for h in heads.values())
        take = {c: int(np.searchsorted(heads[c], limit, "right")) for c in live}
        keys = np.concatenate([heads[c][: take[c]] for c in live])
        counts = np.concatenate(
            [disk.read(f"run{c}.counts", np.int64, pos[c], take[c]) for c in live]
        )
        suffix = np.concatenate(
            [disk.read(f"run{c}.suffix", np.int64, pos[c], take[c]) for c in live]
        )
        order_ = np.argsort(keys, kind="stable")
        sk = keys[order_]
        new = np.empty(len(sk), bool)
        new[0] = True
        np.not_equal(sk[1:], sk[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        disk.append(f"keys{n}", sk[starts])
        disk.append(f"counts{n}", np.add.reduceat(counts[order_], starts))
        disk.append(f"suffix{n}", suffix[order_][starts])
        group = np.empty(len(sk), np.int64)
        group[order_] = np.cumsum(new) - 1 + total
        at = 0
        for c in live:
            disk.append(f"run{c}.map", group[at : at + take[c]].astype(idx))
            at += take[c]
            pos[c] += take[c]
        total += len(starts)
    for c in range(k):
        disk.remove(f"run{c}.keys", f"run{c}.counts", f"run{c}.suffix")
    return total


def _sweep_ids(
    disk: _Disk, bounds: list[tuple[int, int]], n: int, keep: bool, idx: Any = np.int64
) -> None:
    """Per token, the merged row of the order-``n`` n-gram ending there (``ids{n}``, -1 for
    none) when ``keep`` (the next order reads it); drops the runs' maps and inverses."""
    if keep:
        disk.touch(f"ids{n}")
    for c in range(len(bounds)):
        if keep:
            inv = disk.read(f"run{c}.inv", np.int32)
            if len(bounds) == 1:  # the run's rows are the table's
                disk.append(f"ids{n}", inv.astype(idx))
                continue
            rows = disk.read(f"run{c}.map", idx)
            if len(rows) == 0:  # a chunk without n-grams of this order
                disk.append(f"ids{n}", np.full(len(inv), -1, idx))
            else:
                disk.append(f"ids{n}", np.where(inv >= 0, rows[np.maximum(inv, 0)], -1).astype(idx))
        disk.remove(f"run{c}.inv", f"run{c}.map")


def _ranges(length: int, size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of at most ``size`` entries over a column."""
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def _too_small(budget: int, need: int, what: str) -> ConfigError:
    return ConfigError(
        f"memory_limit={budget} ({_size(budget)}) is too small: {what} needs at least "
        f"{need} bytes ({_size(need)}); raise config.model.memory_limit"
    )


def build_chunked(
    tokens: Any,
    vocab_size: int,
    order: int,
    *,
    memory_limit: Any,
    tmp_dir: str | Path | None = None,
    method: str = "modified_kneser_ney",
    discount: Any = None,
    k: float = 1.0,
    cutoffs: Sequence[int] | None = None,
    discount_fallback: Sequence[float] | None = (0.5, 1.0, 1.5),
    eos_id: int | None = None,
    add_bos: bool = True,
    vocab: Sequence[str] | None = None,
) -> NGramModel:
    """Counts and estimates an n-gram model within a memory budget, spilling to disk.

    The result equals :func:`~jaxlm.models.ngram.build`'s bit for bit (keys, log-probabilities,
    back-off weights, discounts); see the module docstring for how. The budget covers the
    working arrays; the interpreter and ``tokens`` themselves (pass an ``np.memmap`` for a corpus
    larger than memory) come on top.

    Args:
      tokens: 1-D training ids in ``[0, vocab_size)``, an array or a memory map.
      vocab_size: ``V``.
      order: highest order ``N``.
      memory_limit: bytes, a string such as ``"4GB"``, or a fraction of RAM in ``(0, 1]``
        (:func:`parse_memory_limit`).
      tmp_dir: where the chunks spill (a fresh folder inside it, removed at the end); None: the
        system's temporary folder.
      method: see :func:`~jaxlm.models.ngram.estimate`.
      discount: see :func:`~jaxlm.models.ngram.estimate`.
      k: see :func:`~jaxlm.models.ngram.estimate`.
      cutoffs: see :func:`~jaxlm.models.ngram.estimate`.
      discount_fallback: see :func:`~jaxlm.models.ngram.estimate`.
      eos_id: sentence-end id, or None for one stream.
      add_bos: start each sentence from ``<s>``.
      vocab: token strings (kept for ARPA export).

    Returns:
      :class:`NGramModel` whose tables are read-only memory maps; ``info["memory"]`` holds the
      budget and the number of chunks the tokens were counted in.

    Raises:
      ValueError: bad arguments (as :func:`~jaxlm.models.ngram.build`), or (a
        :class:`~jaxlm.errors.ConfigError`) a budget too small to make progress: the message
        names the smallest that would do for the step that failed.

    Example:
      >>> from jaxlm.models.ngram import build
      >>> rng = np.random.default_rng(0)
      >>> tokens = rng.integers(0, 50, 20_000)
      >>> small = build_chunked(tokens, 50, 3, eos_id=0, memory_limit=1_000_000)
      >>> small.info["memory"]["chunks"]
      4
      >>> whole = build(tokens, 50, 3, eos_id=0)
      >>> all(np.array_equal(a, b) for a, b in zip(small.log_probs, whole.log_probs))
      True
    """
    budget = parse_memory_limit(memory_limit)
    if budget is None:
        raise ValueError("build_chunked: memory_limit is required (None is the in-memory path)")
    if method not in METHODS:
        raise ValueError(f"unknown n-gram method {method!r}; expected one of {METHODS}")
    if method == "add_k" and not k > 0:
        raise ValueError(f"add_k needs k > 0, got {k}")
    check_shape(order, vocab_size, eos_id)
    if vocab is not None and len(vocab) != vocab_size:
        raise ValueError(f"vocab has {len(vocab)} entries, the counts' vocab_size is {vocab_size}")
    tokens = check_tokens(tokens, vocab_size, "count_ngrams tokens")
    if tokens.ndim != 1:
        tokens = tokens.reshape(-1)
    num = len(tokens)
    if num == 0:
        raise ValueError("count_ngrams: the training token array is empty")
    m = vocab_size + 1
    if (2 * num + 2) * m >= 2**63:
        raise ValueError(f"vocab_size {vocab_size} and {num} tokens overflow int64 keys")
    cut = _cutoff_list(cutoffs, order)
    fixed = 8 * m * 8  # the unigram columns
    chunk = min((budget - fixed) // TOKEN_BYTES, 2**31 - 1)  # run.inv holds int32 indices
    if chunk < MIN_CHUNK:
        raise _too_small(budget, fixed + MIN_CHUNK * TOKEN_BYTES, f"counting {MIN_CHUNK} tokens")
    bounds = _chunks(num, chunk)
    # rows and counts stay below the padded length, at most 2 * num + 1: 32 bits where that fits
    idx = np.int32 if 2 * num + 2 < 2**31 else np.int64
    # the working arrays need what the largest chunk's counting needs (and two contexts' worth
    # for the estimate's blocks); the rest of the budget holds the spilled columns in memory
    work = min(budget - fixed, TOKEN_BYTES * min(chunk, num) + 2 * ENTRY_BYTES * (m + 1))
    budget_work = work + fixed
    root = Path(tempfile.mkdtemp(prefix="ngram-", dir=tmp_dir))
    try:
        disk = _Disk(root, ram_bytes=budget - budget_work)
        uni = _unigrams(tokens, bounds, vocab_size, eos_id, add_bos)
        lengths = [m]
        windows: dict[int, tuple[np.ndarray, ...]] | None = {} if len(bounds) == 1 else None
        # a lone chunk's scratch buffers, reused order after order and freed before the estimate
        # (with many chunks, buffers kept across chunks would raise the peak towards the budget)
        pool: dict[str, np.ndarray] | None = {} if len(bounds) == 1 else None
        for n in range(2, order + 1):
            runs = _count_order(
                disk, tokens, bounds, n, order, vocab_size, eos_id, add_bos, windows, idx, pool
            )
            total = _merge(disk, runs, n, work, idx)
            if total == 0:
                raise ValueError(
                    f"count_ngrams: no {n}-grams in the data (sentences too short for order "
                    f"{order})"
                )
            _sweep_ids(disk, bounds, n, n < order, idx)
            if n > 2:
                disk.remove(f"ids{n - 1}")
            lengths.append(total)
        del windows, pool
        model = _estimate(disk, uni, lengths, budget_work, order, vocab_size, method, cut,
                          discount, k, discount_fallback, eos_id, add_bos, vocab)  # fmt: skip
        model.info["memory"] = {"limit_bytes": budget, "chunks": len(bounds)}
        return model
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the model's maps outlive their files


def _unigrams(
    tokens: np.ndarray,
    bounds: list[tuple[int, int]],
    vocab_size: int,
    eos_id: int | None,
    add_bos: bool,
) -> np.ndarray:
    """Raw unigram counts, ``<s>`` (one per sentence start) last, as :func:`count_ngrams`."""
    m = vocab_size + 1
    counts = np.zeros(m, np.int64)
    starts = 1
    for s, e in bounds:
        chunk = np.asarray(tokens[s:e])
        counts[:vocab_size] += np.bincount(chunk, minlength=m)[:vocab_size]
        if eos_id is not None:
            stop = e if e < len(tokens) else e - 1  # an <eos> at the very end starts nothing
            starts += int(np.count_nonzero(chunk[: stop - s] == eos_id))
    if add_bos:
        counts[vocab_size] = starts
    return counts


def _estimate(
    disk: _Disk,
    uni: np.ndarray,
    lengths: list[int],
    budget: int,
    order: int,
    vocab_size: int,
    method: str,
    cut: list[int],
    discount: Any,
    k: float,
    fallback: Sequence[float] | None,
    eos_id: int | None,
    add_bos: bool,
    vocab: Sequence[str] | None,
) -> NGramModel:
    """Adjusted counts, discounts and interpolation over the merged tables, order by order."""
    m = vocab_size + 1
    kn = method in _KN_METHODS
    cocs = []
    # -- adjusted counts (continuation counts below the top order) and counts of counts --------
    bos_prev = np.arange(m) == vocab_size  # whether each n-gram starts with <s>
    adjusted_uni = uni.copy()
    for n in range(1, order + 1):
        size = lengths[n - 1]
        cont = None
        if kn and n < order:  # N1+(. w): how many order n+1 n-grams end in each n-gram
            held = 10 * size + (lengths[n - 2] if n > 1 else 0)
            cont = np.zeros(size, np.int64)
            step = _block_size(budget, held, m, f"continuation counts of order {n}")
            for a, b in _ranges(lengths[n], step):
                _tally(cont, disk.read(f"suffix{n + 1}", np.int64, a, b - a))
        if n == 1:
            if cont is not None:
                adjusted_uni = np.where(bos_prev, uni, cont)
            adjusted_uni[vocab_size] = 0  # <s> is never predicted
            cocs.append(count_of_counts(adjusted_uni))
            continue
        coc = np.zeros(5, np.int64)
        bos_here = np.zeros(size, bool) if cont is not None else None
        if cont is not None:
            disk.touch(f"adj{n}")
        step = _block_size(budget, 10 * size, m, f"adjusted counts of order {n}")
        for a, b in _ranges(size, step):
            adj = disk.read(f"counts{n}", np.int64, a, b - a)
            if cont is not None:
                bos_here[a:b] = bos_prev[disk.read(f"keys{n}", np.int64, a, b - a) // m]
                adj = np.where(bos_here[a:b], adj, cont[a:b])
                disk.append(f"adj{n}", adj)
            coc += count_of_counts(adj)
        cocs.append(coc)
        del cont
        bos_prev = bos_here
    dtabs, fell_back = discount_tables(method, cocs, discount, order, fallback)
    extra = k * vocab_size if method == "add_k" else 0.0

    # -- interpolation and pruning -----------------------------------------------------------
    probs = unigram_probs(adjusted_uni, dtabs[0], extra)
    with np.errstate(divide="ignore"):
        log_probs1 = np.log(probs)
    keys_out: list[np.ndarray] = [np.arange(m, dtype=np.int64)]
    log_probs: list[np.ndarray] = [log_probs1]
    log_backoffs: list[np.ndarray] = []
    keep_prev = np.ones(m, bool)
    new_row = None  # renumbering of the previous order's rows after cut-offs (None: identity)
    num_kept = [m]
    for n in range(2, order + 1):
        size, n_ctx = lengths[n - 1], lengths[n - 2]
        held = 8 * n_ctx + n_ctx + size + (8 * n_ctx if new_row is not None else 0)
        step = _block_size(budget, held, m, f"interpolating order {n}")
        for name in (f"outkeys{n}", f"logp{n}", f"logb{n - 1}", f"probs{n}"):
            disk.touch(name)
        keep_here = np.zeros(size, bool)
        # counts are at least 1: without a cut-off and with the rows below unchanged, the output
        # keys are keys{n} itself, renamed at the end instead of written again
        same_keys = cut[n - 1] < 1 and new_row is None
        col = f"adj{n}" if (kn and n < order) else f"counts{n}"
        start, lo = 0, 0
        while start < size:
            stop = min(start + step, size)
            key = disk.read(f"keys{n}", np.int64, start, stop - start)
            prefix = key // m
            if stop < size:  # end the block at a context boundary
                hi = int(prefix[-1])
                stop = start + int(np.searchsorted(prefix, hi))
                key, prefix = key[: stop - start], prefix[: stop - start]
            else:
                hi = n_ctx
            raw = disk.read(f"counts{n}", np.int64, start, stop - start)
            adj = raw if col == f"counts{n}" else disk.read(col, np.int64, start, stop - start)
            suffix = disk.read(f"suffix{n}", np.int64, start, stop - start)
            kept = raw > cut[n - 1]
            keep_here[start:stop] = kept
            p, gamma = interpolate_order(
                adj, prefix - lo, kept, probs[suffix], dtabs[n - 1], hi - lo, extra
            )
            with np.errstate(divide="ignore"):
                if new_row is not None:
                    key = new_row[prefix] * m + key % m
                if not same_keys:
                    disk.append(f"outkeys{n}", key[kept])
                disk.append(f"logp{n}", np.log(p[kept]))
                disk.append(f"logb{n - 1}", np.log(gamma[keep_prev[lo:hi]]))
            if n < order:
                disk.append(f"probs{n}", p)
            start, lo = stop, hi
        if same_keys:
            disk.rename(f"keys{n}", f"outkeys{n}")
        disk.remove(f"keys{n}", f"adj{n}", f"suffix{n}")
        keys_out.append(disk.memmap(f"outkeys{n}", np.int64))
        log_probs.append(disk.memmap(f"logp{n}", np.float64))
        log_backoffs.append(disk.memmap(f"logb{n - 1}", np.float64))
        num_kept.append(int(keep_here.sum()))
        new_row = np.cumsum(keep_here) - 1 if not keep_here.all() else None
        probs = np.zeros(0)  # free the lower order's before reading this one's
        if n < order:
            probs = disk.read(f"probs{n}", np.float64)
        disk.remove(f"probs{n}", f"counts{n}")
        keep_prev = keep_here
    info = {
        "method": method,
        "discounts": [t[1:].tolist() for t in dtabs] if method != "add_k" else None,
        "discount_fallback_orders": fell_back,
        "k": k if method == "add_k" else None,
        "cutoffs": cut,
        "num_ngrams": num_kept,
        "num_train_tokens": int(uni[:vocab_size].sum()),
    }
    vocab_t = tuple(vocab) if vocab is not None else None
    return NGramModel(
        order, vocab_size, eos_id, add_bos, keys_out, log_probs, log_backoffs, vocab_t, info
    )


def _tally(out: np.ndarray, rows: np.ndarray) -> None:
    """Adds to ``out[r]`` how often each row ``r`` occurs in ``rows``."""
    if len(rows) >= len(out) // 4:  # a dense count is cheaper than scattered adds
        out += np.bincount(rows, minlength=len(out))
    else:
        np.add.at(out, rows, 1)


def _block_size(budget: int, held: int, m: int, what: str) -> int:
    """Entries per block once ``held`` bytes are taken; at least one context's worth, at most
    ``MAX_BLOCK`` (or one context's worth if that is more)."""
    step = (budget - held) // ENTRY_BYTES
    if step < m + 1:
        raise _too_small(budget, held + (m + 1) * ENTRY_BYTES, what)
    return min(step, max(MAX_BLOCK, m + 1))
