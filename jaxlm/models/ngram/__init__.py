"""Count-based n-gram language models: interpolated (modified) Kneser-Ney and friends.

Everything is vectorised numpy: counting is one sort per order and scoring one
``searchsorted`` per order; there is no Python loop over tokens.

- :mod:`.counts`: sentence segmentation and the n-gram count tables (:func:`count_ngrams`).
- :mod:`.smoothing`: discounts, cut-offs and :func:`estimate` (the methods are described there),
  and :func:`build`, counting and estimating in one call.
- :mod:`.model`: :class:`NGramModel`, the model in back-off form: scoring, saving, loading.
- :mod:`.arpa`: ARPA files, which SRILM and KenLM read and write.
- :mod:`.spec`: :class:`NGramLM`, the model's ``config.model`` fields, which the model registry
  builds, and its ``fit``.

Conventions (shared with the neural models):

- Token ids are ``0 .. V-1`` (the tokenizer's vocabulary); the sentence-start symbol ``<s>`` is
  the extra id ``V`` (:attr:`NGramModel.bos_id`). It is a context only, never predicted.
- With ``eos_id`` set (word-level text, one sentence a line), contexts stop at sentence ends: the
  token after each ``eos_id`` starts a new sentence, whose first context is ``<s>``; ``eos_id``
  itself (``</s>`` in ARPA files) is predicted and counted. Without ``eos_id`` the whole array is
  one stream that starts with ``<s>``. ``add_bos=False`` drops ``<s>`` (sentence-initial tokens
  then see shorter contexts).
- Log-probabilities are natural logs (nats); base 10 appears only in ARPA files
  (:mod:`jaxlm.models.ngram.arpa`). Perplexity goes through ``(sum, count)``.

Example:
  >>> import numpy as np
  >>> tokens = np.array([2, 3, 0, 2, 4, 0, 3, 2, 4, 0])  # 0 is <eos>
  >>> model = build(tokens, vocab_size=5, order=3, eos_id=0, method="kneser_ney")
  >>> log_probs, orders = model.score(np.array([2, 4, 0]))
  >>> round(float(np.exp(model.next_log_probs([model.bos_id])).sum()), 12)
  1.0
"""

from jaxlm.models.ngram import arpa
from jaxlm.models.ngram.counts import NGramCounts, count_ngrams
from jaxlm.models.ngram.model import NGramModel
from jaxlm.models.ngram.smoothing import (
    METHODS,
    build,
    count_of_counts,
    estimate,
    kn_discount,
    modified_kn_discounts,
)
from jaxlm.models.ngram.spec import NGramLM

__all__ = [
    "METHODS",
    "NGramCounts",
    "NGramLM",
    "NGramModel",
    "arpa",
    "build",
    "count_ngrams",
    "count_of_counts",
    "estimate",
    "kn_discount",
    "modified_kn_discounts",
]
