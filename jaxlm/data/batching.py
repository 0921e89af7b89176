"""Batches as pure functions of (seed, step): contiguous streams, or windows at random offsets.

Training windows come in two modes (``config.data.windows``; "auto" picks by
``config.train.carry_state``):

- ``"streams"`` (recurrent models, which carry their state): the token stream is cut into B
  parallel contiguous streams; step ``s`` reads window ``s mod W`` of epoch ``s // W``, shifted
  by an offset in ``[0, T)`` drawn from (seed, epoch), so window boundaries move between epochs
  while each epoch stays contiguous (the hidden state carries from window to window and is reset
  when an epoch starts).
- ``"random"`` (models that carry nothing, the Transformer): each of a step's B windows starts at
  an offset drawn uniformly over the whole training stream from (seed, step), as nanoGPT and
  nanodo draw them, so consecutive steps do not see adjacent text.

With a mixture of corpora (:class:`TrainData` with several sources) a random window's source is
drawn by the mixture's probabilities; in streams mode the B streams are shared out among the
sources in proportion to them, each source's streams keeping their own epochs (a per-row reset).
No iterator state exists in either mode: resuming at step N gives exactly the batches an
uninterrupted run would have seen.
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


def windows_per_epoch(streams: Streams, seq_len: int, extra: int = 0) -> int:
    """How many training windows of length T one epoch has (one T is kept for the offset, and
    ``extra`` more columns for windows cut ``T + extra`` long)."""
    return max((streams.inputs_BxN.shape[1] - seq_len - extra) // seq_len, 0)


def check_trainable(streams: Streams, seq_len: int, source: str, *, extra: int = 0) -> None:
    """Raises a clear error when a split is too short for one training window (of ``T +
    extra`` columns)."""
    if windows_per_epoch(streams, seq_len, extra) < 1:
        b, n = streams.inputs_BxN.shape
        raise CorpusError(
            f"{source}: too little training text for batch_size={b} and seq_len={seq_len} "
            f"({n} tokens per stream; need at least {2 * seq_len + extra}); lower them or add "
            "text"
        )


def train_batch(
    streams: Streams,
    step: int,
    seq_len: int,
    seed: int,
    *,
    length: int | None = None,
    source: int | None = None,
) -> dict[str, np.ndarray]:
    """The training batch of a step in streams mode: a pure function of (seed, step).

    Args:
      streams: the training split from :func:`make_streams` (no padding).
      step: the global step.
      seq_len: T, the stride from window to window.
      seed: the run's seed.
      length: columns to cut from each window's start (default T; ``T + extra`` for a raw
        window that on-device edits cut back to T). Window starts are those of T-long
        windows, though an epoch may have one window less, to leave room for the last one.
      source: a mixture source's index: its epochs' offsets are drawn from (seed, epoch,
        source), apart from the other sources'.

    Returns:
      ``inputs`` and ``targets`` ``[B, length]`` int32, and ``reset`` (a bool scalar array, True
      on an epoch's first window, when the recurrent state must start from zero).

    Example:
      >>> s = make_streams(np.arange(100), 2)
      >>> train_batch(s, 1, 4, seed=0)["inputs"].tolist()  # epoch 0 has no offset
      [[4, 5, 6, 7], [53, 54, 55, 56]]
      >>> train_batch(s, 1, 4, seed=0, length=6)["targets"].tolist()
      [[5, 6, 7, 8, 9, 10], [54, 55, 56, 57, 58, 59]]
    """
    length = seq_len if length is None else length
    per_epoch = windows_per_epoch(streams, seq_len, length - seq_len)
    epoch, window = divmod(int(step), per_epoch)
    key = [seed, epoch] if source is None else [seed, epoch, source]
    offset = int(np.random.default_rng(key).integers(seq_len)) if epoch else 0
    start = offset + window * seq_len
    cols = slice(start, start + length)
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


# --------------------------------------------------------------------------------------------
# Windows at random offsets, and mixtures of sources.

WINDOW_MODES = ("auto", "streams", "random")
_RANDOM_TAG = 0x52414E44  # keeps these draws apart from the streams' per-epoch offsets


def window_mode(windows: str, carry_state: bool) -> str:
    """The window mode a run uses: ``windows`` itself, or for "auto" "streams" when the model
    carries its state between windows and "random" when it does not.

    Example:
      >>> window_mode("auto", carry_state=False), window_mode("auto", True)
      ('random', 'streams')
    """
    if windows not in WINDOW_MODES:
        raise ValueError(f"windows: {windows!r}; expected one of {WINDOW_MODES}")
    if windows == "auto":
        return "streams" if carry_state else "random"
    return windows


def cut_windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """Windows of ``length`` (input, next token) pairs starting at ``starts`` of a token array.

    Args:
      tokens: a 1-D token array.
      starts: ``[B]`` starts, each at most ``len(tokens) - length - 1``.
      length: the window's columns (T, or ``T + extra`` for a raw window).

    Returns:
      ``inputs`` and ``targets`` ``[B, length]`` int32 (``targets`` one token on).

    Example:
      >>> cut_windows(np.arange(10), np.array([0, 5]), 3)["targets"].tolist()
      [[1, 2, 3], [6, 7, 8]]
    """
    idx = np.asarray(starts, np.int64)[:, None] + np.arange(length)
    return {"inputs": tokens[idx].astype(np.int32), "targets": tokens[idx + 1].astype(np.int32)}


def random_batch(
    sources: tuple[np.ndarray, ...],
    probs: np.ndarray,
    step: int,
    seed: int,
    batch_size: int,
    length: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A step's windows at random offsets: a pure function of (seed, step).

    Each window's source is drawn by ``probs`` (skipped for one source), then its start
    uniformly over every start that leaves ``length + 1`` tokens in that source.

    Args:
      sources: each source's training tokens (1-D).
      probs: the probability of each source (summing to 1).
      step: the global step.
      seed: the run's seed.
      batch_size: B.
      length: the window's columns.

    Returns:
      ``(batch, source)``: ``inputs``/``targets`` ``[B, length]`` and ``reset`` (True: nothing
      is carried into a window), and each window's source index ``[B]``.

    Example:
      >>> tokens = (np.arange(1000),)
      >>> a, _ = random_batch(tokens, np.ones(1), step=3, seed=0, batch_size=2, length=4)
      >>> b, _ = random_batch(tokens, np.ones(1), step=3, seed=0, batch_size=2, length=4)
      >>> (a["inputs"] == b["inputs"]).all(), (a["targets"] == a["inputs"] + 1).all()
      (np.True_, np.True_)
    """
    rng = np.random.default_rng([_RANDOM_TAG, seed, int(step)])
    source = _draw_sources(rng, probs, batch_size)
    highs = np.array([len(t) - length for t in sources], np.int64)  # starts in [0, high)
    starts = rng.integers(0, highs[source])
    if len(sources) == 1:
        batch = cut_windows(sources[0], starts, length)
    else:  # each source's windows cut from it in place (no copy of the sources per step)
        shape = (batch_size, length)
        batch = {"inputs": np.empty(shape, np.int32), "targets": np.empty(shape, np.int32)}
        for i, tokens in enumerate(sources):
            rows = np.flatnonzero(source == i)
            for key, cut in cut_windows(tokens, starts[rows], length).items():
                batch[key][rows] = cut
    batch["reset"] = np.asarray(True)
    return batch, source


def _draw_sources(rng: np.random.Generator, probs: np.ndarray, batch_size: int) -> np.ndarray:
    """Each window's source, drawn first from a step's generator (nothing drawn for one)."""
    if len(probs) == 1:
        return np.zeros(batch_size, np.int64)
    return rng.choice(len(probs), size=batch_size, p=probs)


def share_streams(probs: np.ndarray, batch_size: int) -> np.ndarray:
    """How many of B streams each source gets: proportional to ``probs`` by largest
    remainders, and at least one each.

    Raises:
      ValueError: fewer streams than sources.

    Example:
      >>> share_streams(np.array([0.3, 0.7]), 32).tolist()
      [10, 22]
    """
    k = len(probs)
    if batch_size < k:
        raise ValueError(f"{batch_size} streams cannot be shared among {k} sources")
    exact = np.asarray(probs, np.float64) * batch_size
    counts = np.maximum(np.floor(exact).astype(np.int64), 1)
    while counts.sum() < batch_size:  # largest remainder first (ties: the first source)
        counts[np.argmax(exact - counts)] += 1
    while counts.sum() > batch_size:  # only when the floor of one was raised to 1
        over = np.where(counts > 1, counts - exact, -np.inf)
        counts[np.argmax(over)] -= 1
    return counts


@dataclasses.dataclass(frozen=True)
class TrainData:
    """The training windows of a run: ``batch(step)`` is a pure function of (seed, step).

    Made by :func:`make_train_data`; holds the sources' tokens and, in streams mode, their
    streams. With one source in streams mode ``batch`` is :func:`train_batch` exactly.

    Attributes:
      mode: "streams" or "random".
      names: the sources' names.
      probs: each source's probability (random mode) or share of the streams (streams mode).
      length: the columns of a window (T, or ``T + extra``).

    Example:
      >>> mix = make_train_data((np.arange(500), np.arange(1000, 3000)), mode="streams",
      ...                       batch_size=4, seq_len=8, seed=0, names=("a", "b"),
      ...                       probs=(0.25, 0.75))
      >>> mix.sources(0).tolist(), mix.batch(0)["reset"].tolist()  # one stream for "a"
      ([0, 1, 1, 1], [True, True, True, True])
    """

    mode: str
    names: tuple[str, ...]
    probs: np.ndarray
    tokens: tuple[np.ndarray, ...]
    streams: tuple[Streams, ...]
    seq_len: int
    length: int
    batch_size: int
    seed: int

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The step's ``inputs``, ``targets`` ``[B, length]`` and ``reset`` (a scalar, or with
        several sources in streams mode one per row)."""
        return self._batch(step)[0]

    def sources(self, step: int) -> np.ndarray:
        """The source index of each of the step's B windows (nothing cut)."""
        if self.mode == "random":
            rng = np.random.default_rng([_RANDOM_TAG, self.seed, int(step)])
            return _draw_sources(rng, self.probs, self.batch_size)
        rows = [s.inputs_BxN.shape[0] for s in self.streams]
        return np.repeat(np.arange(len(rows)), rows)

    def _batch(self, step: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        if self.mode == "random":
            return random_batch(
                self.tokens, self.probs, step, self.seed, self.batch_size, self.length
            )
        if len(self.streams) == 1:
            batch = train_batch(self.streams[0], step, self.seq_len, self.seed, length=self.length)
            return batch, np.zeros(self.batch_size, np.int64)
        parts, resets, source = [], [], []
        for i, streams in enumerate(self.streams):
            # each source's streams keep their own epochs and offsets
            b = train_batch(streams, step, self.seq_len, self.seed, length=self.length, source=i)
            rows = streams.inputs_BxN.shape[0]
            parts.append(b)
            resets.append(np.full(rows, bool(b["reset"])))
            source.append(np.full(rows, i, np.int64))
        batch = {k: np.concatenate([p[k] for p in parts]) for k in ("inputs", "targets")}
        batch["reset"] = np.concatenate(resets)
        return batch, np.concatenate(source)

    def realised(self, num_steps: int) -> np.ndarray:
        """The fraction of the windows of steps ``[0, num_steps)`` that each source gives."""
        counts = np.zeros(len(self.names), np.int64)
        for step in range(num_steps):
            counts += np.bincount(self.sources(step), minlength=len(self.names))
        return counts / max(counts.sum(), 1)


def make_train_data(
    tokens: tuple[np.ndarray, ...] | np.ndarray,
    *,
    mode: str,
    batch_size: int,
    seq_len: int,
    seed: int,
    names: tuple[str, ...] = ("train",),
    probs: tuple[float, ...] | np.ndarray = (1.0,),
    length: int | None = None,
) -> TrainData:
    """The training windows over one or several sources, checked to have room for a window.

    Args:
      tokens: the training tokens, or one array per source.
      mode: "streams" or "random" (:func:`window_mode`).
      batch_size: B.
      seq_len: T.
      seed: the run's seed.
      names: the sources' names, for messages.
      probs: the sources' probabilities (summing to 1).
      length: the columns of a window (default T; ``T + extra`` for raw windows to edit).

    Returns:
      A :class:`TrainData`.

    Raises:
      CorpusError: a source too short for a window (streams mode: for its share of streams).

    Example:
      >>> data = make_train_data(np.arange(1000), mode="random", batch_size=4, seq_len=8,
      ...                        seed=0)
      >>> data.batch(5)["inputs"].shape
      (4, 8)
    """
    if isinstance(tokens, np.ndarray):
        tokens = (tokens,)
    tokens = tuple(np.asarray(t, np.int32) for t in tokens)
    length = seq_len if length is None else length
    p = np.asarray(probs, np.float64)
    p = p / p.sum()
    streams: tuple[Streams, ...] = ()
    if mode == "streams":
        shares = np.array([batch_size]) if len(tokens) == 1 else share_streams(p, batch_size)
        streams = tuple(make_streams(t, int(b)) for t, b in zip(tokens, shares, strict=True))
        for s, name in zip(streams, names, strict=True):
            check_trainable(s, seq_len, name, extra=length - seq_len)
        p = shares / shares.sum()
    elif mode == "random":
        for t, name in zip(tokens, names, strict=True):
            if len(t) < length + 1:
                raise CorpusError(
                    f"{name}: too little training text for seq_len={seq_len} ({len(t)} tokens; "
                    f"need at least {length + 1}); lower it or add text"
                )
    else:
        raise ValueError(f"mode: {mode!r}; expected streams or random")
    return TrainData(mode, tuple(names), p, tokens, streams, seq_len, length, batch_size, seed)
