"""Corpora through TFDS (no TensorFlow), tokenizers and batching.

``load_corpus(config.data)`` is the one entry point: it prepares the corpus as a TFDS
array_record dataset (once), reads the splits back through TFDS data sources, and tokenizes them
into flat int32 arrays.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections
import numpy as np

from jaxlm.data import batching
from jaxlm.data.tokenizers import SUBWORD, decode_utf8, strip_bom, train_tokenizer
from jaxlm.data.words import count_words
from jaxlm.errors import CorpusError

__all__ = ["Corpus", "CorpusError", "load_corpus", "corpus_splits", "train_data"]


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
    from jaxlm.data import builders  # TFDS is imported only when a corpus is read

    utf8 = data.tokenizer in ("char", "word")
    if data.corpus == "builtin":
        return builders.split_bytes(builders.builtin_text(), data.split, "builtin"), "builtin"
    if data.corpus != "text_files":
        raise CorpusError(
            f"config.data.corpus: unknown corpus {data.corpus!r}; expected builtin or text_files"
        )
    if not data.path:
        raise CorpusError("config.data.path: empty; text_files needs a file or a folder")
    path = Path(data.path).expanduser()
    if path.is_dir():
        files = builders.find_split_files(path)
        parts = {split: _file_bytes(f, utf8) for split, f in files.items()}
        return parts, path.resolve().name
    whole = _file_bytes(path, utf8)
    return builders.split_bytes(whole, data.split, str(path)), path.stem


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


def load_corpus(data: ml_collections.ConfigDict, tokenizer=None) -> Corpus:
    """Prepares, reads back and tokenizes the corpus that ``config.data`` names.

    Args:
      data: the ``data`` section of a config (corpus, path, split, tokenizer, vocab_size,
        min_count, tokenizer_path, data_dir).
      tokenizer: reuse this tokenizer (e.g. the one saved in a workdir) instead of training one
        on the training split.

    Returns:
      A :class:`Corpus`.

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
    from jaxlm.data import builders

    parts, label = corpus_splits(data)
    builder = builders.prepare(parts, label, data.data_dir or None)
    texts = {split: builders.read_split(builder, split) for split in builders.SPLITS}
    if data.tokenizer in ("char", "word"):
        texts = {split: decode_utf8(t, f"{label} {split}") for split, t in texts.items()}
    if tokenizer is None:
        tokenizer = train_tokenizer(
            data.tokenizer,
            texts["train"],
            vocab_size=data.vocab_size,
            min_count=data.min_count,
            tokenizer_path=data.get("tokenizer_path", ""),
        )
        if data.tokenizer in SUBWORD:
            _log_subword(tokenizer, label, len(texts["train"]))
    arrays = {split: tokenizer.encode(t) for split, t in texts.items()}
    for split, arr in arrays.items():
        if len(arr) < 2:
            raise CorpusError(f"{label}: the {split} split has {len(arr)} tokens; need at least 2")
    counts = {
        split: {"bytes": len(t.encode() if isinstance(t, str) else t), "words": count_words(t)}
        for split, t in texts.items()
    }
    return Corpus(name=label, tokenizer=tokenizer, counts=counts, **arrays)


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
    """
    d = config.data
    mode = batching.window_mode(d.get("windows", "streams"), config.train.carry_state)
    return batching.make_train_data(
        (corpus.train,),
        mode=mode,
        batch_size=d.batch_size,
        seq_len=d.seq_len,
        seed=config.seed,
        names=(f"{corpus.name} train split",),
        length=length,
    )
