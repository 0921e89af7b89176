"""Augmentation of training windows on the device: random replacement, deletion, insertion and
swap, applied inside the compiled train step (``config.data.augment``).

Each training window is edited where it is trained on, from the key
``fold_in(fold_in(state.rng, TAG), step)`` (:func:`step_key`): the edits are a pure function
of (seed, step), so a resumed run edits exactly as an uninterrupted one, and the host does
nothing but read a longer window. Evaluation is never augmented (the eval step knows nothing of
this module).

**Windows keep length T.** The batch carries ``T + 1 + extra`` raw tokens per row
(:func:`jaxlm.data.train_data` with ``length=T + extra``: the inputs and targets ``[B, T +
extra]``), the step edits them and cuts the result to ``T`` inputs and their ``T`` next tokens
(the targets are the next tokens of the *edited* sequence). The edits, in order, all vectorised
over the window (no loop over positions):

1. **swap**: the units (tokens, or words with ``unit="word"``) are paired with a neighbour
   (pairs ``(2k, 2k+1)`` or ``(2k+1, 2k+2)``, a parity per row) and each pair is exchanged with
   probability ``swap``, so each unit moves with that probability; words of different lengths
   change places whole (each token's new place is its place plus or minus the other word's
   length: a permutation, scattered).
2. **delete**: each unit is dropped with probability ``delete``; the kept tokens are compacted
   to the front (their new place is the running count of kept tokens, scattered).
3. **replace** (words): each word is replaced by a drawn word with probability ``replace``:
   its tokens are dropped and the drawn word's tokens, of any length, put in at its start.
4. **insert**: before each unit a drawn unit (a token, or a word before a word) is inserted
   with probability ``insert``.
5. **replace** (tokens): each token of the result is replaced by a drawn one with probability
   ``replace``, in place.

Deletion, insertion and word replacement are one splice (``_splice``): each position gives the
tokens drawn for it (when it gets some) and then its own token (when it is kept); the running
sum of these counts is each one's place, and the tokens are scattered there.

Drawn tokens come from the training split's unigram distribution (``source="unigram"``) or
uniformly from the vocabulary (``"uniform"``), sampled by inverse CDF from a table ``[V]`` that
enters the step as an argument (:func:`tables`), not as a constant: runs on other corpora, or
with the other source, compile the same program. Drawn words come from a :class:`WordTable`,
the training split's ``word_table`` most frequent words of at most ``word_tokens`` tokens as
token sequences (padded, built once on the host by :func:`word_table`), by the words' counts
(``"unigram"``) or alike (``"uniform"``); it too is a step argument, of the config's shape.

**When the edits exhaust the margin** (fewer than ``T + 1`` tokens left), the missing tail is
masked: the batch gets a ``mask`` whose zeros leave those targets out of the loss. Deletions
shorten the text, and so may whole words replaced by shorter ones; insertions only lengthen
it, and come after both, so the tokens they push past the end are never needed (the mask
counts the tokens they add). The default margin (``extra=-1``, :func:`margin`) is sized so
that running short is rare: the mean of the tokens left plus five standard deviations, where
tokens are lost at :func:`shrink_rate` (deletion's rate; with words, a replaced word's tokens
count as lost too) and words have the variance of words 8 tokens long. A margin set by hand
(``extra >= 0``) is used as it is. The next window starts where it would without edits, so a
recurrent model that carries its state reads, after a window with deletions, a few tokens it
saw already (after insertions, it skips a few): the edits move text, not windows.

**Whole words** (``unit="word"``): a token starts a word when its first byte is blank (a
space, a tab, a line end: byte-level BPE's ``"Ġthe"``, a char tokenizer's ``" "``) or it has
no bytes (the byte tokenizer's special tokens); :func:`word_tables` computes this per token id
from the tokenizer's bytes (as :mod:`jaxlm.data.words` reads them), and the step looks it up
per position. So each word carries the blank before it (a line's first word its line end):
deleting one leaves the text around it spaced as it was, neighbours swap whole, and a drawn
word (which carries its blank too) goes in before a word start, never inside a word. The
window's first token starts a unit too (for deletion, swap and replacement; no word is
inserted before it unless it starts a word). A replaced word's blank goes with it: a line's
first word replaced by a word that followed a space joins the two lines. The word tokenizer's
tokens are words already (its table: single tokens).

The rates may be traced step arguments (:mod:`jaxlm.train.hparams`: a hyperparameter search
varies them without compiling again); a rate of exactly 0 leaves its edit out of the program,
and with all four at 0 the step, the batch and the data order are what they were without this
module. The default margin depends on the deletion rate (and with words, the replacement rate:
a shape): fix ``extra`` to share one program across those rates.

What this adds to the field's tools: nlpaug and EDA (Wei and Zou 2019) edit strings on the
host, a sentence at a time, in Python; here the same four edits run on token ids inside the
compiled step, for any tokenizer, on tokens or whole words, at a few percent of a step's time
(``benchmarks/augment_cost.py``).

Example:
  >>> import jax, jax.numpy as jnp
  >>> spec = Augment(seq_len=6, extra=2, delete=0.5)
  >>> raw = jnp.arange(1, 10)[None, :]  # [B=1, T + 1 + extra = 9]
  >>> cdf = uniform_cdf(10)
  >>> inputs, targets, mask = edit(spec, jax.random.PRNGKey(0), raw, {"data.augment.cdf": cdf})
  >>> inputs.shape, targets.shape, mask.shape
  ((1, 6), (1, 6), (1, 6))
  >>> bool(jnp.all(jnp.diff(jnp.where(mask > 0, targets, 99)) > 0))  # order kept, some gone
  True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlm.errors import CorpusError

OPS = ("swap", "delete", "insert", "replace")  # in the order they apply
FIELDS = tuple(f"data.augment.{op}" for op in ("replace", "delete", "insert", "swap"))
SOURCES = ("unigram", "uniform")
UNITS = ("token", "word")
TAG = 0x61756721  # the fold of the run's key that augmentation draws from ("aug!")
CDF = "data.augment.cdf"  # the step arguments (in hparams) that hold the tables
WORD_START = "data.augment.word_start"
WORDS = "data.augment.words"  # unit="word" drawing: the table of words as token sequences,
WORD_LENGTHS = "data.augment.word_lengths"  # their lengths in tokens,
WORD_CDF = "data.augment.word_cdf"  # and the source's CDF over them
WORD_VARIANCE_TOKENS = 8  # the default margin's word length (tokens) for unit="word"


@dataclasses.dataclass(frozen=True)
class Augment:
    """What a step's augmentation does, static: rates (the defaults of traced ones), unit,
    window.

    Attributes:
      seq_len: T, the window the step trains on.
      extra: raw tokens past ``T + 1`` the batch carries (:func:`margin`).
      replace, delete, insert, swap: the rates; 0 leaves the edit out of the program.
      unit: ``"token"`` or ``"word"`` (every edit acts on whole words).
    """

    seq_len: int
    extra: int = 0
    replace: float = 0.0
    delete: float = 0.0
    insert: float = 0.0
    swap: float = 0.0
    unit: str = "token"

    @property
    def ops(self) -> tuple[str, ...]:
        """The edits switched on, in the order they apply."""
        return tuple(op for op in OPS if getattr(self, op) > 0)

    @property
    def draws(self) -> bool:
        """Whether units are drawn from the source (replace or insert is on)."""
        return self.replace > 0 or self.insert > 0

    @property
    def words(self) -> bool:
        """Whether the word-start table is read (whole words, and an edit on)."""
        return self.unit == "word" and bool(self.ops)

    @property
    def tables(self) -> tuple[str, ...]:
        """The names of the tables the edits read (:func:`tables` makes them)."""
        names = [WORD_START] * self.words
        if self.draws:
            names += [WORDS, WORD_LENGTHS, WORD_CDF] if self.unit == "word" else [CDF]
        return tuple(names)


def is_on(data: ml_collections.ConfigDict) -> bool:
    """Whether ``config.data`` augments (any rate above 0; a config without the section: no)."""
    a = data.get("augment")
    return a is not None and any(a[op] > 0 for op in OPS)


def auto_margin(seq_len: int, delete: float, unit: str = "token") -> int:
    """The default ``extra``: deletions leave at least ``T + 1`` tokens but rarely.

    The kept tokens of ``n = T + 1 + extra`` number ``n (1 - d)`` on average with variance
    ``n d (1 - d) w`` (``w`` tokens a unit: 1, or :data:`WORD_VARIANCE_TOKENS` for words); the
    margin is the least that keeps the mean five standard deviations above ``T + 1``.

    Args:
      seq_len: T.
      delete: the deletion rate.
      unit: ``"token"`` or ``"word"``.

    Returns:
      ``extra`` (0 without deletions).

    Example:
      >>> auto_margin(64, 0.0), auto_margin(64, 0.1), auto_margin(64, 0.1, "word")
      (0, 23, 60)
    """
    if delete <= 0:
        return 0
    w = WORD_VARIANCE_TOKENS if unit == "word" else 1
    need = seq_len + 1
    n = need
    while n * (1 - delete) - 5 * math.sqrt(n * delete * (1 - delete) * w) < need:
        n += 1
    return n - need


def shrink_rate(delete: float, replace: float, unit: str = "token") -> float:
    """The fraction of tokens the edits may remove, for the margin: deletion's, and with
    ``unit="word"`` replacement's too (a replaced word's tokens go, and the word drawn for it
    may be one token long: the margin counts none of its tokens, so that it holds whatever
    lengths the table has).

    Insertions are left out: they only lengthen the text, and they come last of the edits that
    change its length (after the replacements), so the tokens they push past the cut are never
    needed again and cannot run the window short.

    Example:
      >>> shrink_rate(0.1, 0.2), round(shrink_rate(0.1, 0.2, "word"), 4)
      (0.1, 0.28)
    """
    if unit != "word":
        return delete
    return 1 - (1 - delete) * (1 - replace)


def margin(data: ml_collections.ConfigDict) -> int:
    """The raw tokens a training batch carries past ``T + 1``: 0 when augmentation is off,
    ``extra`` when set (>= 0), else :func:`auto_margin` of :func:`shrink_rate` (deletion's
    rate; with whole words, deletion's and replacement's together).

    Args:
      data: the config's ``data`` section.

    Returns:
      ``extra``.

    Example:
      >>> from jaxlm.config import base_config
      >>> data = base_config().data
      >>> margin(data)
      0
      >>> data.augment.delete = 0.1; margin(data)  # T = 128
      36
      >>> data.augment.replace = 0.1; margin(data)  # token replacements keep the length
      36
      >>> data.augment.unit = "word"; margin(data)  # whole words: a replaced one may shrink
      144
    """
    if not is_on(data):
        return 0
    a = data.augment
    if a.extra >= 0:
        return a.extra
    return auto_margin(data.seq_len, shrink_rate(a.delete, a.replace, a.unit), a.unit)


def from_config(data: ml_collections.ConfigDict) -> Augment | None:
    """The step's :class:`Augment` for ``config.data``, or None when augmentation is off.

    Example:
      >>> from jaxlm.config import base_config
      >>> data = base_config().data
      >>> from_config(data) is None
      True
      >>> data.augment.swap = 0.1; from_config(data).ops
      ('swap',)
    """
    if not is_on(data):
        return None
    a = data.augment
    return Augment(
        seq_len=data.seq_len,
        extra=margin(data),
        replace=float(a.replace),
        delete=float(a.delete),
        insert=float(a.insert),
        swap=float(a.swap),
        unit=a.unit,
    )


def unigram_cdf(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """The cumulative unigram distribution of a token array, float32 ``[V]`` ending at 1.

    Example:
      >>> unigram_cdf(np.array([0, 0, 2, 2]), 3).tolist()
      [0.5, 0.5, 1.0]
    """
    counts = np.bincount(np.asarray(tokens).reshape(-1), minlength=vocab_size)[:vocab_size]
    cdf = np.cumsum(counts, dtype=np.float64) / max(counts.sum(), 1)
    return cdf.astype(np.float32)


def uniform_cdf(vocab_size: int) -> np.ndarray:
    """The cumulative uniform distribution over ``[0, V)``, float32 ``[V]``.

    Example:
      >>> uniform_cdf(4).tolist()
      [0.25, 0.5, 0.75, 1.0]
    """
    return (np.arange(1, vocab_size + 1, dtype=np.float64) / vocab_size).astype(np.float32)


def word_tables(tokenizer: Any, vocab_size: int) -> np.ndarray:
    """Per token id, whether it starts a word (float32 0/1 ``[V]``): its first byte is blank,
    or it has no bytes (the byte tokenizer's special tokens); the word tokenizer's every token
    is a word.

    Args:
      tokenizer: any jaxlm tokenizer (``token_bytes``).
      vocab_size: V.

    Returns:
      The table.

    Example:
      >>> from jaxlm.data.tokenizers import CharTokenizer
      >>> tok = CharTokenizer.train("a b\\n")
      >>> [tok.vocab[i] for i in range(tok.vocab_size)]
      ['<unk>', '\\n', ' ', 'a', 'b']
      >>> word_tables(tok, tok.vocab_size).tolist()
      [0.0, 1.0, 1.0, 0.0, 0.0]
    """
    if getattr(tokenizer, "kind", None) == "word":
        return np.ones(vocab_size, np.float32)
    pieces = tokenizer.token_bytes(np.arange(vocab_size))
    return np.array([not p or p[:1].isspace() for p in pieces], np.float32)


@dataclasses.dataclass(frozen=True)
class WordTable:
    """The words drawn for ``unit="word"`` insertions and replacements: the training split's
    most frequent words, each as the token sequence it was written with, padded.

    A word is a token that starts one (:func:`word_tables`) and the tokens after it up to the
    next start, so it carries the blank before it (``"Ġthe"``, or ``" "``, ``"t"``, ``"h"``,
    ``"e"``): spliced in before a word start, it leaves the text spaced as it was.

    Attributes:
      tokens: int32 ``[K, max_tokens]``: row ``k`` is word ``k``'s tokens, then zeros.
      lengths: int32 ``[K]``: its length (0: a row of the padding, when the split has fewer
        than ``K`` words).
      counts: int64 ``[K]``: its occurrences in the split (most frequent first).
      total: the split's words (of any length, rarer ones included): ``counts.sum() / total``
        is the share of the split's words the table holds.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    counts: np.ndarray
    total: int

    def cdf(self, source: str = "unigram") -> np.ndarray:
        """The source's cumulative distribution over the table's rows, float32 ``[K]``:
        ``"unigram"`` by count, ``"uniform"`` alike over the words (never the padding).

        Example:
          >>> t = WordTable(np.zeros((3, 1), np.int32), np.array([1, 1, 0]), np.array([3, 1, 0]), 4)
          >>> t.cdf().tolist(), t.cdf("uniform").tolist()
          ([0.75, 1.0, 1.0], [0.5, 1.0, 1.0])
        """
        weight = self.counts if source == "unigram" else (self.lengths > 0)
        cdf = np.cumsum(weight, dtype=np.float64) / max(weight.sum(), 1)
        return cdf.astype(np.float32)


def word_table(tokens: np.ndarray, word_start: np.ndarray, size: int, max_tokens: int) -> WordTable:
    """The ``size`` most frequent words of a token array of at most ``max_tokens`` tokens
    (longer ones are counted in ``total`` but not kept), on the host, vectorised.

    A token array's first tokens before its first word start are no whole word and are left
    out. Ties in count are broken by the words' tokens, the same way on every run.

    Args:
      tokens: ``[N]`` token ids (the training split).
      word_start: :func:`word_tables` of the tokenizer.
      size: K, the table's rows.
      max_tokens: its columns.

    Returns:
      A :class:`WordTable`.

    Example:
      >>> from jaxlm.data.tokenizers import CharTokenizer
      >>> tok = CharTokenizer.train(" the cat the the cat\\n")
      >>> ids = tok.encode(" the cat the the cat\\n")
      >>> t = word_table(ids, word_tables(tok, tok.vocab_size), 2, 4)
      >>> [tok.decode(row[:n]) for row, n in zip(t.tokens, t.lengths)], t.counts.tolist(), t.total
      ([' the', ' cat'], [3, 2], 6)
    """
    tokens = np.asarray(tokens).reshape(-1).astype(np.int32)
    starts = np.flatnonzero(np.asarray(word_start)[tokens] > 0.5)
    lengths = np.diff(np.append(starts, len(tokens)))
    short = lengths <= max_tokens
    first, lengths = starts[short], lengths[short]
    padded = np.concatenate([tokens, np.zeros(max_tokens, np.int32)])
    column = np.arange(max_tokens)
    keys, counts = [], []
    for at in range(0, len(first), _CHUNK):  # a few MB of rows at a time
        f, n = first[at : at + _CHUNK], lengths[at : at + _CHUNK]
        words = np.where(column < n[:, None], padded[f[:, None] + column], 0)
        unique, count = np.unique(_as_keys(np.column_stack([n, words])), return_counts=True)
        keys.append(unique)
        counts.append(count)
    if keys:  # the chunks' words merged
        unique, inverse = np.unique(np.concatenate(keys), return_inverse=True)
        count = np.bincount(inverse.reshape(-1), weights=np.concatenate(counts))
    else:
        unique, count = _as_keys(np.zeros((0, max_tokens + 1), np.int32)), np.zeros(0)
    order = np.argsort(-count, kind="stable")[:size]
    rows = np.zeros((size, max_tokens + 1), np.int32)
    rows[: len(order)] = unique[order].view(np.int32).reshape(-1, max_tokens + 1)
    kept = np.zeros(size, np.int64)
    kept[: len(order)] = count[order]
    return WordTable(rows[:, 1:], rows[:, 0].copy(), kept, len(starts))


_CHUNK = 1 << 18


def _as_keys(rows: np.ndarray) -> np.ndarray:
    """Rows of int32 as one opaque key each (``np.unique`` sorts them as bytes)."""
    rows = np.ascontiguousarray(rows, np.int32)
    return rows.view(np.dtype((np.void, rows.shape[1] * 4))).reshape(-1)


def tables(
    data: ml_collections.ConfigDict, train_tokens: np.ndarray, tokenizer: Any, vocab_size: int
) -> dict[str, np.ndarray]:
    """The arrays the augmenting step takes with its hyperparameters (:mod:`jaxlm.train.hparams`):
    with ``unit="token"``, the source's CDF over the vocabulary (when replace or insert is on);
    with ``unit="word"``, the word-start table, and when drawing, the :class:`WordTable` of
    the training split (``data.augment.word_table`` words of at most ``word_tokens`` tokens)
    with the source's CDF over it.

    Args:
      data: the config's ``data`` section.
      train_tokens: the training split (the unigram source counts it).
      tokenizer: the run's tokenizer (the word tables read its bytes).
      vocab_size: V.

    Returns:
      ``{name: array}`` as :attr:`Augment.tables` names them; empty when augmentation is off.

    Raises:
      CorpusError: whole words are drawn and the training split has none short enough.

    Example:
      >>> from jaxlm.config import base_config
      >>> data = base_config().data
      >>> data.augment.replace = 0.1
      >>> tables(data, np.array([1, 1, 2]), None, 3)[CDF].astype(float).round(3).tolist()
      [0.0, 0.667, 1.0]
      >>> from jaxlm.data.tokenizers import CharTokenizer
      >>> tok = CharTokenizer.train(" a b a\\n")
      >>> data.augment.unit = "word"
      >>> out = tables(data, tok.encode(" a b a\\n"), tok, tok.vocab_size)
      >>> [name.split(".")[-1] for name in out], out[WORDS].shape  # (word_table, word_tokens)
      (['word_start', 'words', 'word_lengths', 'word_cdf'], (4096, 16))
      >>> out[WORD_CDF][:4].round(3).tolist()  # " a" twice, " b" and "\\n" once
      [0.5, 0.75, 1.0, 1.0]
    """
    spec = from_config(data)
    out: dict[str, np.ndarray] = {}
    if spec is None:
        return out
    a = data.augment
    if spec.words:
        out[WORD_START] = word_tables(tokenizer, vocab_size)
    if spec.draws and spec.unit == "word":
        table = word_table(train_tokens, out[WORD_START], a.word_table, a.word_tokens)
        if not table.lengths.any():
            raise CorpusError(
                f"config.data.augment.word_tokens={a.word_tokens}: the training split has no "
                f"word of at most that many tokens (of {table.total:,} words) to insert or "
                "replace with; raise it, or use unit=token"
            )
        out[WORDS], out[WORD_LENGTHS] = table.tokens, table.lengths
        out[WORD_CDF] = table.cdf(a.source)
    elif spec.draws:
        uniform = a.source == "uniform"
        out[CDF] = uniform_cdf(vocab_size) if uniform else unigram_cdf(train_tokens, vocab_size)
    return out


def table_shapes(data: ml_collections.ConfigDict, vocab_size: int) -> dict[str, np.ndarray]:
    """Zero arrays in the shapes and dtypes of :func:`tables` (to compile the step from shapes
    alone: they depend on the config and V, not on the corpus).

    Example:
      >>> from jaxlm.config import base_config
      >>> data = base_config().data
      >>> data.augment.insert, data.augment.unit = 0.1, "word"
      >>> {k: (v.shape, v.dtype.name) for k, v in table_shapes(data, 50).items()}[WORDS]
      ((4096, 16), 'int32')
    """
    spec = from_config(data)
    if spec is None:
        return {}
    k, n = data.augment.word_table, data.augment.word_tokens
    shapes = {
        CDF: np.zeros(vocab_size, np.float32),
        WORD_START: np.zeros(vocab_size, np.float32),
        WORDS: np.zeros((k, n), np.int32),
        WORD_LENGTHS: np.zeros(k, np.int32),
        WORD_CDF: np.zeros(k, np.float32),
    }
    return {name: shapes[name] for name in spec.tables}


def step_key(rng: jax.Array, step: jax.Array) -> jax.Array:
    """The augmentation's key at a step: ``fold_in(fold_in(rng, TAG), step)``, apart from the
    dropout keys ``fold_in(rng, step)``."""
    return jax.random.fold_in(jax.random.fold_in(rng, TAG), step)


def apply(
    spec: Augment, key: jax.Array, batch: Mapping[str, jax.Array], hparams: Mapping[str, Any]
) -> dict[str, jax.Array]:
    """A training batch of raw windows, edited and cut to T (inside the step).

    Args:
      spec: the static part.
      key: :func:`step_key`.
      batch: ``inputs``, ``targets`` ``[B, T + extra]`` (the raw window is the inputs and the
        targets' last token) and ``reset``.
      hparams: the step's hyperparameters: the rates (``data.augment.<op>``, else the spec's)
        and the tables (:func:`tables`).

    Returns:
      The batch with ``inputs``, ``targets`` and ``mask`` ``[B, T]``.
    """
    raw = jnp.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
    inputs, targets, mask = edit(spec, key, raw, hparams)
    return {**batch, "inputs": inputs, "targets": targets, "mask": mask}


def edit(
    spec: Augment, key: jax.Array, raw: jax.Array, hparams: Mapping[str, Any]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Edits raw windows and cuts them to ``T`` inputs and their next tokens.

    Args:
      spec: the edits switched on, their default rates, the unit and ``T``.
      key: a PRNG key.
      raw: ``[B, L]`` int token ids, ``L >= T + 1``.
      hparams: traced rates (``data.augment.<op>``; absent: the spec's) and the tables
        :attr:`Augment.tables` names (:func:`tables`).

    Returns:
      ``(inputs, targets, mask)`` ``[B, T]``; ``mask`` is 0 on targets past the edited text
      (deletions, or whole words replaced by shorter ones, ate the whole margin), else 1.

    Raises:
      ValueError: a table the edits need is not in ``hparams``.
    """
    missing = [n for n in spec.tables if n not in hparams]
    if missing:
        raise ValueError(
            f"augmentation needs its tables {missing} among the step's hyperparameters "
            "(jaxlm.data.augment.tables; jaxlm.train.plan.run_step binds them)"
        )
    rate = {op: hparams.get(f"data.augment.{op}", getattr(spec, op)) for op in spec.ops}
    b, length = raw.shape
    names = ("parity", *OPS, "draw_insert", "draw_replace")
    keys = dict(zip(names, jax.random.split(key, len(names)), strict=True))
    u = {op: jax.random.uniform(keys[op], (b, length)) for op in spec.ops}
    parity = jax.random.bernoulli(keys["parity"], 0.5, (b,)).astype(jnp.int32)
    draws = {}
    if spec.draws:  # a token, or a row of the word table, drawn for each position
        word = spec.unit == "word"
        cdf = jnp.asarray(hparams[WORD_CDF if word else CDF], jnp.float32)
        for op in ("insert", "replace"):
            if op in spec.ops:
                v = jax.random.uniform(keys[f"draw_{op}"], (b, length)) * cdf[-1]
                drawn = jnp.minimum(jnp.searchsorted(cdf, v, side="right"), cdf.shape[0] - 1)
                if word:  # the word's tokens [B, L, max_tokens] and length [B, L]
                    words = jnp.asarray(hparams[WORDS], jnp.int32)
                    lengths = jnp.asarray(hparams[WORD_LENGTHS], jnp.int32)
                    drawn = (words[drawn], lengths[drawn])
                draws[op] = drawn
    word_start = jnp.asarray(hparams[WORD_START]) if spec.words else None

    def row(tokens, u, parity, draws):
        return _edit_row(tokens, u, parity, draws, rate, spec.ops, word_start)

    tokens, valid = jax.vmap(row)(raw.astype(jnp.int32), u, parity, draws)
    t = spec.seq_len
    return tokens[:, :t], tokens[:, 1 : t + 1], valid[:, 1 : t + 1].astype(jnp.float32)


def _edit_row(tokens, u, parity, draws, rate, ops, word_start):
    """One row's edits: ``(tokens [L], valid [L])``; valid is a prefix.

    Whole words (``word_start`` given) are replaced before the insertions (a replacement may
    shorten the text; the insertions, last, only push tokens past the end); single tokens are
    replaced last, in place.
    """
    length = tokens.shape[0]
    valid = jnp.ones(length, bool)
    words = word_start is not None
    if "swap" in ops:
        tokens = _swap(tokens, _starts(tokens, word_start), u["swap"], parity, rate["swap"])
    if "delete" in ops:
        unit = jnp.cumsum(_starts(tokens, word_start)) - 1
        keep = u["delete"][unit] >= rate["delete"]
        tokens, valid = _splice(tokens, keep)
    if "replace" in ops and words:  # each word's tokens out, a drawn word's in at its start
        starts = _starts(tokens, word_start)
        hit = valid & (u["replace"][jnp.cumsum(starts) - 1] < rate["replace"])
        new, new_length = draws["replace"]
        tokens, valid = _splice(tokens, valid & ~hit, hit & starts, new, new_length)
    if "insert" in ops:  # before a token, or before a word (a token that starts one)
        at = valid & (u["insert"] < rate["insert"])
        if words:
            new, new_length = draws["insert"]
            at = at & (word_start[tokens] > 0.5)  # not inside the window's first, cut word
        else:
            new, new_length = draws["insert"][:, None], jnp.ones(length, jnp.int32)
        tokens, valid = _splice(tokens, valid, at, new, new_length)
    if "replace" in ops and not words:
        tokens = jnp.where(valid & (u["replace"] < rate["replace"]), draws["replace"], tokens)
    return tokens, valid


def _splice(tokens, keep, at=None, new=None, new_length=None):
    """Tokens kept and drawn ones spliced in, compacted to the front: position ``j`` gives
    ``new[j, :new_length[j]]`` where ``at[j]``, then ``tokens[j]`` where ``keep[j]``.

    Each position's output count is summed (cumsum) to its place, and the tokens scattered
    there; what lands past ``L`` is dropped. Deletion is ``keep`` alone, insertion ``keep``
    of the valid tokens with ``at``, and a whole-word replacement ``keep`` without the
    replaced words' tokens, ``at`` their starts.

    Returns:
      ``(tokens [L], valid [L])``: the spliced text, zeros after it, and where it is.
    """
    length = tokens.shape[0]
    grow = jnp.zeros(length, jnp.int32) if at is None else jnp.where(at, new_length, 0)
    count = grow + keep
    first = jnp.cumsum(count) - count  # position j's first place
    out = jnp.zeros_like(tokens).at[jnp.where(keep, first + grow, length)].set(tokens, mode="drop")
    if at is not None:
        i = jnp.arange(new.shape[1])
        place = jnp.where(i < grow[:, None], first[:, None] + i, length)
        out = out.at[place].set(new, mode="drop")
    return out, jnp.arange(length) < count.sum()


def _starts(tokens, word_start):
    """Whether each position starts a unit: every token, or a word's first token."""
    if word_start is None:
        return jnp.ones(tokens.shape, bool)
    return (word_start[tokens] > 0.5).at[0].set(True)  # the window's first token starts one


def _swap(tokens, starts, u, parity, rate):
    """Pairs of neighbouring units (the first of each pair of the row's parity) exchanged with
    probability ``rate``: each token moves by the other unit's length."""
    length = tokens.shape[0]
    unit = jnp.cumsum(starts) - 1
    count = unit[-1] + 1
    size = jax.ops.segment_sum(jnp.ones(length, jnp.int32), unit, num_segments=length)
    first = (unit - parity) % 2 == 0  # this unit is the first of its pair
    lead = jnp.where(first, unit, unit - 1)  # the pair's first unit
    swapped = (lead >= 0) & (lead + 1 < count) & (u[jnp.clip(lead, 0, length - 1)] < rate)
    other = size[jnp.clip(jnp.where(first, unit + 1, unit - 1), 0, length - 1)]
    place = jnp.arange(length) + jnp.where(swapped, jnp.where(first, other, -other), 0)
    return jnp.zeros_like(tokens).at[place].set(tokens)
