"""ARPA files: the text format of back-off n-gram models that SRILM and KenLM read and write.

Layout::

    \\data\\
    ngram 1=10001
    ngram 2=264990

    \\1-grams:
    -4.123456\\tthe\\t-0.5432
    ...
    \\end\\

Each line holds ``log10 p(w | h)``, the n-gram's words, and (below the highest order) the
``log10`` back-off weight of the n-gram as a context. ``<s>`` is written with probability
``-99`` (never predicted). The model's sentence-end token is written ``</s>``.

Token names: ARPA words cannot contain whitespace, so whitespace characters inside a token (the
space and newline of a character-level vocabulary) are written as ``<U+0020>``-style escapes and
an empty token as ``<empty>``. Probabilities are written with the shortest decimal that reads back
to the same float64 (``precision="float64"``, the default), so a model read back scores like the
one that wrote it (to the last bit or two of the nats/log10 conversion), or to the same float32
(``precision="float32"``), the precision KenLM and SRILM hold and write: about 8 digits instead
of 17, a file a quarter smaller and quicker to write (PTB's 5-gram: 92.5 MiB in 0.6 s against
124 MiB in 0.7-1.0 s).

Example:
  >>> from jaxlm.models import ngram
  >>> from jaxlm.models.ngram import arpa
  >>> model = ngram.build(train_ids, 10000, 5, eos_id=0, vocab=words)  # doctest: +SKIP
  >>> arpa.write_arpa(model, "ptb.arpa")  # doctest: +SKIP
  >>> again = arpa.read_arpa("ptb.arpa", vocab=words, eos_id=0)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.models.ngram.model import NGramModel

LN10 = math.log(10.0)
BOS, EOS = "<s>", "</s>"
_NEVER = -99.0  # log10 probability ARPA files give <s>
PRECISIONS = ("float64", "float32")
# N-grams per block of lines: small enough that Arrow's pool reuses the buffers of blocks already
# written (fresh pages cost a fault each; PTB's 5-gram in a fresh process, medians of 3: 1.31 s
# at 1 << 17 rows with 31-36k page faults, 1.02 s at 1 << 14 with 8-15k).
_BLOCK = 1 << 14


def escape_token(token: str) -> str:
    """A token as an ARPA word: whitespace characters as ``<U+XXXX>``, the empty string as
    ``<empty>``.

    Args:
      token: a vocabulary entry.

    Returns:
      A string without whitespace.

    Example:
      >>> escape_token("a b")
      'a<U+0020>b'
    """
    if token == "":
        return "<empty>"
    if not any(c.isspace() for c in token):
        return token
    return "".join(f"<U+{ord(c):04X}>" if c.isspace() else c for c in token)


def arpa_names(vocab: Sequence[str] | None, vocab_size: int, eos_id: int | None) -> list[str]:
    """The ARPA word of every id ``0..V`` (``V`` being ``<s>``).

    Args:
      vocab: token strings (``len == vocab_size``), or None to name ids by their decimal value.
      vocab_size: ``V``.
      eos_id: the sentence-end id, written ``</s>``; or None.

    Returns:
      ``V + 1`` distinct names.

    Raises:
      ValueError: a token other than ``eos_id`` is named ``<s>`` or ``</s>``, or two tokens
        escape to the same name.

    Example:
      >>> arpa_names(["<eos>", "a b"], 2, eos_id=0)
      ['</s>', 'a<U+0020>b', '<s>']
    """
    if vocab is None:
        names = [str(i) for i in range(vocab_size)]
    else:
        if len(vocab) != vocab_size:
            raise ValueError(
                f"vocab has {len(vocab)} entries, the model's vocab_size is {vocab_size}"
            )
        names = [escape_token(t) for t in vocab]
    for i, name in enumerate(names):
        if name in (BOS, EOS) and i != eos_id:
            raise ValueError(f"token {i} is named {name!r}, which ARPA reserves for sentence marks")
    if eos_id is not None:
        names[eos_id] = EOS
    names.append(BOS)
    if len(set(names)) != len(names):
        seen: set[str] = set()
        dup = next(n for n in names if n in seen or seen.add(n))
        raise ValueError(f"two tokens have the ARPA name {dup!r}")
    return names


# Arrow writes |x| < 1e-4 as "0.0000ddd" down to 1e-6, then "d.ddde-7"; repr as "d.ddde-05".
_SMALL = (
    (r"^(-?)0\.0000([1-9])(\d+)$", r"\1\2.\3e-05"),
    (r"^(-?)0\.0000([1-9])$", r"\1\2e-05"),
    (r"^(-?)0\.00000([1-9])(\d+)$", r"\1\2.\3e-06"),
    (r"^(-?)0\.00000([1-9])$", r"\1\2e-06"),
    (r"e-(\d)$", r"e-0\1"),
)


def _column(values: np.ndarray, precision: str = "float64") -> Any:
    """log10 values as ``repr`` writes them (the shortest decimal that reads back), 0 as
    ``0`` and -inf as ``-99.0``: an Arrow string array.

    Arrow's cast (double-conversion's shortest digits, in C++) gives ``repr``'s text wherever
    ``repr`` writes a fraction in fixed notation, ``1e-4 <= |x| < 1e16`` and not an integer
    (used for ``|x| < 1e9``); below ``1e-4`` the same digits in another layout, which
    ``_SMALL``'s patterns turn into ``repr``'s exponent form (checked against ``repr`` down to
    the subnormals); the few other values (integers such as ``-99.0``, zeros, larger numbers)
    are written by ``repr`` itself.

    With ``precision="float32"`` the values are rounded to float32 and written with the shortest
    decimal that reads back to that float32 (Arrow's cast, in whatever layout it picks: ``-99``,
    ``1.5e-7``, ``0.00001``), as KenLM writes its float32 values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if precision == "float32":
        x32 = np.where(np.isneginf(values), _NEVER, values).astype(np.float32)
        return pc.cast(pa.array(x32 + np.float32(0)), pa.string())  # + 0: -0.0 is written "0"
    x = np.where(np.isneginf(values), _NEVER, np.asarray(values, np.float64))
    mag = np.abs(x)
    small = (mag > 0) & (mag < 1e-4)
    other = ~((mag >= 1e-4) & (mag < 1e9) & (x != np.rint(x))) & ~small  # NaN, inf: repr
    text = pc.cast(pa.array(x), pa.string())
    if small.any():
        tiny = pc.cast(pa.array(x[small]), pa.string())
        for pattern, replacement in _SMALL:
            tiny = pc.replace_substring_regex(tiny, pattern=pattern, replacement=replacement)
        text = pc.replace_with_mask(text, pa.array(small), tiny)
    if other.any():
        fix = ["0" if v == 0 else repr(v) for v in x[other].tolist()]
        text = pc.replace_with_mask(text, pa.array(other), pa.array(fix, pa.string()))
    return text


