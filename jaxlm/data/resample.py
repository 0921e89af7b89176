"""Resampling a training split: bootstrap of lines or documents, and upsampling.

``config.data.resample`` (validation and test splits are never resampled):

- ``kind="bootstrap"``: the training text is cut into units (``unit="line"``, or
  ``"document"``: blank-line separated) and as many units are drawn with replacement, by seed,
  and joined again: a corpus of the same size in which some units repeat and about 1/e of them
  are left out. Runs with different seeds see different resamples (an ensemble's members, or
  an estimate of how much a result depends on the exact text).
- ``kind="upsample"`` with ``factor=k``: the training tokens repeated k times, each copy after
  the first shifted by a fresh offset in ``[0, T)`` drawn from (seed, copy). What it adds over
  streams mode's per-epoch offset: that offset moves the window boundaries once per epoch and
  resets the state; an upsampled split has k passes with k different boundaries inside one
  epoch, the state carried across them, and an epoch (``optimizer.steps_per_epoch``, the
  epoch-based schedules) k times longer. In a mixture it makes a small source's streams k
  times longer too. With random windows it changes nothing a window sees (every offset is
  drawn anyway); temperature (``resample.temperature``, :func:`jaxlm.data.mixture.probabilities`)
  is how a mixture upsamples a small source there.

Both are pure functions of (seed, source), so a resumed run resamples the same way. numpy's
``Generator`` does the drawing; what this module adds is the cutting into units and joining
that keeps the text's own separators.
"""

from __future__ import annotations

import re

import numpy as np

_TAG = 0x424F4F54  # keeps these draws apart from the windows'
_DOCUMENT_BREAK = r"\n(?:[ \t\r]*\n)+"  # one blank line or more


def units(text: str | bytes, unit: str) -> tuple[list, str | bytes]:
    """A text cut into lines or blank-line separated documents (each without its trailing
    newlines), and the separator that joins them again.

    Example:
      >>> units("a\\nb\\n\\nc\\n", "document")
      (['a\\nb', 'c'], '\\n\\n')
      >>> units(b"x\\ny\\n", "line")
      ([b'x', b'y'], b'\\n')
    """
    binary = isinstance(text, bytes)
    newline = b"\n" if binary else "\n"
    if unit == "line":
        sep, parts = newline, text.split(newline)
    elif unit == "document":
        sep = newline * 2
        parts = re.split(_DOCUMENT_BREAK.encode() if binary else _DOCUMENT_BREAK, text)
        parts = [part.strip(newline) for part in parts]
    else:
        raise ValueError(f"unit: {unit!r}; expected line or document")
    return [part for part in parts if part], sep


def bootstrap(text: str | bytes, unit: str, seed: int, source: int = 0) -> str | bytes:
    """A bootstrap resample of a text: as many units as it has, drawn with replacement.

    Args:
      text: the training split (str or bytes).
      unit: "line" or "document" (blank-line separated). Empty lines are not units.
      seed: the run's seed.
      source: the source's index in a mixture (each source is drawn apart).

    Returns:
      The resampled text, of the same type, ending in a newline; each unit keeps its own
      characters.

    Example:
      >>> text = "".join(f"line {i}\\n" for i in range(6))
      >>> bootstrap(text, "line", seed=0) == bootstrap(text, "line", seed=0)
      True
      >>> set(bootstrap(text, "line", seed=0).splitlines()) < set(text.splitlines())
      True
    """
    parts, sep = units(text, unit)
    if not parts:
        return text
    rng = np.random.default_rng([_TAG, seed, source])
    picks = rng.integers(0, len(parts), size=len(parts))
    return sep.join(parts[i] for i in picks) + sep[:1]


def upsample(
    tokens: np.ndarray, factor: int, seq_len: int, seed: int, source: int = 0
) -> np.ndarray:
    """The training tokens repeated ``factor`` times, copies after the first shifted by fresh
    offsets in ``[0, T)`` drawn from (seed, copy, source).

    Args:
      tokens: the training split's tokens.
      factor: k >= 1 copies.
      seq_len: T.
      seed: the run's seed.
      source: the source's index in a mixture.

    Returns:
      The upsampled 1-D array (``tokens`` itself for k = 1).

    Example:
      >>> out = upsample(np.arange(10), 3, seq_len=4, seed=0)
      >>> len(out) <= 30, out[:10].tolist() == list(range(10))
      (True, True)
    """
    if factor <= 1:
        return tokens
    copies = [tokens]
    for copy in range(1, factor):
        offset = int(np.random.default_rng([_TAG, seed, copy, source]).integers(seq_len))
        copies.append(tokens[offset:])
    return np.concatenate(copies)
