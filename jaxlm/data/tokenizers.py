"""Tokenizers: character, byte, word and subword level, saved as JSON next to the checkpoints.

The subword tokenizers (``bpe``, ``unigram``, ``gpt2``) are Hugging Face ``tokenizers``
(:class:`SubwordTokenizer`); the others are written here, a few lines each.
"""

from __future__ import annotations

import collections
import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.data.subword import GPT2_FILES, SubwordTokenizer
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
    unit = "char"

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

    def token_bytes(self, ids) -> list[bytes]:
        """Each token's UTF-8 bytes in :meth:`decode`'s text (see :mod:`jaxlm.data.words`)."""
        return [(self.vocab[i] if i else "\ufffd").encode() for i in np.asarray(ids).tolist()]

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
    unit = "byte"
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

    def token_bytes(self, ids) -> list[bytes]:
        """Each token's byte (none for ``<eos>`` and ``<pad>``)."""
        return [bytes([i]) if i < 256 else b"" for i in np.asarray(ids).tolist()]

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
    unit = "word"
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

    @classmethod
    def train_and_encode(cls, blocks: Iterable[str]) -> tuple[WordTokenizer, np.ndarray]:
        """Builds the whole vocabulary (as :meth:`train` with its defaults) from text given in
        blocks of whole lines and encodes it, splitting each block once.

        Each word gets a provisional id at its first occurrence; the counts are a bincount of
        those, and one permutation turns them into the trained ids. For a corpus read from a
        file in blocks this replaces a counting pass and an encoding pass, each splitting the
        text, by one.

        Args:
          blocks: the training text, each block ending at a line end (or the text's end).

        Returns:
          ``(tokenizer, ids)``: what ``train(text)`` gives and its ``encode(text)`` (int32).

        Example:
          >>> tok, ids = WordTokenizer.train_and_encode(["a b a\\n", "b c\\n"])
          >>> tok.vocab, ids.tolist()
          (['<eos>', '<unk>', 'a', 'b', 'c'], [2, 3, 2, 0, 3, 4, 0])
        """
        first: dict[str, int] = collections.defaultdict(itertools.count().__next__)
        parts = []
        for block in blocks:
            words = cls._split(block)
            parts.append(np.fromiter(map(first.__getitem__, words), np.int32, len(words)))
        provisional = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        del parts
        names = list(first)
        counts = np.bincount(provisional, minlength=len(names)).tolist()
        order = sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))
        tok = cls([names[i] for i in order])
        remap = np.array([tok._index[w] for w in names], np.int32)
        return tok, remap[provisional] if len(names) else provisional

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @staticmethod
    def _split(text: str) -> list[str]:
        """:meth:`words`, by one ``str.split`` where ``\\n`` is the only line end that adds
        ``<eos>`` (no ``\\r``; the other line breaks ``splitlines`` knows are whitespace to
        ``split`` and add none)."""
        if "\r" in text:
            return _line_words(text)
        return text.replace("\n", f" {EOS} ").split()

    def words(self, text: str) -> list[str]:
        """Splits text into words with ``<eos>`` after each line that ends with a newline."""
        return self._split(text)

    def encode(self, text: str) -> np.ndarray:
        words = self._split(text)
        ids = map(self._index.get, words, itertools.repeat(self.unk_id))
        return np.fromiter(ids, np.int32, len(words))

    def decode(self, ids) -> str:
        words = [self.vocab[i] for i in np.asarray(ids).tolist()]
        return " ".join(words).replace(f" {EOS} ", "\n").replace(f" {EOS}", "\n")

    def token_bytes(self, ids) -> list[bytes]:
        """Each token's bytes in a text of the words: a space before a word that follows a
        word, ``\\n`` for ``<eos>``."""
        out, after_word = [], False
        for i in np.asarray(ids).tolist():
            if i == self.eos_id:
                out.append(b"\n")
                after_word = False
            else:
                out.append((b" " if after_word else b"") + self.vocab[i].encode())
                after_word = True
        return out

    def to_json(self) -> dict:
        return {"kind": self.kind, "words": self.vocab[2:]}


def _line_words(text: str) -> list[str]:
    """Words with ``<eos>`` after each line (``splitlines``) that ends with ``\\n`` or ``\\r``."""
    out = []
    for line in text.splitlines(keepends=True):
        out.extend(line.split())
        if line.endswith(("\n", "\r")):
            out.append(EOS)
    return out