def _line_bytes(lines: Any) -> memoryview:
    """The bytes of an Arrow string array's values, back to back (a view of its buffer)."""
    offsets = np.frombuffer(lines.buffers()[1], np.int32)[
        lines.offset : lines.offset + len(lines) + 1
    ]
    data = lines.buffers()[2]
    return memoryview(data)[int(offsets[0]) : int(offsets[-1])]


def write_arpa(
    model: NGramModel,
    path: str | Path,
    vocab: Sequence[str] | None = None,
    threads: int = 0,
    precision: str = "float64",
) -> str:
    """Writes a model as an ARPA file.

    Whole columns at once, in blocks of rows, with Apache Arrow's string kernels (C++): the
    log10 values cast to text (``repr``'s, see :func:`_column`), the words taken from the
    vocabulary's names by id, joined into lines element-wise, and each block's buffer written
    as it is; no Python loop per n-gram. The kernels and the file writes release the GIL, so
    blocks are formatted on ``threads`` threads while the main thread writes them in order
    (a few blocks ahead at most).

    Args:
      model: the model (any method; all are back-off models).
      path: destination file (UTF-8).
      vocab: token strings; default ``model.vocab``; ids are written as numbers if both are None.
      threads: formatting threads; 0: one per CPU, at most 4.
      precision: ``"float64"`` writes each log10 value with the shortest decimal that reads back
        to the same float64 (:func:`read_arpa` gives the model back exactly); ``"float32"`` with
        the shortest that reads back to the same float32, as KenLM's ``lmplz`` writes (KenLM
        holds float32 values, so it scores either file alike).

    Returns:
      The file's SHA-256 (hex), taken of the bytes as they were written (no second read).

    Raises:
      ValueError: ``precision`` is neither.

    Example:
      >>> write_arpa(model, "/tmp/model.arpa")  # doctest: +SKIP
    """
    import concurrent.futures
    import os

    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {PRECISIONS}")
    names = _names_with(
        arpa_names(vocab if vocab is not None else model.vocab, model.vocab_size, model.eos_id)
    )
    threads = threads or min(4, os.cpu_count() or 1)
    jobs = [
        (n, start)
        for n in range(1, model.order + 1)
        for start in range(0, len(model.keys[n - 1]), _BLOCK)
    ]
    digest = hashlib.sha256()
    with open(path, "wb") as f, concurrent.futures.ThreadPoolExecutor(threads) as pool:

        def put(data: bytes | memoryview) -> None:
            f.write(data)
            digest.update(data)  # releases the GIL for large buffers, as the write does

        put(b"\\data\\\n")
        for n, count in enumerate(model.num_ngrams, 1):
            put(f"ngram {n}={count}\n".encode())
        ahead = 2 * threads
        pending = [pool.submit(_block_lines, model, names, *job, precision) for job in jobs[:ahead]]
        n_prev = 0
        for i, (n, _) in enumerate(jobs):
            for gap in range(n_prev + 1, n + 1):  # headers of this order and any empty ones
                put(f"\n\\{gap}-grams:\n".encode())
                if gap < n:
                    put(b"\n")
            n_prev = n
            lines = pending[i].result()
            pending[i] = None
            if i + ahead < len(jobs):
                pending.append(pool.submit(_block_lines, model, names, *jobs[i + ahead], precision))
            put(_line_bytes(lines))
        for gap in range(n_prev + 1, model.order + 1):  # trailing empty orders
            put(f"\n\\{gap}-grams:\n\n".encode())
        put(b"\n\\end\\\n")
    return digest.hexdigest()


