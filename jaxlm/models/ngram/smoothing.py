"""Smoothing: discounts, cut-offs and the estimate that turns counts into a model.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.models.ngram.counts import NGramCounts, count_ngrams, keep_freed_memory, small_pages
from jaxlm.models.ngram.model import NGramModel

METHODS = ("modified_kneser_ney", "kneser_ney", "absolute", "add_k")
_KN_METHODS = ("modified_kneser_ney", "kneser_ney")


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
    cocs = [count_of_counts(a) for a in adjusted] if method != "add_k" else []
    return discount_tables(method, cocs, discount, order, fallback)


def discount_tables(
    method: str,
    cocs: Sequence[np.ndarray],
    discount: Any,
    order: int,
    fallback: Sequence[float] | None,
) -> tuple[list[np.ndarray], list[int]]:
    """Per order, the discount of adjusted counts 0, 1, 2, 3+, from the orders' counts of counts.

    Args:
      method: one of ``METHODS``.
      cocs: per order, :func:`count_of_counts` of its adjusted counts (unused for ``"add_k"``
        or with ``discount`` given).
      discount: the user's discount(s), or None to estimate them (see :func:`estimate`).
      order: the highest order ``N``.
      fallback: the discounts of orders that cannot be estimated, or None to raise.

    Returns:
      ``(tables, fell_back)``: per order a float64 ``[4]`` table indexed by ``min(count, 3)``,
      and the orders that took the fallback.

    Example:
      >>> tables, fell = discount_tables("kneser_ney", [np.array([0, 10, 5, 0, 0])], None, 1, None)
      >>> tables[0].tolist(), fell
      ([0.0, 0.5, 0.5, 0.5], [])
    """
    if method == "add_k":
        if discount is not None:
            raise ValueError("add_k takes k, not discount")
        return [np.zeros(4) for _ in range(order)], []
    tables, fell_back = [], []
    for n in range(1, order + 1):
        if discount is None:
            coc = cocs[n - 1]
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


def _adjusted_counts(counts: NGramCounts, method: str) -> list[np.ndarray]:
    """Per order, the counts the estimate uses: continuation counts ``N1+(. w)`` for the lower
    Kneser-Ney orders (raw counts after ``<s>``, which has no left extension), raw elsewhere."""
    adjusted = []
    for n in range(1, counts.order + 1):
        raw = counts.counts[n - 1]
        if method in _KN_METHODS and n < counts.order:
            cont = np.bincount(counts.suffix[n], minlength=len(raw)).astype(np.int64)
            a = np.where(counts.bos_first[n - 1], raw, cont)
        else:
            a = raw.copy()
        if n == 1:
            a[counts.vocab_size] = 0  # <s> is never predicted
        adjusted.append(a)
    return adjusted


def unigram_probs(a: np.ndarray, dtab: np.ndarray, extra: float) -> np.ndarray:
    """The unigrams' interpolated probabilities: discounted counts mixed with ``1 / V``.

    Args:
      a: the ``V + 1`` adjusted unigram counts (``<s>``, the last, is 0).
      dtab: the order's discount table (index ``min(count, 3)``).
      extra: add-k's pseudo-count mass ``k V`` (0 for the other methods).

    Returns:
      float64 ``[V + 1]`` probabilities; ``<s>`` gets 0.

    Example:
      >>> unigram_probs(np.array([2, 1, 1, 0]), np.array([0.0, 0.5, 0.5, 0.5]), 0.0).tolist()
      [0.5, 0.25, 0.25, 0.0]
    """
    v = len(a) - 1
    disc = dtab[np.minimum(a, 3)]
    total = float(a.sum()) + extra
    if total <= 0:
        raise ValueError("estimate: no unigram counts (empty training data)")
    probs = (a - disc) / total + (float(disc.sum()) + extra) / total / v
    probs[v] = 0.0
    return probs


def interpolate_order(
    a: np.ndarray,
    prefix: np.ndarray,
    kept: np.ndarray,
    lower: np.ndarray,
    dtab: np.ndarray,
    n_ctx: int,
    extra: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One order's interpolated probabilities and its contexts' back-off weights.

    The in-memory estimate calls it once per order; the memory-bounded one
    (:mod:`jaxlm.models.ngram.chunked`) once per block of whole contexts, which gives the same
    floats: every context's sums run over the same n-grams in the same order.

    Args:
      a: adjusted counts of the n-grams, sorted by context (``prefix``) as the tables are.
      prefix: each n-gram's context row, counted from the first context of the block.
      kept: the n-grams that survive the cut-offs (the rest move their mass to back-off).
      lower: the next lower order's probability of each n-gram's suffix.
      dtab: the order's discount table (index ``min(count, 3)``).
      n_ctx: how many contexts the block covers (rows ``0 .. n_ctx - 1`` of ``prefix``).
      extra: add-k's pseudo-count mass ``k V`` (0 for the other methods).

    Returns:
      ``(probs, gamma)``: float64 ``p(w|h)`` per n-gram, and ``gamma(h)`` per context (1 for a
      context without n-grams).

    Example:
      >>> p, g = interpolate_order(np.array([2, 1]), np.array([0, 0]), np.array([True, True]),
      ...                          np.array([0.5, 0.5]), np.array([0.0, 0.5, 0.5, 0.5]), 1, 0.0)
      >>> p.tolist(), g.tolist()
      ([0.6666666666666666, 0.3333333333333333], [0.3333333333333333])
    """
    disc = np.where(kept, dtab[np.minimum(a, 3)], 0.0)
    moved = np.where(kept, 0.0, a.astype(np.float64))  # cut-off mass goes to back-off
    denom = np.bincount(prefix, weights=a, minlength=n_ctx) + extra
    num = np.bincount(prefix, weights=disc + moved, minlength=n_ctx) + extra
    has = denom > 0
    gamma = np.ones(n_ctx)
    gamma[has] = num[has] / denom[has]
    d = denom[prefix]
    alpha = np.where(kept & (d > 0), (a - disc) / np.where(d > 0, d, 1.0), 0.0)
    return alpha + gamma[prefix] * lower, gamma


