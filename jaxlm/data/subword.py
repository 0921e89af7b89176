"""Subword tokenizers: byte-level BPE (as GPT-2's), byte-level Unigram, and GPT-2's own files.

Built on Hugging Face ``tokenizers`` rather than ``sentencepiece`` because it has GPT-2's
tokenizer itself: the byte-level pre-tokenizer with GPT-2's regular expression, read from
GPT-2's ``vocab.json`` + ``merges.txt`` (or a ``tokenizer.json``), giving the ids
``GPT2TokenizerFast`` gives (that class is built on it); it trains BPE and Unigram in a
second or two on the Penn Treebank; and it saves a tokenizer as one JSON document, which a
checkpoint's meta holds as it holds every tokenizer (sentencepiece saves a binary protobuf,
and has no byte-level pre-tokenizer, so it cannot read GPT-2's files).

What jaxlm adds:

- Any byte string round-trips exactly, valid UTF-8 or not. ``tokenizers`` takes text, so
  bytes that are not UTF-8 become their byte tokens (every byte-level vocabulary has the 256),
  and decoding maps tokens back to bytes without the UTF-8 step.
- Long texts are encoded in pieces, cut only where the pre-tokenizer cuts too (after a line
  end between two non-blank characters, or before " word"), in parallel: the same ids as one
  call on the whole text (tested), in less time (0.8 of it on PTB train, 2 busy cores) and
  without one encoding object of the whole split.
- ``token_bytes`` gives each token's bytes, which :mod:`jaxlm.data.words` uses to map token
  scores to words.

Example:
  >>> tok = SubwordTokenizer.train_bpe("the cat sat on the mat. " * 20, vocab_size=270)
  >>> tok.decode(tok.encode("the cats"))
  'the cats'
  >>> tok.decode_bytes(tok.encode(b"\\xff\\xfe not UTF-8"))
  b'\\xff\\xfe not UTF-8'
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.errors import ConfigError

ENDOFTEXT = "<|endoftext|>"  # GPT-2's one special token: ends a document
UNK = "<unk>"
SPECIALS = {"bpe": (ENDOFTEXT,), "unigram": (ENDOFTEXT, UNK)}
# The smallest vocabulary each kind can train: the 256 byte tokens and its special tokens.
MIN_VOCAB = {kind: 256 + len(specials) for kind, specials in SPECIALS.items()}
GPT2_FILES = ("vocab.json", "merges.txt")
TOKENIZER_JSON = "tokenizer.json"
CHUNK_CHARS = 1 << 16  # a piece of a long text, encoded in parallel with the others
# Where GPT-2's pre-tokenizer always cuts: after a line end between two non-blank characters,
# or after a line end that one space and a non-blank character follow (" word\n word", as
# in the Penn Treebank). A blank run is one piece up to its last space, which goes with the
# word after it, so a blank run elsewhere would be cut differently at a piece's end.
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)|\n(?= \S)")
_NOT_UTF8 = re.compile("[\udc80-\udcff]+")  # surrogateescape's stand-ins for invalid bytes


def _hf() -> Any:
    """The ``tokenizers`` package, with a one-line error if this install lacks it."""
    try:
        import tokenizers
    except ImportError as e:  # a core dependency; only a broken install gets here
        raise ConfigError(
            f"the subword tokenizers need the 'tokenizers' package ({e}); "
            "pip install 'tokenizers>=0.20,<0.24' (a dependency of jaxlm)"
        ) from None
    return tokenizers


@functools.cache
def byte_alphabet() -> tuple[str, ...]:
    """GPT-2's printable stand-in for each byte value 0-255, in byte order.

    Example:
      >>> byte_alphabet()[ord(" ")], byte_alphabet()[ord("a")], byte_alphabet()[10]
      ('Ġ', 'a', 'Ċ')
    """
    # GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others
    # take the code points from 256 on, in byte order.
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return tuple(chars[b] for b in range(256))


@functools.cache
def _byte_of_char() -> dict[str, int]:
    return {c: b for b, c in enumerate(byte_alphabet())}


def text_chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Cuts ``text`` into pieces of about ``size`` characters, only after a line end between
    two non-blank characters or before `` word``, where GPT-2's byte-level pre-tokenizer
    always cuts too.

    Args:
      text: any text.
      size: the pieces' least length (the last one may be shorter).

    Yields:
      Pieces that join back to ``text``.

    Example:
      >>> list(text_chunks("ab\\ncd \\nef\\n\\ngh \\n ij\\n  k", size=2))
      ['ab\\n', 'cd \\nef\\n\\ngh \\n', ' ij\\n  k']
    """
    start = 0
    while start < len(text):
        cut = _SAFE_CUT.search(text, start + size) if start + size < len(text) else None
        end = cut.end() if cut else len(text)
        yield text[start:end]
        start = end