def _block_lines(
    model: NGramModel, names: dict[str, Any], n: int, start: int, precision: str = "float64"
) -> Any:
    """The ARPA lines of order ``n``'s rows ``start .. start + _BLOCK``: an Arrow string array
    whose values end in newlines, made by one join of the columns (the words taken from the
    names with their separator already appended, see :func:`_names_with`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    m = model.vocab_size + 1
    rows = slice(start, start + _BLOCK)
    ids = _words(np.asarray(model.keys[n - 1][rows]), model.keys, n, m)
    top = n == model.order
    cols = [_column(np.asarray(model.log_probs[n - 1][rows]) / LN10, precision), pa.scalar("\t")]
    for j in range(n):
        end = " " if j < n - 1 else ("\n" if top else "\t")
        cols.append(pc.take(names[end], pa.array(ids[:, j])))
    if not top:
        backs = np.asarray(model.log_backoffs[n - 1][rows]) / LN10
        cols += [_few_column(backs, precision), pa.scalar("\n")]
    return pc.binary_join_element_wise(*cols, "")


def _few_column(values: np.ndarray, precision: str = "float64") -> Any:
    """:func:`_column` for values with many repeats (the back-off weights: a few thousand
    distinct ones per order, as ratios of small discounted counts): each distinct value is
    written once and the texts are taken by index."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if precision == "float32":
        values = np.asarray(values, np.float32)
    distinct, index = np.unique(values, return_inverse=True)  # 0.0 and -0.0 both write "0"
    if 2 * len(distinct) > len(values):
        return _column(values, precision)
    return pc.take(_column(distinct, precision), pa.array(index.reshape(-1)))


