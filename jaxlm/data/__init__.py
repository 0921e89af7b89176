"""Corpora through TFDS (no TensorFlow), tokenizers and batching.

``load_corpus(config.data)`` is the one entry point: it prepares the corpus (each corpus of a
mixture, :mod:`jaxlm.data.mixture`) as a TFDS array_record dataset (once), resamples the
training split where ``config.data.resample`` asks (:mod:`jaxlm.data.resample`), and tokenizes
the splits into flat int32 arrays with one tokenizer;
``train_data(config, corpus)`` gives the training windows (:mod:`jaxlm.data.batching`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jaxlm.data import batching
from jaxlm.data.tokenizers import (
    SUBWORD,
    WordTokenizer,
    decode_utf8,
    strip_bom,
    train_tokenizer,
)
from jaxlm.data.words import count_words
from jaxlm.errors import CorpusError

if TYPE_CHECKING:  # annotations only: the tokenizers import without ml_collections (60 ms)
    import ml_collections

__all__ = ["Corpus", "CorpusError", "load_corpus", "corpus_splits", "train_data"]


@dataclasses.dataclass
class Source:
    """One corpus of a mixture, tokenized: its splits, text counts and share of the windows."""

    name: str
    prob: float  # p_i: the probability of a window from it (config.data.resample.temperature)
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    counts: dict[str, dict[str, int]]
    target: bool = False

    def split(self, name: str) -> np.ndarray:
        """The token array of ``name`` ("train", "validation" or "test")."""
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


@dataclasses.dataclass
class Corpus:
    """A tokenized corpus: one flat int32 array per split, and its tokenizer."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    tokenizer: object
    name: str
    # Per split, the text's ``bytes`` and ``words`` (jaxlm.data.words.count_words): what
    # losses per byte and per word divide by, whatever the tokenizer.
    counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    # A mixture's sources, the target's among them (its splits are the fields above); empty
    # for one corpus.
    sources: tuple[Source, ...] = ()

    def split(self, name: str) -> np.ndarray:
        """The token array of ``name`` ("train", "validation" or "test")."""
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def corpus_splits(data: ml_collections.ConfigDict) -> tuple[dict[str, bytes], str]:
    """Reads the raw bytes of each split that ``config.data`` names, checking them.

    For the char and word tokenizers each file must be UTF-8, and one leading byte-order mark
    is dropped from each file (from a one-file corpus before it is split), so a file saved
    with one gives the same vocabulary and tokens as without it. The byte tokenizer and the
    byte-level subword tokenizers (bpe, unigram, gpt2) get the files' bytes as they are.

    Args:
      data: the ``data`` section of a config.

    Returns:
      ``(parts, label)``: bytes per split and a readable corpus name.
    """
    return _splits(data.corpus, data.path, data.split, data.tokenizer)


def _splits(corpus: str, path: str, split, tokenizer: str) -> tuple[dict[str, bytes], str]:
    from jaxlm.data import builders  # TFDS is imported only when a corpus is read

    utf8 = tokenizer in ("char", "word")
    if corpus == "builtin":
        return builders.split_bytes(builders.builtin_text(), split, "builtin"), "builtin"
    if corpus != "text_files":
        raise CorpusError(
            f"config.data.corpus: unknown corpus {corpus!r}; expected builtin or text_files"
        )
    if not path:
        raise CorpusError("config.data.path: empty; text_files needs a file or a folder")
    where = Path(path).expanduser()
    if where.is_dir():
        files = builders.find_split_files(where)
        parts = {name: _file_bytes(f, utf8) for name, f in files.items()}
        return parts, where.resolve().name
    whole = _file_bytes(where, utf8)
    return builders.split_bytes(whole, split, str(where)), where.stem


def _file_bytes(path: Path, utf8: bool) -> bytes:
    """A corpus file's bytes; for UTF-8 tokenizers checked, without a leading byte-order mark."""
    from jaxlm.data import builders

    data = builders.read_file(path)
    if not utf8:
        return data
    decode_utf8(data, str(path))
    text = strip_bom(data)
    if not text.strip():
        raise CorpusError(f"corpus file is empty: {path} (it holds only a byte-order mark)")
    return text