def _as_text(text: str | bytes) -> str:
    """Bytes as text, each byte that is not UTF-8 as its surrogateescape stand-in."""
    return text.decode("utf-8", "surrogateescape") if isinstance(text, bytes) else text


def _segments(text: str) -> Iterator[tuple[bool, str]]:
    """``(is_text, piece)`` runs: UTF-8 text, and the stand-ins of bytes that are not UTF-8."""
    start = 0
    for m in _NOT_UTF8.finditer(text):
        if m.start() > start:
            yield True, text[start : m.start()]
        yield False, m.group()
        start = m.end()
    if start < len(text):
        yield True, text[start:]


def _training_texts(text: str | bytes) -> Iterator[str]:
    """The UTF-8 pieces of a training text, cut where the pre-tokenizer cuts."""
    for is_text, piece in _segments(_as_text(text)):
        if is_text:
            yield from text_chunks(piece)


def _is_byte_level(data: dict[str, Any]) -> bool:
    """Whether a tokenizer JSON pre-tokenizes as GPT-2 does (ByteLevel with its regex)."""
    pre = data.get("pre_tokenizer") or {}
    return (
        pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not data.get("normalizer")
    )


class SubwordTokenizer:
    """A byte-level subword tokenizer: a Hugging Face ``tokenizers.Tokenizer`` and its kind.

    Build one with :meth:`train_bpe`, :meth:`train_unigram` or :meth:`from_gpt2`; it is saved
    as the library's own JSON (:meth:`to_json`, never pickled) inside jaxlm's tokenizer JSON.

    Attributes:
      kind: ``"bpe"``, ``"unigram"`` or ``"gpt2"``.
      vocab: the token strings by id (bytes as GPT-2's printable stand-ins, e.g. ``"Ġthe"``).
      eos_id: the id of ``<|endoftext|>`` (None when the vocabulary lacks it).
      unk_id: the id of ``<unk>`` (Unigram only; byte-level vocabularies never need it).
      train_seconds: how long training took (0 when loaded).
      tokenizer: the ``tokenizers.Tokenizer``.

    Example:
      >>> tok = SubwordTokenizer.train_unigram("a rose is a rose is a rose. " * 30, 300)
      >>> tok.kind, tok.decode(tok.encode("a rose"))
      ('unigram', 'a rose')
    """

    unit = "token"

    def __init__(self, kind: str, tokenizer: Any, *, source: str = "", train_seconds: float = 0):
        self.kind, self.tokenizer, self.source = kind, tokenizer, source
        self.train_seconds = float(train_seconds)
        by_id = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
        if sorted(by_id) != list(range(len(by_id))):
            missing = sorted(set(range(max(by_id) + 1)) - set(by_id))[:5]
            raise ConfigError(f"{source or kind} tokenizer: no token for ids {missing}")
        self.vocab = [by_id[i] for i in range(len(by_id))]
        index = {t: i for i, t in by_id.items()}
        missing = [c for c in byte_alphabet() if c not in index]
        if missing:
            raise ConfigError(
                f"{source or kind} tokenizer: not byte-level ({len(missing)} of the 256 byte "
                f"tokens missing, e.g. {missing[0]!r}); expected a GPT-2-style byte-level BPE"
            )
        self._byte_ids = np.array([index[c] for c in byte_alphabet()], np.int32)
        added = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        byte_of = _byte_of_char()
        self._token_bytes = [
            t.encode() if t in added or any(c not in byte_of for c in t)
            else bytes(byte_of[c] for c in t)
            for t in self.vocab
        ]  # fmt: skip
        self.eos_id = index.get(ENDOFTEXT)
        self.unk_id = index.get(UNK) if kind == "unigram" else None
        self._chunked = _is_byte_level(json.loads(tokenizer.to_str()))

    # ------------------------------------------------------------------------------------
    # Building.

    @classmethod
    def train_bpe(cls, text: str | bytes, vocab_size: int, **unused: Any) -> SubwordTokenizer:
        """Trains a byte-level BPE (GPT-2's pre-tokenizer and byte alphabet) on ``text``.

        Args:
          text: the training split (text, or bytes: those that are not UTF-8 are left out of
            the counts; they still encode, as their byte tokens).
          vocab_size: the vocabulary, the 256 bytes and ``<|endoftext|>`` (id 0) included.

        Returns:
          The tokenizer; fewer tokens than ``vocab_size`` when the text has no more pairs.
        """
        hf = _hf()
        tok = hf.Tokenizer(hf.models.BPE())
        trainer = hf.trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIALS["bpe"]),
            initial_alphabet=list(byte_alphabet()),
            show_progress=False,
        )
        return cls._train("bpe", tok, trainer, text, vocab_size)

    @classmethod
    def train_unigram(cls, text: str | bytes, vocab_size: int, **unused: Any) -> SubwordTokenizer:
        """Trains a byte-level Unigram language model tokenizer (Kudo 2018) on ``text``.

        Args:
          text: the training split (as for :meth:`train_bpe`).
          vocab_size: the vocabulary, the 256 bytes, ``<|endoftext|>`` and ``<unk>`` included.

        Returns:
          The tokenizer.
        """
        hf = _hf()
        tok = hf.Tokenizer(hf.models.Unigram())
        trainer = hf.trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIALS["unigram"]),
            unk_token=UNK,
            initial_alphabet=list(byte_alphabet()),
            show_progress=False,
        )
        return cls._train("unigram", tok, trainer, text, vocab_size)

    @classmethod
    def _train(cls, kind: str, tok: Any, trainer: Any, text: str | bytes, vocab_size: int):
        if vocab_size < MIN_VOCAB[kind]:
            raise ConfigError(
                f"config.data.vocab_size: {vocab_size}; a {kind} tokenizer needs at least "
                f"{MIN_VOCAB[kind]} (256 bytes and {', '.join(SPECIALS[kind])})"
            )
        hf = _hf()
        tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = hf.decoders.ByteLevel()
        start = time.perf_counter()
        tok.train_from_iterator(_training_texts(text), trainer)
        return cls(kind, tok, train_seconds=time.perf_counter() - start)

    @classmethod
    def from_gpt2(cls, path: str | Path) -> SubwordTokenizer:
        """GPT-2's tokenizer from a Hugging Face folder, as ``GPT2TokenizerFast`` reads it.

        Args:
          path: a folder with ``tokenizer.json``, or with ``vocab.json`` and ``merges.txt``
            (``tokenizer.json`` wins when both are there), or a ``tokenizer.json`` file.

        Returns:
          A tokenizer of kind ``"gpt2"``; ``<|endoftext|>`` is a special token, as in
          ``GPT2TokenizerFast`` (the text ``<|endoftext|>`` encodes to its id).

        Raises:
          ConfigError: the files are missing or unreadable (the message names them).
        """
        hf = _hf()
        path = Path(path).expanduser()
        tokenizer_json = path if path.is_file() else path / TOKENIZER_JSON
        try:
            if tokenizer_json.is_file():
                tok = hf.Tokenizer.from_file(str(tokenizer_json))
                source = str(tokenizer_json)
            elif all((path / f).is_file() for f in GPT2_FILES):
                vocab, merges = hf.models.BPE.read_file(*(str(path / f) for f in GPT2_FILES))
                tok = hf.Tokenizer(hf.models.BPE(vocab, merges, fuse_unk=False))
                tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
                tok.decoder = hf.decoders.ByteLevel()
                source = str(path)
            else:
                found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "nothing"
                raise ConfigError(
                    f"config.data.tokenizer_path: {path} holds no GPT-2 tokenizer (expected "
                    f"{TOKENIZER_JSON}, or {' and '.join(GPT2_FILES)}; found {found})"
                )
        except ConfigError:
            raise
        except Exception as e:  # tokenizers raises plain Exceptions for unreadable files
            raise ConfigError(
                f"config.data.tokenizer_path: cannot read the GPT-2 tokenizer in {path} "
                f"({type(e).__name__}: {e})"
            ) from None
        if tok.token_to_id(ENDOFTEXT) is not None:
            tok.add_special_tokens([hf.AddedToken(ENDOFTEXT, special=True, normalized=False)])
        return cls("gpt2", tok, source=source)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SubwordTokenizer:
        """Rebuilds a tokenizer from :meth:`to_json`'s record.

        Example:
          >>> tok = SubwordTokenizer.train_bpe("abc abd abe " * 9, 260)
          >>> SubwordTokenizer.from_json(tok.to_json()).vocab == tok.vocab
          True
        """
        hf = _hf()
        tok = hf.Tokenizer.from_str(json.dumps(data["tokenizer"]))
        return cls(data["kind"], tok, source=data.get("source", ""))

    # ------------------------------------------------------------------------------------
    # Using.

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str | bytes) -> np.ndarray:
        """Text or any bytes to int32 ids (bytes that are not UTF-8: their byte tokens).

        Args:
          text: a string, or bytes.

        Returns:
          The ids, ``[N]`` int32.
        """
        items: list[tuple[bool, str]] = []  # (text to encode, or byte stand-ins)
        for is_text, piece in _segments(_as_text(text)):
            if not is_text:
                items.append((False, piece))
            elif self._chunked:
                items.extend((True, chunk) for chunk in text_chunks(piece))
            else:
                items.append((True, piece))
        texts = [piece for is_text, piece in items if is_text]
        encoded = iter(self.tokenizer.encode_batch_fast(texts, add_special_tokens=False))
        out = []
        for is_text, piece in items:
            if is_text:
                out.append(np.asarray(next(encoded).ids, np.int32))
            else:  # U+DC80 + b stands for the byte b
                raw = np.frombuffer(piece.encode("utf-16-le", "surrogatepass"), np.uint16)
                out.append(self._byte_ids[raw.astype(np.int64) - 0xDC00])
        return np.concatenate(out) if out else np.zeros(0, np.int32)

    def token_bytes(self, ids) -> list[bytes]:
        """Each token's bytes (special tokens: their text as UTF-8)."""
        table = self._token_bytes
        return [table[i] for i in np.asarray(ids).tolist()]

    def decode_bytes(self, ids) -> bytes:
        """Ids back to the exact bytes they encode."""
        return b"".join(self.token_bytes(ids))

    def decode(self, ids) -> str:
        """Ids back to text (bytes that are not UTF-8 show as U+FFFD)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_json(self) -> dict[str, Any]:
        """jaxlm's record: ``{"kind", "vocab_size", "tokenizer": <tokenizers' own JSON>}``
        (and ``source``, the files a ``gpt2`` tokenizer was read from)."""
        record = {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "tokenizer": json.loads(self.tokenizer.to_str()),
        }
        if self.source:
            record["source"] = self.source
        return record

    def save_gpt2_files(self, folder: str | Path) -> list[Path]:
        """Writes GPT-2's ``vocab.json`` and ``merges.txt`` (BPE kinds), as GPT-2 ships them.

        Args:
          folder: where (created).

        Returns:
          The two files.

        Raises:
          ConfigError: the tokenizer is not a BPE.
        """
        if not isinstance(self.tokenizer.model, _hf().models.BPE):
            raise ConfigError(f"a {self.kind} tokenizer has no GPT-2 files (only BPE has them)")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [Path(f) for f in self.tokenizer.model.save(str(folder))]
