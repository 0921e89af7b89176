"""The n-gram model as the registry builds it: the config fields, their defaults, and ``fit``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.models.ngram.arpa import PRECISIONS
from jaxlm.models.ngram.chunked import parse_memory_limit
from jaxlm.models.ngram.model import NGramModel
from jaxlm.models.ngram.smoothing import METHODS, build


@dataclasses.dataclass(frozen=True)
class NGramLM:
    """An n-gram model's ``config.model`` fields, and the one call that builds the model.

    :func:`jaxlm.models.get_model` returns this for ``name == "ngram"``. A count-based model has
    no parameters to initialise: :meth:`fit` counts and estimates it from the training tokens,
    turning these config values into the arguments of :func:`~jaxlm.models.ngram.build`. The
    values are checked when the spec is made, so a bad config fails before any data is read.

    Attributes:
      vocab_size: ``V``, the tokenizer's vocabulary size.
      order: the highest order ``N >= 1``.
      method: one of ``METHODS``.
      discount: () estimates the discounts from counts of counts; else ``(D1, D2, D3+)`` or
        ``3 * order`` values (a triple per order) for ``"modified_kneser_ney"``, one value or
        one per order for ``"kneser_ney"`` and ``"absolute"``; ``"add_k"`` takes ``k`` instead.
      discount_fallback: ``(D1, D2, D3+)`` for orders whose discounts cannot be estimated; ()
        raises instead.
      k: the pseudo-count of ``"add_k"``.
      cutoffs: per order, drop n-grams seen at most this often; missing orders repeat the last;
        () keeps all.
      add_bos: start each sentence from the ``<s>`` context.
      write_arpa: a run also saves the model as an ARPA file (read by the run, not by ``fit``).
      arpa_precision: ``"float32"`` writes the ARPA file's log10 values with the shortest
        decimal that reads back to the same float32, the precision KenLM holds and ``lmplz``
        writes (KenLM scores it exactly as a float64 file); ``"float64"`` to the same float64,
        so that :func:`~jaxlm.models.ngram.arpa.read_arpa` gives back the exact model (a file
        a third larger). ``model.npz`` is exact either way.
      memory_limit: None counts in memory (the fastest); else a budget (bytes, ``"4GB"``, or a
        fraction of RAM in ``(0, 1]``) within which the counts are built in chunks spilled to
        disk (:mod:`jaxlm.models.ngram.chunked`): the same model, bit for bit.
      tmp_dir: where the chunks spill; ``""``: the run folder (``fit``'s ``scratch``).

    Raises:
      ValueError: ``method``, ``order`` or ``discount`` is invalid; the message names the
        ``config.model`` field.

    Example:
      >>> lm = NGramLM(vocab_size=5, order=3, method="kneser_ney", discount=(0.75,))
      >>> model = lm.fit(np.array([2, 3, 0, 2, 4, 0, 3, 2, 4, 0]), eos_id=0)
      >>> model.order, model.info["discounts"][0]
      (3, [0.75, 0.75, 0.75])
    """

    vocab_size: int
    order: int = 5
    method: str = "modified_kneser_ney"
    discount: tuple[float, ...] = ()
    discount_fallback: tuple[float, ...] = (0.5, 1.0, 1.5)
    k: float = 1.0
    cutoffs: tuple[int, ...] = ()
    add_bos: bool = True
    write_arpa: bool = True
    arpa_precision: str = "float32"
    memory_limit: Any = None
    tmp_dir: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"config.model.method: unknown {self.method!r}; expected one of {METHODS}"
            )
        if not 1 <= self.order:
            raise ValueError(f"config.model.order: must be >= 1, got {self.order}")
        _config_discount(self.method, self.discount, self.order)
        if self.arpa_precision not in PRECISIONS:
            raise ValueError(
                f"config.model.arpa_precision: {self.arpa_precision!r}; expected one of "
                f"{PRECISIONS}"
            )
        try:
            parse_memory_limit(self.memory_limit)
        except ValueError as e:
            raise ValueError(f"config.model.{e}") from None

    def fit(
        self,
        tokens: Any,
        *,
        eos_id: int | None = None,
        vocab: Sequence[str] | None = None,
        scratch: str | Path | None = None,
    ) -> NGramModel:
        """Counts and estimates the model on training tokens.

        Args:
          tokens: 1-D training ids in ``[0, vocab_size)``.
          eos_id: the sentence-end id (contexts restart after it), or None for one stream.
          vocab: token strings, kept with the model for ARPA files.
          scratch: where chunks spill under a ``memory_limit`` when ``tmp_dir`` is ``""`` (a run
            passes its folder); None: the system's temporary folder.

        Returns:
          :class:`~jaxlm.models.ngram.NGramModel`.

        Example:
          >>> model = NGramLM(vocab_size=5, order=2).fit(np.array([2, 3, 0, 2, 4, 0]), eos_id=0)
          >>> model.order, model.eos_id, model.add_bos
          (2, 0, True)
        """
        return build(
            tokens,
            self.vocab_size,
            self.order,
            method=self.method,
            discount=_config_discount(self.method, self.discount, self.order),
            k=self.k,
            cutoffs=tuple(self.cutoffs) or None,
            discount_fallback=tuple(self.discount_fallback) or None,
            eos_id=eos_id,
            add_bos=self.add_bos,
            vocab=vocab,
            memory_limit=self.memory_limit,
            tmp_dir=self.tmp_dir or scratch,
        )


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
