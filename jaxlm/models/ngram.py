"""Count-based n-gram language models: interpolated (modified) Kneser-Ney and friends.

Everything is vectorised numpy: an n-gram of order ``n`` is the integer key
``id(context) * (V + 1) + word``, where ``id(context)`` is the row of its ``(n-1)``-gram prefix in
the order ``n-1`` table (a trie flattened into sorted arrays). Counting is one sort per order;
scoring is one ``searchsorted`` per order; there is no Python loop over tokens.

Conventions (shared with the neural models):

- Token ids are ``0 .. V-1`` (the tokenizer's vocabulary); the sentence-start symbol ``<s>`` is
  the extra id ``V`` (:attr:`NGramModel.bos_id`). It is a context only, never predicted.
- With ``eos_id`` set (word-level text, one sentence a line), contexts stop at sentence ends: the
  token after each ``eos_id`` starts a new sentence, whose first context is ``<s>``; ``eos_id``
  itself (``</s>`` in ARPA files) is predicted and counted. Without ``eos_id`` the whole array is
  one stream that starts with ``<s>``. ``add_bos=False`` drops ``<s>`` (sentence-initial tokens
  then see shorter contexts).
- Log-probabilities are natural logs (nats); base 10 appears only in ARPA files
  (:mod:`jaxlm.models.arpa`). Perplexity goes through ``(sum, count)``.

Methods (Chen and Goodman 1998, all interpolated; each order mixes with the next lower one and
the unigrams with the uniform distribution over the ``V`` tokens, as KenLM's ``lmplz`` does):

- ``"modified_kneser_ney"``: three discounts per order ``D1, D2, D3+`` from the counts of counts.
- ``"kneser_ney"``: one discount per order, ``D = n1 / (n1 + 2 n2)`` unless given.
- ``"absolute"``: absolute discounting on raw counts at every order (no continuation counts).
- ``"add_k"``: additive smoothing, ``p(w|h) = (c(h w) + k V p_lower(w|h')) / (c(h) + k V)``; for
  unigrams this is textbook add-k, ``(c(w) + k) / (N + k V)``; higher orders add their ``k V``
  pseudo-counts in proportion to the next lower order instead of uniformly, which keeps the model
  a back-off model that ARPA files can hold exactly.

Kneser-Ney methods use raw counts at the highest order and for n-grams that start with ``<s>``
(they have no left extension), and continuation counts ``N1+(. w)`` elsewhere, as KenLM and SRILM
do. Count cut-offs drop n-grams whose raw count is ``<=`` the order's threshold; their mass goes to
the back-off weight of their context, so every distribution still sums to 1.

The estimated model is held in back-off form (the ARPA form): for each stored n-gram ``h w`` its
interpolated ``log p(w|h)``, and for each stored context ``h`` its back-off weight
``log gamma(h)``; ``p(w|h) = gamma(h) p(w|h')`` for ``h w`` not stored.

Example:
  >>> import numpy as np
  >>> tokens = np.array([2, 3, 0, 2, 4, 0, 3, 2, 4, 0])  # 0 is <eos>
  >>> model = build(tokens, vocab_size=5, order=3, eos_id=0, method="kneser_ney")
  >>> log_probs, orders = model.score(np.array([2, 4, 0]))
  >>> round(float(np.exp(model.next_log_probs([model.bos_id])).sum()), 12)
  1.0
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("modified_kneser_ney", "kneser_ney", "absolute", "add_k")
_KN_METHODS = ("modified_kneser_ney", "kneser_ney")


# ------------------------------------------------------------------------------------------------
# Segmentation: where sentences start, and the <s> symbols.


def _segments(tokens: np.ndarray, eos_id: int | None, row_len: int | None) -> np.ndarray:
    """Indices in ``tokens`` where a sentence (or stream, or row) starts, ascending, with 0."""
    n = len(tokens)
    starts = [np.zeros(1, np.int64)]
    if eos_id is not None and n:
        after = np.flatnonzero(tokens[:-1] == eos_id) + 1
        starts.append(after.astype(np.int64))
    if row_len:
        starts.append(np.arange(row_len, n, row_len, dtype=np.int64))
    return np.unique(np.concatenate(starts)) if n else np.zeros(0, np.int64)


def _pad(
    tokens: np.ndarray, bos_id: int, eos_id: int | None, add_bos: bool, row_len: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inserts ``<s>`` before each sentence; returns (seq, history length, token positions)."""
    starts = _segments(tokens, eos_id, row_len)
    if add_bos and len(starts):
        seq = np.insert(tokens.astype(np.int64), starts, bos_id)
        seg_pos = starts + np.arange(len(starts))
        index = np.arange(len(tokens))
        token_pos = index + np.searchsorted(starts, index, "right")
    else:
        seq = tokens.astype(np.int64)
        seg_pos = starts
        token_pos = np.arange(len(tokens))
    mark = np.zeros(len(seq), np.int64)
    mark[seg_pos] = seg_pos
    hist = np.arange(len(seq)) - np.maximum.accumulate(mark) if len(seq) else mark
    return seq, hist, token_pos


