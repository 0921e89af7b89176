"""Batches as pure functions of (seed, step): contiguous streams cut into windows.

Training: the token stream is cut into B parallel contiguous streams; step ``s`` reads window
``s mod W`` of epoch ``s // W``, shifted by an offset in ``[0, T)`` drawn from (seed, epoch), so
window boundaries move between epochs while each epoch stays contiguous (the hidden state carries
from window to window and is reset when an epoch starts). No iterator state exists: resuming at
step N gives exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxlm.errors import CorpusError


@dataclasses.dataclass(frozen=True)
class Streams:
    """A split as B contiguous streams; ``inputs_BxN[b, j]`` predicts ``targets_BxN[b, j]``."""

    inputs_BxN: np.ndarray
    targets_BxN: np.ndarray
    mask_BxN: np.ndarray


def make_streams(tokens: np.ndarray, batch_size: int, *, pad_to: int = 0) -> Streams:
    """Lays a 1-D token array out as B streams of (input, next token) pairs.

    Args:
      tokens: the split's token ids.
      batch_size: B.
      pad_to: 0 drops the remainder (training); otherwise each stream is padded with masked
        positions up to a multiple of ``pad_to`` so every token is predicted once (evaluation).

    Returns:
      The streams, each ``[B, N]``.

    Example:
      >>> s = make_streams(np.arange(10), 2)
      >>> s.inputs_BxN.tolist(), s.targets_BxN.tolist()
      ([[0, 1, 2, 3], [4, 5, 6, 7]], [[1, 2, 3, 4], [5, 6, 7, 8]])
    """
    inputs, targets = np.asarray(tokens[:-1], np.int32), np.asarray(tokens[1:], np.int32)
    if pad_to:
        n = -(-len(inputs) // batch_size)
        n = -(-n // pad_to) * pad_to
        mask = np.zeros(batch_size * n, np.float32)
        mask[: len(inputs)] = 1.0
        pad = batch_size * n - len(inputs)
        inputs, targets = np.pad(inputs, (0, pad)), np.pad(targets, (0, pad))
    else:
        n = len(inputs) // batch_size
        inputs, targets = inputs[: batch_size * n], targets[: batch_size * n]
        mask = np.ones(batch_size * n, np.float32)
    shape = (batch_size, n)
    return Streams(inputs.reshape(shape), targets.reshape(shape), mask.reshape(shape))


def windows_per_epoch(streams: Streams, seq_len: int) -> int:
    """How many training windows of length T one epoch has (one T is kept for the offset)."""
    return max((streams.inputs_BxN.shape[1] - seq_len) // seq_len, 0)


def check_trainable(streams: Streams, seq_len: int, source: str) -> None:
    """Raises a clear error when a split is too short for one training window."""
    if windows_per_epoch(streams, seq_len) < 1:
        b, n = streams.inputs_BxN.shape
        raise CorpusError(
            f"{source}: too little training text for batch_size={b} and seq_len={seq_len} "
            f"({n} tokens per stream; need at least {2 * seq_len}); lower them or add text"
        )


def train_batch(
    streams: Streams, step: int, seq_len: int, seed: int, extra: int = 0
) -> dict[str, np.ndarray]:
    """The training batch of a step: a pure function of (seed, step).

    Args:
      streams: the training split from :func:`make_streams` (no padding).
      step: the global step.
      seq_len: T.
      seed: the run's seed.
      extra: columns read past the window (the raw margin an augmenting step edits and cuts
        to T, :mod:`jaxlm.data.augment`); the same windows start where they would with 0, and
        columns past a stream's end wrap to its start.

    Returns:
      ``inputs`` and ``targets`` ``[B, T + extra]`` int32, and ``reset`` (a bool scalar array,
      True on an epoch's first window, when the recurrent state must start from zero).
    """
    per_epoch = windows_per_epoch(streams, seq_len)
    epoch, window = divmod(int(step), per_epoch)
    offset = int(np.random.default_rng([seed, epoch]).integers(seq_len)) if epoch else 0
    start = offset + window * seq_len
    cols = slice(start, start + seq_len)
    if extra:
        cols = np.arange(start, start + seq_len + extra) % streams.inputs_BxN.shape[1]
    return {
        "inputs": streams.inputs_BxN[:, cols],
        "targets": streams.targets_BxN[:, cols],
        "reset": np.asarray(window == 0),
    }


def eval_batches(streams: Streams, seq_len: int):
    """Yields consecutive ``[B, T]`` windows (``inputs``, ``targets``, ``mask``) over a split.

    Args:
      streams: a split from :func:`make_streams` with ``pad_to=seq_len``.
      seq_len: T.

    Yields:
      Dicts of numpy arrays; the first has ``reset`` True.
    """
    n = streams.inputs_BxN.shape[1]
    for start in range(0, n, seq_len):
        cols = slice(start, start + seq_len)
        yield {
            "inputs": streams.inputs_BxN[:, cols],
            "targets": streams.targets_BxN[:, cols],
            "mask": streams.mask_BxN[:, cols],
            "reset": np.asarray(start == 0),
        }
