"""Losses from sums and counts, for every model kind: nats, bits and perplexity per token, word
and byte. Plain Python (no JAX): the n-gram run and :mod:`jaxlm.train.evaluate` share it.
"""

from __future__ import annotations

import math

LN2 = math.log(2.0)


def summarize(
    total: float, count: float, *, words: int | None = None, bytes: int | None = None
) -> dict[str, float]:
    """Loss (nats per token), bits per token, perplexity and token count from sums; and per
    word and per byte of the text when its counts are given, so runs whose tokenizers differ
    compare.

    The first token of a split is context, not predicted, while ``words`` and ``bytes`` count
    the whole text: per-word and per-byte figures leave out that one token's loss.

    Args:
      total: the summed negative log-likelihood in nats.
      count: how many tokens it covers.
      words: the number of words of the text (:func:`jaxlm.data.words.count_words`).
      bytes: the number of bytes of the text.

    Returns:
      ``{"loss", "bits", "perplexity", "tokens"}``; with ``words``, also ``words``,
      ``loss_per_word``, ``bits_per_word``, ``perplexity_per_word``; with ``bytes``, the same
      ``_per_byte`` and ``bytes``.

    Raises:
      ValueError: ``count`` is 0 (a loss of 0 over nothing would look like a perfect model).

    Example:
      >>> summarize(2 * math.log(4.0), 2)["perplexity"]
      4.0
      >>> r = summarize(6 * math.log(2.0), 3, words=2, bytes=6)
      >>> round(r["perplexity_per_word"], 6), r["bits_per_byte"]
      (8.0, 1.0)
    """
    if count <= 0:
        raise ValueError(f"evaluated no tokens (loss sum {total}, count {count})")
    out = _per(float(total), float(count))
    out["tokens"] = float(count)
    for unit, n in (("word", words), ("byte", bytes)):
        if n:
            out.update({f"{k}_per_{unit}": v for k, v in _per(float(total), float(n)).items()})
            out[f"{unit}s"] = float(n)
    return out


def _per(total: float, n: float) -> dict[str, float]:
    loss = total / n
    return {"loss": loss, "bits": loss / LN2, "perplexity": math.exp(min(loss, 700.0))}
