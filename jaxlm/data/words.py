"""Words of a tokenized text: which word each token belongs to, and token scores summed,
averaged or maxed per word, for any tokenizer (subword, character, byte or word).

A *word* is what :class:`~jaxlm.data.tokenizers.WordTokenizer` makes of a text: each run of
non-blank characters, and one ``<eos>`` for each line end (``\\n``, ``\\r\\n`` or ``\\r``). So
:func:`count_words` of a text is the number of tokens a word-level model predicts on it, and
nats per word compare across tokenizers (:mod:`jaxlm.train.evaluate` reports them).

A token belongs to the word that holds its first non-blank byte; a token of blanks only
(GPT-2's ``"Ġ"``, a tab) belongs to the word after it (the last word at the text's end). So a
byte-level BPE's ``"Ġthe"`` goes with ``the``, and every token has a word once the text has
one. A token that spans two words (a ``"ĊĊ"`` of two line ends) goes with the first; the
second then has no tokens (its sum is 0, its mean and max NaN).

The field's libraries map tokens to words through a tokenizer's character offsets
(``tokenizers``' ``Encoding.word_ids``, captum's token attributions); jaxlm's tokenizers all
give each token's bytes (``token_bytes``), which is all this needs, for every kind alike,
including byte-level tokens that split a character.

Example:
  >>> from jaxlm.data.tokenizers import CharTokenizer
  >>> tok = CharTokenizer.train("the cat\\n")
  >>> ids = tok.encode("the cat\\n")
  >>> w = token_words(tok, ids)
  >>> w.words
  ('the', 'cat', '<eos>')
  >>> w.token_word.tolist()  # the blank goes with "cat"
  [0, 0, 0, 1, 1, 1, 1, 2]
  >>> aggregate(np.arange(8.0), w, "sum").tolist()
  [3.0, 18.0, 7.0]
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from jaxlm.data.tokenizers import EOS

_WORD_OR_LINE_END = re.compile(r"\r\n|[\r\n]|[^\s]+")
AGGREGATIONS = ("sum", "mean", "max")


def count_words(text: str | bytes) -> int:
    """The number of words in ``text``: non-blank runs, and one ``<eos>`` per line end.

    Equal to ``len(WordTokenizer.words(text))``, without building the list.

    Args:
      text: text, or bytes (read as UTF-8; other bytes count as non-blank).

    Returns:
      The count.

    Example:
      >>> count_words("the cat\\n sat\\r\\n\\n")
      6
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    line_ends = text.count("\n") + text.count("\r") - text.count("\r\n")
    return len(text.split()) + line_ends


@dataclasses.dataclass(frozen=True)
class Words:
    """The words of a tokenized text and the word of each token.

    Attributes:
      words: each word's text; a line end is ``"<eos>"``.
      spans: ``[W, 2]`` int64: each word's ``[start, end)`` byte offsets in :attr:`text`.
      token_word: ``[N]`` int64: the word of each token (-1 only when the text has no word).
      token_spans: ``[N, 2]`` int64: each token's byte offsets in :attr:`text`.
      text: the bytes the tokens decode to, joined.
    """

    words: tuple[str, ...]
    spans: np.ndarray
    token_word: np.ndarray
    token_spans: np.ndarray
    text: bytes

    def __len__(self) -> int:
        return len(self.words)


