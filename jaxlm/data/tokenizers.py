"""Tokenizers: character, byte and word level, saved as JSON next to the checkpoints."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.errors import ConfigError, CorpusError

EOS = "<eos>"
UNK = "<unk>"
PAD = "<pad>"


UTF8_BOM = b"\xef\xbb\xbf"  # U+FEFF as UTF-8: a byte-order mark at the start of a file


def strip_bom(data: bytes) -> bytes:
    r"""The bytes without one leading UTF-8 byte-order mark, which some editors write first.

    A mark at the start of a file says "this is UTF-8"; it is not text, and kept it would make
    ``"\ufeffThe"`` a word (and U+FEFF a character) of its own. Elsewhere U+FEFF is a character
    (a zero-width no-break space) and stays.

    Args:
      data: a file's bytes.

    Returns:
      ``data`` without its first three bytes when they are the mark, else ``data``.

    Example:
      >>> strip_bom(b"\xef\xbb\xbfThe cat")
      b'The cat'
      >>> strip_bom("a\ufeffb".encode())  # only a leading mark
      b'a\xef\xbb\xbfb'
    """
    return data[len(UTF8_BOM) :] if data.startswith(UTF8_BOM) else data


def decode_utf8(data: bytes, source: str) -> str:
    """Decodes UTF-8 strictly; the error names the source and the byte offset.

    Args:
      data: the bytes.
      source: a file or split name for the message.

    Returns:
      The text.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{source}: bytes at offset {e.start} are not valid UTF-8 ({e.reason}: "
            f"{data[e.start : e.start + 4]!r}); the character and word tokenizers need UTF-8 text "
            "(use config.data.tokenizer='byte' for raw bytes)"
        ) from None


class CharTokenizer:
    """One id per Unicode character seen in the training text; id 0 is ``<unk>``.

    Example:
      >>> tok = CharTokenizer.train("hello")
      >>> tok.decode(tok.encode("hole"))
      'hole'
    """

    kind = "char"

    def __init__(self, chars: list[str]):
        self.vocab = [UNK, *chars]
        self._codes = np.array([ord(c) for c in chars], np.int64)
        self.unk_id = 0
        self.eos_id = None

    @classmethod
    def train(cls, text: str, **unused: Any) -> CharTokenizer:
        """The vocabulary of ``text``'s distinct characters, in code point order."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """Text to int32 ids; unseen characters become ``<unk>``."""
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int64)
        pos = np.searchsorted(self._codes, codes)
        pos = np.minimum(pos, len(self._codes) - 1)
        found = self._codes[pos] == codes
        return np.where(found, pos + 1, self.unk_id).astype(np.int32)

    def decode(self, ids) -> str:
        """Ids back to text (``<unk>`` shows as U+FFFD)."""
        return "".join(self.vocab[i] if i else "\ufffd" for i in np.asarray(ids).tolist())

    def to_json(self) -> dict:
        return {"kind": self.kind, "chars": self.vocab[1:]}


class ByteTokenizer:
    """The 256 byte values as ids 0-255, then ``<eos>`` (256) and ``<pad>`` (257).

    The vocabulary is fixed, so models trained on different corpora share it. The bytes are the
    file's as they are: a leading UTF-8 byte-order mark stays (the char and word tokenizers'
    corpora drop it, see :func:`strip_bom`).

    Example:
      >>> ByteTokenizer().decode(ByteTokenizer().encode("héllo"))
      'héllo'
    """

    kind = "byte"
    vocab = [*(f"<0x{i:02X}>" for i in range(256)), EOS, PAD]
    eos_id = 256
    pad_id = 257
    unk_id = None

    @classmethod
    def train(cls, text: str | bytes = b"", **unused: Any) -> ByteTokenizer:
        return cls()

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else text
        return np.frombuffer(data, np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        data = bytes(i for i in np.asarray(ids).tolist() if i < 256)
        return data.decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        return {"kind": self.kind}


class WordTokenizer:
    """Whitespace-separated words, ``<eos>`` at each line end, ``<unk>`` for unseen words.

    Ids 0 and 1 are ``<eos>`` and ``<unk>``; then words by descending training frequency (ties in
    string order). On the Penn Treebank, which already writes ``<unk>``, this gives the standard
    10,000-type vocabulary.

    Example:
      >>> tok = WordTokenizer.train("a b a\\nb c\\n")
      >>> tok.encode("a c d\\n").tolist()
      [2, 4, 1, 0]
    """

    kind = "word"
    eos_id = 0
    unk_id = 1

    def __init__(self, words: list[str]):
        self.vocab = [EOS, UNK, *(w for w in words if w not in (EOS, UNK))]
        self._index = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def train(cls, text: str, vocab_size: int = 0, min_count: int = 1, **unused: Any):
        """Builds the vocabulary from training text.

        Args:
          text: the training split.
          vocab_size: keep at most this many types, specials included (0 keeps all).
          min_count: drop words seen fewer times than this.

        Returns:
          The tokenizer.
        """
        counts = collections.Counter(text.split())
        words = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        if vocab_size:
            words = [w for w in words if w not in (EOS, UNK)][: max(vocab_size - 2, 0)]
        return cls(words)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def words(self, text: str) -> list[str]:
        """Splits text into words with ``<eos>`` after each line that ends with a newline."""
        out = []
        for line in text.splitlines(keepends=True):
            out.extend(line.split())
            if line.endswith(("\n", "\r")):
                out.append(EOS)
        return out

    def encode(self, text: str) -> np.ndarray:
        index, unk = self._index, self.unk_id
        return np.array([index.get(w, unk) for w in self.words(text)], np.int32)

    def decode(self, ids) -> str:
        words = [self.vocab[i] for i in np.asarray(ids).tolist()]
        return " ".join(words).replace(f" {EOS} ", "\n").replace(f" {EOS}", "\n")

    def to_json(self) -> dict:
        return {"kind": self.kind, "words": self.vocab[2:]}


TOKENIZERS = {"char": CharTokenizer, "byte": ByteTokenizer, "word": WordTokenizer}


def train_tokenizer(kind: str, text: str | bytes, **options: Any):
    """Builds the tokenizer named ``kind`` from the training text.

    Args:
      kind: "char", "byte" or "word".
      text: the training split (str; bytes for "byte").
      **options: ``vocab_size`` and ``min_count`` for "word".

    Returns:
      A tokenizer with ``encode``, ``decode``, ``vocab_size``, ``to_json``.
    """
    if kind not in TOKENIZERS:
        raise ConfigError(
            f"config.data.tokenizer: unknown tokenizer {kind!r}; expected one of "
            f"{sorted(TOKENIZERS)}"
        )
    return TOKENIZERS[kind].train(text, **options)


def tokenizer_from_json(data: dict):
    """Rebuilds a tokenizer from :meth:`to_json` output."""
    kind = data.get("kind")
    if kind == "char":
        return CharTokenizer(data["chars"])
    if kind == "byte":
        return ByteTokenizer()
    if kind == "word":
        return WordTokenizer(data["words"])
    raise ValueError(f"tokenizer JSON: unknown kind {kind!r}; expected char, byte or word")


def save_tokenizer(tokenizer, path: str | Path) -> None:
    """Writes the tokenizer as JSON."""
    Path(path).write_text(json.dumps(tokenizer.to_json(), ensure_ascii=False))


def load_tokenizer(path: str | Path):
    """Reads a tokenizer written by :func:`save_tokenizer`."""
    try:
        return tokenizer_from_json(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{path}: not a readable jaxlm tokenizer file ({e})") from None