def load_corpus(data: ml_collections.ConfigDict, tokenizer=None, *, seed: int = 0) -> Corpus:
    """Prepares and tokenizes the corpus that ``config.data`` names.

    Each corpus is prepared once as a TFDS dataset (:func:`jaxlm.data.builders.ensure_prepared`,
    which imports TFDS only to prepare one); the splits tokenized are the bytes just read from
    the corpus's files, which are that dataset's content (its folder is named by their digest,
    and its records join back to them), so they are not read back from it.

    A mixture (``config.data.mixture``) reads every source and trains one tokenizer on their
    training texts joined; the corpus's splits are then the target's, and ``sources`` holds
    every source's. The training split (never validation or test) is resampled where
    ``config.data.resample`` says so, after the tokenizer is trained on the text as it is.

    Args:
      data: the ``data`` section of a config (corpus, path, split, tokenizer, vocab_size,
        min_count, tokenizer_path, data_dir, mixture, resample).
      tokenizer: reuse this tokenizer (e.g. the one saved in a workdir) instead of training one
        on the training split.
      seed: the run's seed, which bootstrap and upsampling draw from.

    Returns:
      A :class:`Corpus`.

    Raises:
      CorpusError: a corpus that cannot be read (a mixture's source named).

    Example:
      >>> import tempfile
      >>> from jaxlm.config import base_config
      >>> data = base_config().data
      >>> data.data_dir = tempfile.mkdtemp()  # prepared once per data_dir
      >>> corpus = load_corpus(data)  # doctest: +ELLIPSIS
      Preparing corpus builtin_... (466,195 bytes) in ...
      Prepared corpus builtin_...; later runs read it from there.
      >>> corpus.tokenizer.decode(corpus.train[:22])
      'The "assert" statement'
    """
    from jaxlm.data import builders, mixture

    specs = mixture.parse_mixture(data.get("mixture", ""))
    if specs:
        entries = [
            (s.name, s.corpus, s.path, f"config.data.mixture: source {s.name!r}: ") for s in specs
        ]
    else:
        entries = [("", data.corpus, data.path, "")]
    read = []  # (label, texts) per source
    for name, corpus, path, where in entries:
        try:
            parts, label = _splits(corpus, path, data.split, data.tokenizer)
            builders.ensure_prepared(parts, label, data.data_dir or None)
            texts = {split: parts[split] for split in builders.SPLITS}
            if data.tokenizer in ("char", "word"):
                texts = {split: decode_utf8(t, f"{label} {split}") for split, t in texts.items()}
        except CorpusError as e:
            raise CorpusError(f"{where}{e}") from None
        read.append((name or label, texts))
    train_ids = None  # the training split's ids, where training the tokenizer gave them
    if tokenizer is None and _one_pass_words(data, read):
        tokenizer, train_ids = WordTokenizer.train_and_encode([read[0][1]["train"]])
    elif tokenizer is None:
        train_texts = [texts["train"] for _, texts in read]
        joined = train_texts[0] if len(read) == 1 else _join(train_texts)
        tokenizer = train_tokenizer(
            data.tokenizer,
            joined,
            vocab_size=data.vocab_size,
            min_count=data.min_count,
            tokenizer_path=data.get("tokenizer_path", ""),
        )
        if data.tokenizer in SUBWORD:
            label = read[0][0] if len(read) == 1 else "the mixture"
            _log_subword(tokenizer, label, len(joined))
    sources = []
    for i, (label, texts) in enumerate(read):
        train = _resample_text(texts["train"], data, seed, i)
        trained_on = train_ids is not None and train is texts["train"]
        texts = dict(texts, train=train)
        arrays = {
            split: train_ids if split == "train" and trained_on else tokenizer.encode(t)
            for split, t in texts.items()
        }
        for split, arr in arrays.items():
            if len(arr) < 2:
                raise CorpusError(
                    f"{entries[i][3]}{label}: the {split} split has {len(arr)} tokens; need at "
                    "least 2"
                )
        counts = {
            split: {
                "bytes": len(t.encode() if isinstance(t, str) else t),
                # a word tokenizer's tokens are the words count_words counts
                "words": len(arrays[split]) if tokenizer.kind == "word" else count_words(t),
            }
            for split, t in texts.items()
        }
        arrays["train"] = _upsample(arrays["train"], data, seed, i)
        sources.append((label, arrays, counts))
    if not specs:
        label, arrays, counts = sources[0]
        return Corpus(name=label, tokenizer=tokenizer, counts=counts, **arrays)
    target = mixture.target_index(specs, data.get("mixture_target", ""))
    resample = data.get("resample")
    probs = mixture.probabilities(
        [s.weight for s in specs], resample.temperature if resample is not None else 1.0
    )
    mix = tuple(
        Source(label, float(p), counts=counts, target=i == target, **arrays)
        for i, ((label, arrays, counts), p) in enumerate(zip(sources, probs, strict=True))
    )
    label, arrays, counts = sources[target]
    return Corpus(name=label, tokenizer=tokenizer, counts=counts, sources=mix, **arrays)