def _interpolate(
    counts: NGramCounts,
    adjusted: list[np.ndarray],
    dtabs: list[np.ndarray],
    keep: list[np.ndarray],
    extra: float,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per order, the interpolated probability of every stored n-gram; per context order, the
    back-off weights. Unigrams mix with the uniform distribution over the V tokens."""
    m = counts.vocab_size + 1
    all_probs, gammas = [unigram_probs(adjusted[0], dtabs[0], extra)], []
    for n in range(2, counts.order + 1):
        probs, gamma = interpolate_order(
            adjusted[n - 1],
            counts.keys[n - 1] // m,
            keep[n - 1],
            all_probs[-1][counts.suffix[n - 1]],
            dtabs[n - 1],
            len(counts.keys[n - 2]),
            extra,
        )
        all_probs.append(probs)
        gammas.append(gamma)
    return all_probs, gammas


def _prune(
    counts: NGramCounts,
    keep: list[np.ndarray],
    all_probs: list[np.ndarray],
    gammas: list[np.ndarray],
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Drops cut-off n-grams and renumbers the rows their successors point to; natural logs."""
    m = counts.vocab_size + 1
    keys, log_probs, log_backoffs = [], [], []
    new_row = None
    with np.errstate(divide="ignore"):
        for n in range(1, counts.order + 1):
            kept = keep[n - 1]
            key = counts.keys[n - 1]
            if n > 1:
                key = new_row[key // m] * m + key % m
            keys.append(key[kept])
            log_probs.append(np.log(all_probs[n - 1][kept]))
            if n < counts.order:
                log_backoffs.append(np.log(gammas[n - 1][kept]))
            new_row = np.cumsum(kept) - 1
    return keys, log_probs, log_backoffs


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
      >>> tokens = np.array([2, 3, 0, 2, 4, 0, 3, 2, 4, 0])  # 0 is <eos>
      >>> counts = count_ngrams(tokens, vocab_size=5, order=3, eos_id=0)
      >>> model = estimate(counts, method="kneser_ney", discount=0.75)
      >>> model.num_ngrams, model.info["discounts"][2]
      ([6, 7, 6], [0.75, 0.75, 0.75])
    """
    if method not in METHODS:
        raise ValueError(f"unknown n-gram method {method!r}; expected one of {METHODS}")
    if method == "add_k" and not k > 0:
        raise ValueError(f"add_k needs k > 0, got {k}")
    order, v = counts.order, counts.vocab_size
    if vocab is not None and len(vocab) != v:
        raise ValueError(f"vocab has {len(vocab)} entries, the counts' vocab_size is {v}")
    cut = _cutoff_list(cutoffs, order)

    adjusted = _adjusted_counts(counts, method)
    dtabs, fell_back = _discount_tables(method, adjusted, discount, order, discount_fallback)
    extra = k * v if method == "add_k" else 0.0
    keep = [counts.counts[n - 1] > cut[n - 1] for n in range(1, order + 1)]
    keep[0][:] = True
    all_probs, gammas = _interpolate(counts, adjusted, dtabs, keep, extra)
    keys, log_probs, log_backoffs = _prune(counts, keep, all_probs, gammas)
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
    memory_limit: Any = None,
    tmp_dir: str | Path | None = None,
) -> NGramModel:
    """Counts and estimates an n-gram model in one call (:func:`count_ngrams` + :func:`estimate`).

    With ``memory_limit`` it counts in chunks spilled to disk instead and streams the estimate
    order by order (:func:`jaxlm.models.ngram.chunked.build_chunked`): the same model, bit for
    bit, within the budget. Either way numpy's arrays take no huge pages meanwhile
    (:func:`~jaxlm.models.ngram.counts.small_pages`), and the memory they free is kept for the
    next ones (:func:`~jaxlm.models.ngram.counts.keep_freed_memory`).

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
      memory_limit: None: count in memory; else bytes, ``"4GB"`` or a fraction of RAM.
      tmp_dir: where chunks spill under ``memory_limit`` (None: the system's temporary folder).

    Returns:
      :class:`NGramModel`.

    Example:
      >>> tokens = np.array([2, 3, 0, 2, 4, 0, 3, 2, 4, 0])  # 0 is <eos>
      >>> model = build(tokens, vocab_size=5, order=3, eos_id=0)
      >>> model.info["discount_fallback_orders"]  # too little data to estimate discounts
      [1, 2, 3]
      >>> round(model.perplexity(np.array([2, 4, 0])), 3)
      1.807
    """
    estimate_args = dict(
        method=method, discount=discount, k=k, cutoffs=cutoffs,
        discount_fallback=discount_fallback, vocab=vocab,
    )  # fmt: skip
    with small_pages(), keep_freed_memory():
        if memory_limit is not None and memory_limit != "":
            from jaxlm.models.ngram.chunked import build_chunked

            return build_chunked(
                tokens, vocab_size, order, memory_limit=memory_limit, tmp_dir=tmp_dir,
                eos_id=eos_id, add_bos=add_bos, **estimate_args,
            )  # fmt: skip
        counts = count_ngrams(tokens, vocab_size, order, eos_id=eos_id, add_bos=add_bos)
        return estimate(counts, **estimate_args)