def _check_tokens(tokens: Any, vocab_size: int, what: str) -> np.ndarray:
    """Validates a token array: integers in ``[0, vocab_size)``."""
    arr = np.asarray(tokens)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what}: expected integer token ids, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(
            f"{what}: token ids must be in [0, {vocab_size}), found {int(arr.min())}.."
            f"{int(arr.max())}"
        )
    return arr


# ------------------------------------------------------------------------------------------------
# Counting.


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
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if eos_id is not None and not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary [0, {vocab_size})")
    tokens = _check_tokens(tokens, vocab_size, "count_ngrams tokens").reshape(-1)
    if tokens.size == 0:
        raise ValueError("count_ngrams: the training token array is empty")
    m = vocab_size + 1
    if (2 * len(tokens) + 2) * m >= 2**63:  # keys are row * m + word, rows < len(seq)
        raise ValueError(f"vocab_size {vocab_size} and {len(tokens)} tokens overflow int64 keys")
    seq, hist, _ = _pad(tokens, vocab_size, eos_id, add_bos)
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
        # first: index of each n-gram's first occurrence (numpy sorts stably for return_index)
        uniq, first, inverse, cnt = np.unique(
            ids_prev[pos - 1] * m + seq[pos],
            return_index=True,
            return_inverse=True,
            return_counts=True,
        )
        keys.append(uniq)
        counts.append(cnt.astype(np.int64))
        suffix.append(ids_prev[pos[first]])
        bos_first.append(bos_first[-1][uniq // m])
        ids = np.full(len(seq), -1, np.int64)
        ids[pos] = inverse
        ids_prev = ids
    return NGramCounts(order, vocab_size, eos_id, add_bos, keys, counts, suffix, bos_first)


# ------------------------------------------------------------------------------------------------
# Discounts.


def count_of_counts(adjusted: np.ndarray, max_count: int = 4) -> np.ndarray:
    """``n_1 .. n_max``: how many n-grams have (adjusted) count exactly 1, 2, ...

    Args:
      adjusted: counts of one order.
      max_count: the largest count to tally.

    Returns:
      int64 array of length ``max_count + 1`` (index 0 unused, 0).

    Example:
      >>> count_of_counts(np.array([1, 1, 2, 5])).tolist()
      [0, 2, 1, 0, 0]
    """
    a = adjusted[(adjusted >= 1) & (adjusted <= max_count)]
    out = np.bincount(a, minlength=max_count + 1).astype(np.int64)
    out[0] = 0
    return out


def modified_kn_discounts(n: Sequence[int]) -> tuple[float, float, float]:
    """Chen and Goodman's (1998, eq. 26) discounts ``D1, D2, D3+`` from counts of counts.

    ``Y = n1 / (n1 + 2 n2)``, ``D1 = 1 - 2 Y n2 / n1``, ``D2 = 2 - 3 Y n3 / n2``,
    ``D3+ = 3 - 4 Y n4 / n3``.

    Args:
      n: ``[_, n1, n2, n3, n4]`` as :func:`count_of_counts` returns.

    Returns:
      ``(D1, D2, D3)``.

    Raises:
      ValueError: some ``n_j`` is 0 or a discount leaves ``[0, j]`` (small or artificial data;
        pass explicit discounts instead).

    Example:
      >>> [round(d, 4) for d in modified_kn_discounts([0, 10, 4, 2, 1])]
      [0.5556, 1.1667, 1.8889]
    """
    n1, n2, n3, n4 = (int(x) for x in n[1:5])
    if min(n1, n2, n3) == 0:
        raise ValueError(
            f"cannot estimate modified Kneser-Ney discounts: counts of counts n1..n4 = "
            f"{[n1, n2, n3, n4]} have a zero (small or artificial data); pass discount=..."
        )
    y = n1 / (n1 + 2 * n2)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    for j, dj in enumerate(d, 1):
        if not 0.0 <= dj <= j:
            raise ValueError(f"modified Kneser-Ney discount D{j} = {dj:.4f} is outside [0, {j}]")
    return d


def kn_discount(n: Sequence[int]) -> float:
    """The single Kneser-Ney / absolute discount ``D = n1 / (n1 + 2 n2)`` (Ney et al. 1994).

    Args:
      n: ``[_, n1, n2, ...]`` as :func:`count_of_counts` returns.

    Returns:
      ``D`` in ``[0, 1]``.

    Example:
      >>> kn_discount([0, 10, 5])
      0.5
    """
    n1, n2 = int(n[1]), int(n[2])
    if n1 + n2 == 0:
        raise ValueError("cannot estimate a discount: no n-grams seen once or twice")
    return n1 / (n1 + 2 * n2)


def _discount_tables(
    method: str,
    adjusted: list[np.ndarray],
    discount: Any,
    order: int,
    fallback: Sequence[float] | None,
) -> tuple[list[np.ndarray], list[int]]:
    """Per order, the discount for adjusted counts 0, 1, 2, 3+; and the orders that fell back."""
    if method == "add_k":
        if discount is not None:
            raise ValueError("add_k takes k, not discount")
        return [np.zeros(4) for _ in range(order)], []
    tables, fell_back = [], []
    for n in range(1, order + 1):
        if discount is None:
            coc = count_of_counts(adjusted[n - 1])
            try:
                if method == "modified_kneser_ney":
                    d = modified_kn_discounts(coc)
                else:
                    d = (kn_discount(coc),) * 3
            except ValueError as e:
                if fallback is None:
                    raise ValueError(f"order {n}: {e}") from None
                fb = _given_discount("modified_kneser_ney", fallback, n, order)
                d = fb if method == "modified_kneser_ney" else (fb[0],) * 3
                fell_back.append(n)
        else:
            d = _given_discount(method, discount, n, order)
        tables.append(np.array([0.0, *d]))
    return tables, fell_back


def _given_discount(method: str, discount: Any, n: int, order: int) -> tuple[float, ...]:
    """The user's discount for order ``n`` as ``(D1, D2, D3)``, validated."""
    if method == "modified_kneser_ney":
        arr = np.asarray(discount, np.float64)
        if arr.shape == (3,):
            d = tuple(arr)
        elif arr.shape == (order, 3):
            d = tuple(arr[n - 1])
        else:
            raise ValueError(
                f"modified_kneser_ney discount: expected (D1, D2, D3) or {order} such triples, "
                f"got shape {arr.shape}"
            )
        limits = (1.0, 2.0, 3.0)
    else:
        arr = np.asarray(discount, np.float64)
        if arr.ndim == 0:
            d = (float(arr),) * 3
        elif arr.shape == (order,):
            d = (float(arr[n - 1]),) * 3
        else:
            raise ValueError(
                f"{method} discount: expected one number or {order} (one per order), got "
                f"shape {arr.shape}"
            )
        limits = (1.0, 1.0, 1.0)
    for j, (dj, lim) in enumerate(zip(d, limits, strict=True), 1):
        if not 0.0 <= dj <= lim:
            raise ValueError(f"order {n}: discount D{j} = {dj} is outside [0, {lim}]")
    return tuple(float(x) for x in d)


def _cutoff_list(cutoffs: Sequence[int] | None, order: int) -> list[int]:
    """Per-order cut-offs; missing higher orders repeat the last value; validated."""
    if cutoffs is None or len(cutoffs) == 0:
        return [0] * order
    cut = [int(c) for c in cutoffs][:order]
    cut += [cut[-1]] * (order - len(cut))
    if cut[0] != 0:
        raise ValueError(f"cutoffs: unigrams cannot be cut off (cutoffs[0] = {cut[0]}, need 0)")
    if any(c < 0 for c in cut) or any(b < a for a, b in zip(cut, cut[1:], strict=False)):
        raise ValueError(f"cutoffs must be >= 0 and non-decreasing with the order, got {cut}")
    return cut


# ------------------------------------------------------------------------------------------------
# The model.


@dataclasses.dataclass
class NGramModel:
    """An n-gram model in back-off form: stored n-grams' log-probs and contexts' back-offs.

    Attributes:
      order: the highest order ``N``.
      vocab_size: ``V``; ``<s>`` is id ``V``.
      eos_id: sentence-end id (contexts restart after it), or None for one stream.
      add_bos: whether sentences start from the ``<s>`` context.
      keys: per order ``n`` (index ``n-1``), sorted int64 keys ``prefix_row * (V+1) + word``.
      log_probs: per order, ``log p(w|h)`` in nats of each stored n-gram (``<s>``: ``-inf``).
      log_backoffs: per order ``1..N-1``, ``log gamma(h)`` of each stored n-gram as a context
        (0 where it is not one).
      vocab: token strings (for ARPA files), or None.
      info: how it was made (method, discounts, counts per order...).
    """

    order: int
    vocab_size: int
    eos_id: int | None
    add_bos: bool
    keys: list[np.ndarray]
    log_probs: list[np.ndarray]
    log_backoffs: list[np.ndarray]
    vocab: tuple[str, ...] | None = None
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def bos_id(self) -> int:
        """The id of ``<s>``: one past the vocabulary."""
        return self.vocab_size

    @property
    def num_ngrams(self) -> list[int]:
        """How many n-grams each order stores (unigrams include ``<s>``)."""
        return [len(k) for k in self.keys]

    def ngram_words(self, n: int) -> np.ndarray:
        """The word ids of every stored n-gram of order ``n``.

        Args:
          n: the order, ``1..N``.

        Returns:
          ``[num_ngrams[n-1], n]`` int64 array, rows aligned with ``keys[n-1]``.

        Example:
          >>> model.ngram_words(2)[:3]  # doctest: +SKIP
        """
        m = self.vocab_size + 1
        words = self.keys[0][:, None]
        for j in range(2, n + 1):
            k = self.keys[j - 1]
            words = np.concatenate([words[k // m], (k % m)[:, None]], axis=1)
        return words

    # -- scoring ----------------------------------------------------------------------------------

    def _lookup(self, seq: np.ndarray, hist: np.ndarray) -> list[np.ndarray]:
        """Row of the n-gram ending at each position, per order (-1: not stored)."""
        m = self.vocab_size + 1
        lids = [seq.copy()]
        for n in range(2, self.order + 1):
            prev = lids[-1]
            lid = np.full(len(seq), -1, np.int64)
            pos = np.flatnonzero(hist >= n - 1)
            pos = pos[prev[pos - 1] >= 0]
            key = prev[pos - 1] * m + seq[pos]
            table = self.keys[n - 1]
            j = np.searchsorted(table, key)
            found = j < len(table)
            found[found] = table[j[found]] == key[found]
            lid[pos[found]] = j[found]
            lids.append(lid)
        return lids

    def score(self, tokens: Any) -> tuple[np.ndarray, np.ndarray]:
        """Per-token log-probabilities (nats) and the order that supplied each.

        Each token is predicted from the up to ``N - 1`` tokens before it in its sentence (after
        ``<s>`` when ``add_bos``). A 2-D ``[B, T]`` array scores each row as its own text
        (each row starts a sentence).

        Args:
          tokens: ``[T]`` or ``[B, T]`` integer ids in ``[0, V)``.

        Returns:
          ``(log_probs, orders)`` shaped like ``tokens``: float64 ``log p(token | context)``, and
          int32 length of the longest stored n-gram that ends at the token (1 = unigram, the
          rest from back-off).

        Example:
          >>> log_probs, orders = model.score(np.array([2, 4, 0]))  # doctest: +SKIP
          >>> perplexity = np.exp(-log_probs.mean())  # doctest: +SKIP
        """
        arr = _check_tokens(tokens, self.vocab_size, "score tokens")
        shape = arr.shape
        if arr.ndim not in (1, 2):
            raise ValueError(f"score: expected [T] or [B, T] tokens, got shape {shape}")
        row_len = shape[1] if arr.ndim == 2 else None
        flat = arr.reshape(-1)
        seq, hist, t = _pad(flat, self.bos_id, self.eos_id, self.add_bos, row_len)
        lids = self._lookup(seq, hist)
        longest = np.minimum(hist[t], self.order - 1)  # usable context length
        orders = np.ones(len(t), np.int32)
        log_probs = self.log_probs[0][seq[t]].astype(np.float64)
        for n in range(2, self.order + 1):
            row = lids[n - 1][t]
            f = row >= 0
            orders[f] = n
            log_probs[f] = self.log_probs[n - 1][row[f]]
        tm1 = np.maximum(t - 1, 0)
        for ctx in range(1, self.order):
            row = lids[ctx - 1][tm1]
            use = (ctx >= orders) & (ctx <= longest) & (row >= 0)
            log_probs[use] += self.log_backoffs[ctx - 1][row[use]]
        return log_probs.reshape(shape), orders.reshape(shape)

    def nll(self, tokens: Any) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) of a token array and how many tokens it covers.

        Args:
          tokens: ``[T]`` or ``[B, T]`` integer ids.

        Returns:
          ``(nll_sum, count)``; perplexity is ``exp(nll_sum / count)``.

        Example:
          >>> total, count = model.nll(test_tokens)  # doctest: +SKIP
        """
        log_probs, _ = self.score(tokens)
        return float(-log_probs.sum()), int(log_probs.size)

    def perplexity(self, tokens: Any) -> float:
        """``exp`` of the mean negative log-likelihood per token.

        Args:
          tokens: ``[T]`` or ``[B, T]`` integer ids.

        Returns:
          The perplexity.

        Example:
          >>> model.perplexity(test_tokens)  # doctest: +SKIP
        """
        total, count = self.nll(tokens)
        if count == 0:
            raise ValueError("perplexity: no tokens to score")
        return math.exp(total / count)

    def _row(self, words: Sequence[int]) -> int:
        """Row of an n-gram (given as word ids) in its order's table, or -1 if not stored."""
        m = self.vocab_size + 1
        row = int(words[0])
        for j, w in enumerate(words[1:], 2):
            key = row * m + int(w)
            table = self.keys[j - 1]
            i = int(np.searchsorted(table, key))
            if i >= len(table) or table[i] != key:
                return -1
            row = i
        return row

    def next_log_probs(self, context: Sequence[int]) -> np.ndarray:
        """``log p(w | context)`` for every token ``w`` of the vocabulary.

        Args:
          context: preceding ids, oldest first; begin it with :attr:`bos_id` to condition on a
            sentence start. Only the last ``N - 1`` are used.

        Returns:
          float64 ``[V]`` log-probabilities (nats); they sum to 1 in probability.

        Example:
          >>> p = np.exp(model.next_log_probs([model.bos_id]))  # doctest: +SKIP
        """
        m = self.vocab_size + 1
        ctx = [int(c) for c in context][-(self.order - 1) :] if self.order > 1 else []
        out = self.log_probs[0][: self.vocab_size].astype(np.float64)
        # rows of the context's suffixes of length 1..len(ctx), longest last
        for length in range(1, len(ctx) + 1):
            row = self._row(ctx[len(ctx) - length :])
            if row < 0:
                continue  # context not stored: back-off weight 1, no n-grams of its own
            table = self.keys[length]
            lo, hi = np.searchsorted(table, [row * m, (row + 1) * m])
            out = out + self.log_backoffs[length - 1][row]
            out[table[lo:hi] % m] = self.log_probs[length][lo:hi]
        return out

    # -- persistence ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Writes the model to one ``.npz`` file (exact; see :mod:`jaxlm.models.arpa` for ARPA).

        Args:
          path: destination file.

        Example:
          >>> model.save("/tmp/model.npz"); NGramModel.load("/tmp/model.npz")  # doctest: +SKIP
        """
        meta = {
            "order": self.order,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "add_bos": self.add_bos,
            "vocab": list(self.vocab) if self.vocab is not None else None,
            "info": self.info,
        }
        arrays = {"meta": np.array(json.dumps(meta))}
        for n in range(1, self.order + 1):
            arrays[f"keys_{n}"] = self.keys[n - 1]
            arrays[f"log_probs_{n}"] = self.log_probs[n - 1]
            if n < self.order:
                arrays[f"log_backoffs_{n}"] = self.log_backoffs[n - 1]
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> NGramModel:
        """Reads a model that :meth:`save` wrote.

        Args:
          path: the ``.npz`` file.

        Returns:
          The model.

        Example:
          >>> model = NGramModel.load("/tmp/model.npz")  # doctest: +SKIP
        """
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            n_max = meta["order"]
            keys = [z[f"keys_{n}"] for n in range(1, n_max + 1)]
            log_probs = [z[f"log_probs_{n}"] for n in range(1, n_max + 1)]
            log_backoffs = [z[f"log_backoffs_{n}"] for n in range(1, n_max)]
        vocab = tuple(meta["vocab"]) if meta["vocab"] is not None else None
        return cls(
            n_max,
            meta["vocab_size"],
            meta["eos_id"],
            meta["add_bos"],
            keys,
            log_probs,
            log_backoffs,
            vocab,
            meta["info"],
        )


# ------------------------------------------------------------------------------------------------
# Estimation.


def estimate(
    counts: NGramCounts,
    *,
    method: str = "modified_kneser_ney",
    discount: Any = None,
    k: float = 1.0,
    cutoffs: Sequence[int] | None = None,
    discount_fallback: Sequence[float] | None = (0.5, 1.0, 1.5),
    vocab: Sequence[str] | None = None,
) -> NGramModel:
    """Turns counts into an interpolated, normalised n-gram model in back-off form.

    For each order ``n`` with adjusted counts ``a`` (see the module docstring) and discounts
    ``D(a)``: ``p(w|h) = (a(h w) - D(a(h w))) / sum_v a(h v) + gamma(h) p(w|h')`` with
    ``gamma(h) = (sum_w D(a(h w)) + pruned mass) / sum_v a(h v)``; unigrams interpolate with
    ``1 / V``.

    Args:
      counts: from :func:`count_ngrams`.
      method: one of ``METHODS``.
      discount: None to estimate from counts of counts (Chen and Goodman); for
        ``"modified_kneser_ney"`` a triple ``(D1, D2, D3)`` for every order or one triple per
        order; for ``"kneser_ney"`` / ``"absolute"`` one number or one per order.
      k: the pseudo-count of ``"add_k"``.
      cutoffs: per-order thresholds; n-grams with raw count ``<=`` the threshold are dropped (and
        their mass moved to back-off). Missing higher orders repeat the last value; the unigram
        threshold must be 0; thresholds must not decrease with the order. None: keep all.
      discount_fallback: ``(D1, D2, D3)`` used for an order whose discounts cannot be estimated
        (a count of counts is 0 or a discount leaves its range, as on small or character-level
        data; KenLM's ``--discount_fallback`` with its defaults); ``kneser_ney`` and ``absolute``
        take ``D1``. The orders that fell back are listed in ``info["discount_fallback_orders"]``.
        None raises instead.
      vocab: token strings to keep with the model (for ARPA files).

    Returns:
      :class:`NGramModel`.

    Example:
      >>> counts = count_ngrams(tokens, vocab_size=5, order=3, eos_id=0)  # doctest: +SKIP
      >>> model = estimate(counts, method="kneser_ney", discount=0.75)  # doctest: +SKIP
    """
    if method not in METHODS:
        raise ValueError(f"unknown n-gram method {method!r}; expected one of {METHODS}")
    if method == "add_k" and not k > 0:
        raise ValueError(f"add_k needs k > 0, got {k}")
    order, v, m = counts.order, counts.vocab_size, counts.vocab_size + 1
    if vocab is not None and len(vocab) != v:
        raise ValueError(f"vocab has {len(vocab)} entries, the counts' vocab_size is {v}")
    cut = _cutoff_list(cutoffs, order)

    # Adjusted counts: continuation counts for lower Kneser-Ney orders, except after <s>.
    adjusted = []
    for n in range(1, order + 1):
        raw = counts.counts[n - 1]
        if method in _KN_METHODS and n < order:
            cont = np.bincount(counts.suffix[n], minlength=len(raw)).astype(np.int64)
            a = np.where(counts.bos_first[n - 1], raw, cont)
        else:
            a = raw.copy()
        if n == 1:
            a[v] = 0  # <s> is never predicted
        adjusted.append(a)
    dtabs, fell_back = _discount_tables(method, adjusted, discount, order, discount_fallback)
    extra = k * v if method == "add_k" else 0.0

    keep = [counts.counts[n - 1] > cut[n - 1] for n in range(1, order + 1)]
    keep[0][:] = True

    # Unigrams, mixed with the uniform distribution over the V tokens.
    a = adjusted[0]
    disc = dtabs[0][np.minimum(a, 3)]
    total = float(a.sum()) + extra
    if total <= 0:
        raise ValueError("estimate: no unigram counts (empty training data)")
    probs = (a - disc) / total + (float(disc.sum()) + extra) / total / v
    probs[v] = 0.0
    all_probs = [probs]
    gammas = []
    for n in range(2, order + 1):
        a = adjusted[n - 1]
        key = counts.keys[n - 1]
        prefix = key // m
        kept = keep[n - 1]
        disc = np.where(kept, dtabs[n - 1][np.minimum(a, 3)], 0.0)
        moved = np.where(kept, 0.0, a.astype(np.float64))
        n_ctx = len(counts.keys[n - 2])
        denom = np.bincount(prefix, weights=a, minlength=n_ctx) + extra
        num = np.bincount(prefix, weights=disc + moved, minlength=n_ctx) + extra
        has = denom > 0
        gamma = np.ones(n_ctx)
        gamma[has] = num[has] / denom[has]
        d = denom[prefix]
        alpha = np.where(kept & (d > 0), (a - disc) / np.where(d > 0, d, 1.0), 0.0)
        all_probs.append(alpha + gamma[prefix] * all_probs[-1][counts.suffix[n - 1]])
        gammas.append(gamma)

    # Drop cut-off n-grams and renumber the rows their successors point to.
    keys, log_probs, log_backoffs = [], [], []
    new_row = None
    with np.errstate(divide="ignore"):
        for n in range(1, order + 1):
            kept = keep[n - 1]
            key = counts.keys[n - 1]
            if n > 1:
                key = new_row[key // m] * m + key % m
            keys.append(key[kept])
            log_probs.append(np.log(all_probs[n - 1][kept]))
            if n < order:
                log_backoffs.append(np.log(gammas[n - 1][kept]))
            new_row = np.cumsum(kept) - 1
    info = {
        "method": method,
        "discounts": [t[1:].tolist() for t in dtabs] if method != "add_k" else None,
        "discount_fallback_orders": fell_back,
        "k": k if method == "add_k" else None,
        "cutoffs": cut,
        "num_ngrams": [len(x) for x in keys],
        "num_train_tokens": int(counts.counts[0][:v].sum()),
    }
    vocab_t = tuple(vocab) if vocab is not None else None
    return NGramModel(
        order, v, counts.eos_id, counts.add_bos, keys, log_probs, log_backoffs, vocab_t, info
    )


def build(
    tokens: Any,
    vocab_size: int,
    order: int = 5,
    *,
    method: str = "modified_kneser_ney",
    discount: Any = None,
    k: float = 1.0,
    cutoffs: Sequence[int] | None = None,
    discount_fallback: Sequence[float] | None = (0.5, 1.0, 1.5),
    eos_id: int | None = None,
    add_bos: bool = True,
    vocab: Sequence[str] | None = None,
) -> NGramModel:
    """Counts and estimates an n-gram model in one call (:func:`count_ngrams` + :func:`estimate`).

    Args:
      tokens: 1-D training ids in ``[0, vocab_size)``.
      vocab_size: ``V``.
      order: highest order ``N``.
      method: ``"modified_kneser_ney"`` (default), ``"kneser_ney"``, ``"absolute"``, ``"add_k"``.
      discount: explicit discount(s), see :func:`estimate`; None estimates them.
      k: pseudo-count for ``"add_k"``.
      cutoffs: per-order count cut-offs, see :func:`estimate`.
      discount_fallback: discounts for orders where estimation fails, see :func:`estimate`.
      eos_id: sentence-end id (``<eos>``), or None for one stream.
      add_bos: start each sentence from the ``<s>`` context.
      vocab: token strings (kept for ARPA export).

    Returns:
      :class:`NGramModel`.

    Example:
      >>> model = build(train_ids, vocab_size=10000, order=5, eos_id=0)  # doctest: +SKIP
      >>> model.perplexity(test_ids)  # doctest: +SKIP
    """
    counts = count_ngrams(tokens, vocab_size, order, eos_id=eos_id, add_bos=add_bos)
    return estimate(
        counts,
        method=method,
        discount=discount,
        k=k,
        cutoffs=cutoffs,
        discount_fallback=discount_fallback,
        vocab=vocab,
    )


# ------------------------------------------------------------------------------------------------
# The run: ``python -m jaxlm.train --config=configs/ngram.py`` lands here.


def _config_discount(method: str, discount: Sequence[float], order: int) -> Any:
    """``config.model.discount`` (a flat tuple) as :func:`estimate` takes it; () estimates."""
    d = tuple(float(x) for x in discount)
    if not d:
        return None
    if method == "modified_kneser_ney":
        if len(d) == 3:
            return d
        if len(d) == 3 * order:
            return np.array(d).reshape(order, 3)
        raise ValueError(
            f"config.model.discount: modified_kneser_ney takes 3 values (D1, D2, D3+) or "
            f"3 x order = {3 * order}, got {len(d)}"
        )
    if method == "add_k":
        raise ValueError("config.model.discount: add_k takes config.model.k, not a discount")
    if len(d) == 1:
        return d[0]
    if len(d) == order:
        return d
    raise ValueError(f"config.model.discount: {method} takes 1 value or {order}, got {len(d)}")


def split_metrics(model: NGramModel, tokens: Any) -> dict[str, float]:
    """Loss (nats per token), bits per token, perplexity and token count of one split.

    Args:
      model: the model.
      tokens: the split's token ids.

    Returns:
      ``{"loss", "bits", "perplexity", "tokens"}``, reduced as ``(sum, count)``.

    Example:
      >>> split_metrics(model, corpus.test)["perplexity"]  # doctest: +SKIP
    """
    total, count = model.nll(tokens)
    loss = total / max(count, 1)
    return {
        "loss": loss,
        "bits": loss / math.log(2),
        "perplexity": math.exp(min(loss, 700.0)),
        "tokens": float(count),
    }


def train_and_evaluate(config: Any, workdir: str | Path) -> dict[str, Any]:
    """Builds the n-gram model a config describes, evaluates it and saves it to ``workdir``.

    Reads the corpus through ``jaxlm.data.load_corpus(config.data)`` (so tokens, ``<eos>`` and
    ``<unk>`` are those of the neural models), builds the model from ``config.model`` (``order``,
    ``method``, ``discount``, ``discount_fallback``, ``k``, ``cutoffs``, ``add_bos``), and writes
    ``model.npz`` (exact), ``model.arpa`` (if ``config.model.write_arpa``), ``config.json``,
    ``tokenizer.json``, ``metrics.jsonl`` and ``status.json``. Re-running a finished run with the
    same config returns its results at once.

    Args:
      config: a run config (see ``configs/ngram.py``) with ``config.model.name == "ngram"``.
      workdir: the run folder.

    Returns:
      ``validation_loss``/``_bits``/``_perplexity`` and ``test_...`` (nats and bits per token),
      ``build_seconds``, ``num_ngrams`` and the discounts used.

    Example:
      >>> import importlib.util
      >>> spec = importlib.util.spec_from_file_location("c", "configs/ngram.py")
      >>> cfg = importlib.util.module_from_spec(spec); spec.loader.exec_module(cfg)
      >>> train_and_evaluate(cfg.get_config("smoke"), "/tmp/ngram_smoke")  # doctest: +SKIP
    """
    from jaxlm import data, monitor
    from jaxlm.data.tokenizers import save_tokenizer
    from jaxlm.models import arpa

    workdir = Path(workdir)
    m = config.model
    config_data = json.loads(config.to_json())
    status = monitor.read_status(workdir) or {}
    saved_config = workdir / "config.json"
    if (
        status.get("state") == "finished"
        and (workdir / "model.npz").exists()
        and saved_config.exists()
        and json.loads(saved_config.read_text()) == config_data
    ):
        print(f"Run in {workdir} already finished; nothing to do.", flush=True)
        final = status.get("final", {})
        for key, value in final.items():
            print(f"  {key}: {value}", flush=True)
        return final

    if m.method not in METHODS:
        raise ValueError(f"config.model.method: unknown {m.method!r}; expected one of {METHODS}")
    if not 1 <= m.order:
        raise ValueError(f"config.model.order: must be >= 1, got {m.order}")
    discount = _config_discount(m.method, m.discount, m.order)
    corpus = data.load_corpus(config.data)
    tok = corpus.tokenizer
    eos_id = getattr(tok, "eos_id", None)
    workdir.mkdir(parents=True, exist_ok=True)
    mon = monitor.Monitor(workdir, total_steps=0, tensorboard=False)
    mon.status("building", 0)
    t0 = time.perf_counter()
    model = build(
        corpus.train,
        tok.vocab_size,
        m.order,
        method=m.method,
        discount=discount,
        k=m.k,
        cutoffs=tuple(m.cutoffs) or None,
        discount_fallback=tuple(m.discount_fallback) or None,
        eos_id=eos_id,
        add_bos=m.add_bos,
        vocab=list(tok.vocab),
    )
    build_seconds = time.perf_counter() - t0
    print(
        f"Built a {m.order}-gram {m.method} model on {corpus.name} ({len(corpus.train):,} "
        f"{tok.kind} tokens, vocabulary {tok.vocab_size:,}) in {build_seconds:.2f} s; "
        f"n-grams per order {model.num_ngrams}; discounts {model.info['discounts']}"
        + (
            f" (orders {model.info['discount_fallback_orders']} use the fallback)"
            if model.info["discount_fallback_orders"]
            else ""
        ),
        flush=True,
    )
    val = split_metrics(model, corpus.validation)
    test = split_metrics(model, corpus.test)
    mon.write(0, val, split="validation", echo=False)
    mon.write(0, test, split="test", echo=False)

    model.save(workdir / "model.npz")
    if m.write_arpa:
        arpa.write_arpa(model, workdir / "model.arpa")
    saved_config.write_text(config.to_json(indent=1))
    save_tokenizer(tok, workdir / "tokenizer.json")
    unit = tok.kind
    final = {
        "step": 0,
        "validation_loss": val["loss"],
        "validation_bits": val["bits"],
        "validation_perplexity": val["perplexity"],
        "test_loss": test["loss"],
        "test_bits": test["bits"],
        "test_perplexity": test["perplexity"],
        "build_seconds": build_seconds,
        "num_ngrams": model.num_ngrams,
        "discounts": model.info["discounts"],
    }
    mon.status("finished", 0, final=final)
    mon.close()
    print(
        f"Final validation loss {val['loss']:.4f} nats/{unit} ({val['bits']:.4f} bits/{unit}, "
        f"perplexity {val['perplexity']:.2f}); test loss {test['loss']:.4f} nats/{unit} "
        f"({test['bits']:.4f} bits/{unit}, perplexity {test['perplexity']:.2f})",
        flush=True,
    )
    return final