def _gpt2(text: str | bytes, tokenizer_path: str = "", **unused: Any) -> SubwordTokenizer:
    del text  # GPT-2's tokenizer is read, not trained
    if not tokenizer_path:
        raise ConfigError(
            "config.data.tokenizer_path: empty; the gpt2 tokenizer reads a Hugging Face GPT-2 "
            f"folder ({' + '.join(GPT2_FILES)}, or tokenizer.json)"
        )
    return SubwordTokenizer.from_gpt2(tokenizer_path)


# Each tokenizer kind's builder: ``TOKENIZERS[kind](training_text, **options)``.
TOKENIZERS = {
    "char": CharTokenizer.train,
    "byte": ByteTokenizer.train,
    "word": WordTokenizer.train,
    "bpe": SubwordTokenizer.train_bpe,
    "unigram": SubwordTokenizer.train_unigram,
    "gpt2": _gpt2,
}
SUBWORD = ("bpe", "unigram", "gpt2")  # byte-level: they take a corpus's bytes as they are


def train_tokenizer(kind: str, text: str | bytes, **options: Any):
    """Builds the tokenizer named ``kind`` from the training text.

    Args:
      kind: "char", "byte", "word", "bpe", "unigram" or "gpt2".
      text: the training split (str; bytes for "byte" and the subword kinds).
      **options: ``vocab_size`` ("word", "bpe", "unigram"), ``min_count`` ("word"),
        ``tokenizer_path`` ("gpt2": the Hugging Face folder it reads).

    Returns:
      A tokenizer with ``encode``, ``decode``, ``token_bytes``, ``vocab``, ``vocab_size``,
      ``to_json``, and ``kind`` and ``unit`` (what a loss is "per").

    Example:
      >>> tok = train_tokenizer("bpe", "low lower lowest " * 50, vocab_size=300)
      >>> tok.kind, tok.unit, tok.decode(tok.encode("slower"))
      ('bpe', 'token', 'slower')
    """
    if kind not in TOKENIZERS:
        raise ConfigError(
            f"config.data.tokenizer: unknown tokenizer {kind!r}; expected one of "
            f"{sorted(TOKENIZERS)}"
        )
    return TOKENIZERS[kind](text, **options)


# A converted GPT-2 whose folder had no tokenizer files stores this record: ids, no vocabulary.
GPT2_RECORD = "gpt2_bpe"


def tokenizer_from_json(data: dict):
    """Rebuilds a tokenizer from :meth:`to_json` output.

    Raises:
      ValueError: an unknown kind, or a record without a vocabulary (``gpt2_bpe``: a GPT-2
        converted from a folder without its tokenizer files).
    """
    kind = data.get("kind")
    if kind == "char":
        return CharTokenizer(data["chars"])
    if kind == "byte":
        return ByteTokenizer()
    if kind == "word":
        return WordTokenizer(data["words"])
    if kind in SUBWORD:
        return SubwordTokenizer.from_json(data)
    if kind == GPT2_RECORD:
        raise ValueError(
            "tokenizer JSON: a GPT-2 record without its vocabulary (converted from a folder "
            "without vocab.json + merges.txt or tokenizer.json); convert it again from a folder "
            "that has them"
        )
    raise ValueError(f"tokenizer JSON: unknown kind {kind!r}; expected one of {sorted(TOKENIZERS)}")


def encode_prompt(tokenizer: Any, prompt: str) -> np.ndarray:
    """A sampling prompt's ids: ``tokenizer.encode(prompt)``, or one token 0 when the prompt
    encodes to nothing (a model continues something).

    Example:
      >>> tok = CharTokenizer.train("ab")
      >>> encode_prompt(tok, "ba").tolist(), encode_prompt(tok, "").tolist()
      ([2, 1], [0])
    """
    ids = np.asarray(tokenizer.encode(prompt), np.int32)
    return ids if len(ids) else np.zeros(1, np.int32)


def save_tokenizer(tokenizer, path: str | Path) -> None:
    """Writes the tokenizer as JSON."""
    Path(path).write_text(json.dumps(tokenizer.to_json(), ensure_ascii=False))


def load_tokenizer(path: str | Path):
    """Reads a tokenizer written by :func:`save_tokenizer`."""
    try:
        return tokenizer_from_json(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{path}: not a readable jaxlm tokenizer file ({e})") from None