def _names_with(names: list[str]) -> dict[str, Any]:
    """The ARPA names as Arrow arrays, each followed by a space, a tab or a newline."""
    import pyarrow as pa

    return {end: pa.array([w + end for w in names], pa.string()) for end in (" ", "\t", "\n")}


def _words(keys: np.ndarray, all_keys: list[np.ndarray], n: int, m: int) -> np.ndarray:
    """The word ids ``[len(keys), n]`` of order-``n`` keys, oldest first (walking prefixes)."""
    words = np.empty((len(keys), n), np.int64)
    row = keys
    for j in range(n - 1, 0, -1):
        words[:, j] = row % m
        row = np.asarray(all_keys[j - 1])[row // m]
    words[:, 0] = row
    return words


def _read_header(lines: list[str], path: str) -> tuple[list[int], int]:
    """The n-gram counts of the ``\\data\\`` section and the index of the line after it."""
    i = 0
    while i < len(lines) and lines[i].strip() != "\\data\\":
        i += 1
    if i == len(lines):
        raise ValueError(f"{path}: not an ARPA file (no \\data\\ line)")
    counts: list[int] = []
    i += 1
    while i < len(lines) and lines[i].strip().startswith("ngram "):
        n, c = lines[i].strip()[6:].split("=")
        if int(n) != len(counts) + 1:
            raise ValueError(f"{path}: line {i + 1}: expected 'ngram {len(counts) + 1}=...'")
        counts.append(int(c))
        i += 1
    if not counts:
        raise ValueError(f"{path}: the \\data\\ section lists no n-gram counts")
    return counts, i


def _section(
    lines: list[str], start: int, n: int, count: int, index: dict[str, int], path: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Parses one ``\\n-grams:`` section: log10 probs, word ids, log10 back-offs, next line."""
    i = start
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i >= len(lines) or lines[i].strip() != f"\\{n}-grams:":
        raise ValueError(f"{path}: line {i + 1}: expected '\\{n}-grams:'")
    if count == 0:  # an order emptied by cut-offs: a header and no lines
        return np.zeros(0), np.zeros((0, n), np.int64), np.zeros(0), i + 1
    body = lines[i + 1 : i + 1 + count]
    flat = " ".join(body).split()
    if len(body) == count and len(flat) in (count * (n + 1), count * (n + 2)):
        width = len(flat) // max(count, 1)  # every line has the same fields: slice columns
        columns = [flat[j::width] for j in range(width)]
    else:  # lines with and without back-offs, or malformed: line by line
        fields = [ln.split() for ln in body]
        for j, fl in enumerate(fields):
            if len(fl) not in (n + 1, n + 2):
                raise ValueError(
                    f"{path}: line {i + 2 + j}: a {n}-gram line needs {n + 1} or {n + 2} fields, "
                    f"got {len(fl)}: {body[j]!r}"
                )
        if len(fields) != count:
            raise ValueError(
                f"{path}: the \\{n}-grams: section has {len(fields)} lines, expected {count}"
            )
        width = n + 2
        columns = [[fl[j] if j < len(fl) else "0" for fl in fields] for j in range(width)]
    try:
        probs = np.fromiter(map(float, columns[0]), np.float64, count)
        backs = (
            np.fromiter(map(float, columns[n + 1]), np.float64, count) if width > n + 1 else None
        )
    except ValueError as e:
        raise ValueError(f"{path}: \\{n}-grams: section: {e}") from None
    words = np.empty((count, n), np.int64)
    for j in range(n):
        try:
            words[:, j] = np.fromiter(map(index.__getitem__, columns[1 + j]), np.int64, count)
        except KeyError as e:
            raise ValueError(
                f"{path}: {n}-gram word {e.args[0]!r} is not in the vocabulary"
            ) from None
    if backs is None:
        backs = np.zeros(count)
    return probs, words, backs, i + 1 + count


def _vocabulary(lines: list[str], start: int, count: int, path: str) -> list[str]:
    """The words of the unigram section, in file order."""
    i = start
    while i < len(lines) and not lines[i].strip():
        i += 1
    words = []
    for ln in lines[i + 1 : i + 1 + count]:
        fl = ln.split()
        if len(fl) < 2:
            raise ValueError(f"{path}: malformed unigram line {ln!r}")
        words.append(fl[1])
    return words


def read_arpa(
    path: str | Path, vocab: Sequence[str] | None = None, eos_id: int | None = None
) -> NGramModel:
    """Reads an ARPA file into a model that scores exactly as the file says.

    Args:
      path: the ARPA file (UTF-8).
      vocab: token strings giving the ids (as the tokenizer that trained the model); every
        unigram in the file must be one of them (after escaping), and every one of them must be
        in the file. None: ids follow the file's unigram order and the model's ``vocab`` holds
        the file's words.
      eos_id: the id written ``</s>``; default the position of ``</s>`` in the vocabulary.

    Returns:
      :class:`~jaxlm.models.ngram.NGramModel` (``info["method"] == "arpa"``). Sentences start
      from ``<s>`` when the file has ``<s>``; contexts restart after ``eos_id`` when there is one.

    Example:
      >>> model = read_arpa("ptb.arpa", vocab=tokenizer.vocab, eos_id=0)  # doctest: +SKIP
    """
    path = str(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    counts, i = _read_header(lines, path)
    order = len(counts)
    if vocab is None:
        vocab = [w for w in _vocabulary(lines, i, counts[0], path) if w != BOS]
    if eos_id is None and EOS in vocab:
        eos_id = list(vocab).index(EOS)
    v = len(vocab)
    m = v + 1
    names = arpa_names(vocab, v, eos_id)
    index = {name: j for j, name in enumerate(names)}

    probs, words, backs, i = _section(lines, i, 1, counts[0], index, path)
    uni = words[:, 0]
    if len(np.unique(uni)) != len(uni):
        raise ValueError(f"{path}: a unigram is listed twice")
    missing = np.setdiff1d(np.arange(v), uni)
    if len(missing):
        shown = [names[j] for j in missing[:5].tolist()]
        raise ValueError(f"{path}: {len(missing)} vocabulary tokens have no unigram, e.g. {shown}")
    add_bos = bool(np.any(uni == v))
    log_probs = [np.full(m, -np.inf)]
    log_probs[0][uni] = probs * LN10
    log_probs[0][v] = -np.inf  # <s> is never predicted
    log_backoffs = [np.zeros(m)]
    log_backoffs[0][uni] = backs * LN10
    keys = [np.arange(m, dtype=np.int64)]
    for n in range(2, order + 1):
        probs, words, backs, i = _section(lines, i, n, counts[n - 1], index, path)
        row = words[:, 0]
        for j in range(2, n):
            key = row * m + words[:, j - 1]
            table = keys[j - 1]
            pos = np.searchsorted(table, key)
            bad = pos >= len(table)  # (every one of them when the context order is empty)
            bad[~bad] = table[pos[~bad]] != key[~bad]
            if bad.any():
                gram = " ".join(names[w] for w in words[int(np.flatnonzero(bad)[0])].tolist())
                raise ValueError(f"{path}: the {n}-gram {gram!r} has no entry for its context")
            row = pos
        key = row * m + words[:, n - 1]
        order_idx = np.argsort(key, kind="stable")
        key = key[order_idx]
        if np.any(key[1:] == key[:-1]):
            raise ValueError(f"{path}: a {n}-gram is listed twice")
        keys.append(key)
        log_probs.append(probs[order_idx] * LN10)
        if n < order:
            log_backoffs.append(backs[order_idx] * LN10)
    info = {"method": "arpa", "source": path, "num_ngrams": [len(k) for k in keys]}
    return NGramModel(order, v, eos_id, add_bos, keys, log_probs, log_backoffs, tuple(vocab), info)