def _one_pass_words(data: ml_collections.ConfigDict, read: list) -> bool:
    """Whether the word tokenizer can be trained and the training split encoded in one pass
    (:meth:`WordTokenizer.train_and_encode`: one corpus, every word kept)."""
    return (
        len(read) == 1 and data.tokenizer == "word" and not data.vocab_size and data.min_count <= 1
    )


def _join(texts: list):
    """Training texts joined by a newline (of their type), to train one tokenizer on."""
    return ("\n" if isinstance(texts[0], str) else b"\n").join(texts)


def _resample_text(text, data: ml_collections.ConfigDict, seed: int, source: int):
    from jaxlm.data import resample

    r = data.get("resample")
    if r is None or r.kind != "bootstrap":
        return text
    return resample.bootstrap(text, r.unit, seed, source)


def _upsample(tokens: np.ndarray, data: ml_collections.ConfigDict, seed: int, source: int):
    from jaxlm.data import resample

    r = data.get("resample")
    if r is None or r.kind != "upsample":
        return tokens
    return resample.upsample(tokens, r.factor, data.seq_len, seed, source)


def _log_subword(tokenizer, label: str, train_bytes: int) -> None:
    """Says how long training took (process 0; every process trains the same tokenizer)."""
    import jax

    if jax.process_index() != 0:
        return
    if tokenizer.kind == "gpt2":
        print(f"Read the GPT-2 tokenizer ({tokenizer.vocab_size:,} tokens) from {tokenizer.source}")
    else:
        print(
            f"Trained a {tokenizer.kind} tokenizer of {tokenizer.vocab_size:,} tokens on "
            f"{label}'s training split ({train_bytes:,} bytes) in {tokenizer.train_seconds:.2f} s"
        )


def train_data(
    config: ml_collections.ConfigDict, corpus: Corpus, *, length: int | None = None
) -> batching.TrainData:
    """The training windows of a run over its corpus (every source of a mixture).

    The mode is ``config.data.windows`` ("auto": random windows for models that carry no
    state between windows, ``config.train.carry_state`` False; contiguous streams otherwise).

    Args:
      config: the run config (``data``, ``train.carry_state``, ``seed``).
      corpus: from :func:`load_corpus`.
      length: the columns of a window (default ``config.data.seq_len``; ``T + extra`` for raw
        windows that on-device edits cut back to T).

    Returns:
      A :class:`~jaxlm.data.batching.TrainData`; ``.batch(step)`` is a pure function of
      (seed, step).

    Raises:
      CorpusError: a source too short for a window.

    Example:
      >>> from jaxlm.config import load_config
      >>> corpus = Corpus(np.arange(5000) % 50, np.arange(99), np.arange(99), None, "toy")
      >>> windows = train_data(load_config("transformer:smoke"), corpus)
      >>> windows.mode, windows.batch(0)["inputs"].shape
      ('random', (8, 32))
      >>> train_data(load_config("lstm:smoke"), corpus).mode
      'streams'
    """
    d = config.data
    mode = batching.window_mode(d.get("windows", "streams"), config.train.carry_state)
    if corpus.sources:
        tokens = tuple(s.train for s in corpus.sources)
        names = tuple(f"config.data.mixture: source {s.name!r} train split" for s in corpus.sources)
        probs = tuple(s.prob for s in corpus.sources)
    else:
        tokens, names, probs = (corpus.train,), (f"{corpus.name} train split",), (1.0,)
    data = batching.make_train_data(
        tokens,
        mode=mode,
        batch_size=d.batch_size,
        seq_len=d.seq_len,
        seed=config.seed,
        names=names,
        probs=probs,
        length=length,
    )
    if corpus.sources:  # the sources' own names, for logs and metrics
        data = dataclasses.replace(data, names=tuple(s.name for s in corpus.sources))
    return data