def _char_byte_lengths(text: str) -> np.ndarray:
    """UTF-8 length of each character (a surrogateescape stand-in: its one byte)."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    lengths = 1 + (codes >= 0x80) + (codes >= 0x800) + (codes >= 0x10000)
    lengths[(codes >= 0xDC80) & (codes <= 0xDCFF)] = 1
    return lengths.astype(np.int64)


def token_words(tokenizer: Any, ids: Any) -> Words:
    """The words of the text ``ids`` decode to, and which word each token belongs to.

    Args:
      tokenizer: any jaxlm tokenizer (it gives ``token_bytes``).
      ids: ``[N]`` token ids. Scores of next-token predictions (a loss at position ``j``
        scores token ``j + 1``) go with the ids they score, the targets.

    Returns:
      A :class:`Words`.

    Example:
      >>> from jaxlm.data.subword import SubwordTokenizer
      >>> tok = SubwordTokenizer.train_bpe("the theme of the thesis " * 20, 262)
      >>> ids = tok.encode("the thesis")
      >>> w = token_words(tok, ids)
      >>> [tok.vocab[i] for i in ids], w.token_word.tolist()
      (['the', 'Ġthe', 's', 'is'], [0, 1, 1, 1])
    """
    pieces = tokenizer.token_bytes(np.asarray(ids).reshape(-1))
    lengths = np.array([len(p) for p in pieces], np.int64)
    ends = np.cumsum(lengths)
    token_spans = np.stack([ends - lengths, ends], axis=1) if len(pieces) else np.zeros((0, 2))
    data = b"".join(pieces)
    text = data.decode("utf-8", "surrogateescape")
    char_start = np.concatenate([[0], np.cumsum(_char_byte_lengths(text))])
    matches = list(_WORD_OR_LINE_END.finditer(text))
    words = tuple(EOS if m.group() in ("\n", "\r", "\r\n") else m.group() for m in matches)
    spans = np.array(
        [(char_start[m.start()], char_start[m.end()]) for m in matches], np.int64
    ).reshape(-1, 2)
    # The word of each byte (-1: blank), then the first word at or after each byte.
    positions = np.arange(len(data) + 1)
    byte_word = np.searchsorted(spans[:, 0], positions, side="right") - 1
    inside = (
        (byte_word >= 0) & (positions < spans[np.maximum(byte_word, 0), 1]) if len(spans) else False
    )
    byte_word = np.where(inside, byte_word, -1)
    byte_word[-1] = len(words) - 1  # past the end: the last word (-1 when there is none)
    at = np.where(byte_word >= 0, np.arange(len(byte_word)), len(byte_word) - 1)
    next_word = byte_word[np.minimum.accumulate(at[::-1])[::-1]]
    token_word = next_word[token_spans[:, 0].astype(np.int64)] if len(pieces) else lengths
    return Words(words, spans, token_word.astype(np.int64), token_spans.astype(np.int64), data)


def aggregate(scores: Any, words: Words, how: str = "sum") -> np.ndarray:
    """Per-token scores (losses, attributions) gathered per word.

    Args:
      scores: ``[N, ...]``: one score (or one array of them) per token of ``words``.
      words: from :func:`token_words`.
      how: ``"sum"`` (a word's negative log-likelihood from its tokens' losses), ``"mean"`` or
        ``"max"``.

    Returns:
      ``[W, ...]`` float64; a word without tokens gets 0 (sum) or NaN (mean, max).

    Raises:
      ValueError: ``how`` is unknown, or ``scores`` has another length than the tokens.

    Example:
      >>> from jaxlm.data.tokenizers import CharTokenizer
      >>> tok = CharTokenizer.train("ab c")
      >>> w = token_words(tok, tok.encode("ab c"))
      >>> aggregate([1.0, 3.0, 0.5, 2.0], w, "max").tolist()
      [3.0, 2.0]
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"how: {how!r}; expected one of {AGGREGATIONS}")
    scores = np.asarray(scores, np.float64)
    if scores.shape[:1] != words.token_word.shape:
        raise ValueError(
            f"scores: {scores.shape[0] if scores.ndim else 'a scalar'} values for "
            f"{len(words.token_word)} tokens; expected one per token"
        )
    keep = words.token_word >= 0
    index, values = words.token_word[keep], scores[keep]
    shape = (len(words), *scores.shape[1:])
    total = np.zeros(shape)
    np.add.at(total, index, values)
    if how == "sum":
        return total
    count = np.bincount(index, minlength=len(words)).reshape(-1, *([1] * (scores.ndim - 1)))
    if how == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)
    best = np.full(shape, -np.inf)
    np.maximum.at(best, index, values)
    return np.where(count > 0, best, np.nan)
