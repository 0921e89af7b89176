"""TFDS builders for text corpora, written to array_record and read back without TensorFlow.

Each split is stored as a sequence of byte records (lines, each keeping its trailing newline), in
order (``disable_shuffling``), so joining a split's records gives back its exact bytes. Preparing
is done once per corpus content (:func:`prepare`, :func:`ensure_prepared`); the array_record
files are read back with :func:`read_split` or ``builder.as_data_source()``, or by anyone with
``tfds.builder_from_directory``.

TFDS itself (about 0.35 s to import) is imported only to prepare or read a dataset:
:func:`ensure_prepared` finds a prepared one by its folder.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.errors import CorpusError

SPLITS = ("train", "validation", "test")
_SPLIT_PATTERNS = {"train": "train", "validation": "valid", "test": "test"}


def default_data_dir() -> str:
    """``$JAXLM_DATA_DIR`` if set, else ``~/.cache/jaxlm/tfds``."""
    return os.environ.get("JAXLM_DATA_DIR") or os.path.expanduser("~/.cache/jaxlm/tfds")


def builtin_text() -> bytes:
    """The built-in corpus: CPython's ``pydoc_data.topics`` (English prose about Python).

    Returns:
      The topics in sorted-key order, separated by blank lines, UTF-8 encoded (about 0.47 MB).
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip("\n") for key in sorted(topics)).encode("utf-8") + b"\n"


def split_bytes(data: bytes, fractions: Sequence[float], source: str) -> dict[str, bytes]:
    """Cuts one text into contiguous train / validation / test parts by fractions of its bytes.

    Cut points are moved forward to the next UTF-8 character boundary, so on ASCII text the
    train part is exactly the first ``int(len * fractions[0])`` bytes.

    Args:
      data: the whole corpus.
      fractions: three non-negative fractions summing to 1.
      source: the corpus's name, for error messages.

    Returns:
      A dict from split name to its bytes.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise CorpusError(
            f"config.data.split: expected three non-negative fractions summing to 1 "
            f"(train, validation, test), got {tuple(fractions)}"
        )
    n = len(data)
    cuts = [0]
    for frac in (fractions[0], fractions[0] + fractions[1]):
        cut = max(int(n * frac), cuts[-1])
        while cut < n and (data[cut] & 0xC0) == 0x80:  # inside a multi-byte character
            cut += 1
        cuts.append(cut)
    cuts.append(n)
    parts = {name: data[a:b] for name, a, b in zip(SPLITS, cuts[:-1], cuts[1:], strict=True)}
    for name, part in parts.items():
        if not part.strip():
            raise CorpusError(
                f"{source}: the {name} split is empty with fractions {tuple(fractions)} "
                f"({n} bytes in all); give it a larger fraction or a larger corpus"
            )
    return parts


def _records(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    records = [line + b"\n" for line in lines[:-1]]
    if lines[-1]:
        records.append(lines[-1])
    return records


def read_file(path: Path) -> bytes:
    """Reads a corpus file, with a clear error when it is missing or empty."""
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    data = path.read_bytes()
    if not data.strip():
        raise CorpusError(f"corpus file is empty: {path}")
    return data


def find_split_files(folder: Path) -> dict[str, Path]:
    """Finds one ``*train*``, ``*valid*`` and ``*test*`` text file in a folder (the PTB layout).

    Args:
      folder: a directory such as ``../shared/data/ptb`` holding ``ptb.train.txt`` etc.

    Returns:
      A dict from split name to file path.
    """
    if not folder.is_dir():
        raise CorpusError(f"corpus folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    found = {}
    for split, pattern in _SPLIT_PATTERNS.items():
        matches = [p for p in files if pattern in p.name.lower()]
        if len(matches) != 1:
            raise CorpusError(
                f"corpus folder {folder}: expected exactly one file with {pattern!r} in its name "
                f"(like ptb.{pattern}.txt), found {[p.name for p in matches] or 'none'}"
            )
        found[split] = matches[0]
    return found


VERSION = "1.0.0"  # the TextCorpus builder's version: its datasets' folder name


@functools.cache
def _builder_class() -> type:
    """The TFDS builder class (TFDS imported on first use)."""
    import tensorflow_datasets as tfds

    class TextCorpus(tfds.core.GeneratorBasedBuilder):
        """A text corpus given as bytes per split, stored as ordered line records.

        The builder config's name is a digest of the content, so each distinct corpus (and split)
        is prepared once under ``data_dir/text_corpus/<name>/``.
        """

        VERSION = tfds.core.Version(VERSION)

        def __init__(self, *, splits: dict[str, bytes], name: str, **kwargs):
            self._split_data = splits
            super().__init__(config=tfds.core.BuilderConfig(name=name), **kwargs)

        def _info(self) -> tfds.core.DatasetInfo:
            return tfds.core.DatasetInfo(
                builder=self,
                description="Text lines in corpus order; join a split's records to get its bytes.",
                features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {name: self._generate_examples(data) for name, data in self._split_data.items()}

        def _generate_examples(self, data: bytes) -> Iterator[tuple[int, dict[str, bytes]]]:
            for i, record in enumerate(_records(data)):
                yield i, {"text": record}

        # TFDS announces "Downloading and preparing dataset ..." for every builder; nothing is
        # downloaded here, so a first-time user is told what does happen instead.
        def _log_download_bytes(self) -> None:
            size = sum(len(part) for part in self._split_data.values())
            name = self.builder_config.name
            print(f"Preparing corpus {name} ({size:,} bytes) in {self.data_dir} ...")

        def _log_download_done(self) -> None:
            print(f"Prepared corpus {self.builder_config.name}; later runs read it from there.")

    return TextCorpus


def __getattr__(name: str) -> Any:
    if name == "TextCorpus":  # builders.TextCorpus: the class, TFDS imported on first use
        return _builder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _digest(parts: dict[str, bytes], label: str) -> str:
    h = hashlib.sha256()
    for name in SPLITS:
        h.update(name.encode() + b"\0" + hashlib.sha256(parts[name]).digest())
    slug = "".join(ch if ch.isalnum() else "_" for ch in label.lower())[:40].strip("_")
    return f"{slug or 'corpus'}_{h.hexdigest()[:12]}"


class _QuietTfds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "custom data configuration" not in record.getMessage()


def prepare(parts: dict[str, bytes], label: str, data_dir: str | None = None) -> Any:
    """Prepares (once) and returns the TFDS builder holding these splits.

    Args:
      parts: bytes of each split.
      label: a readable name for the corpus (used in the builder config name).
      data_dir: TFDS data directory; :func:`default_data_dir` when empty.

    Returns:
      A prepared builder; read it with ``builder.as_data_source()``.

    Example:
      >>> import tempfile
      >>> parts = split_bytes(builtin_text(), (0.9, 0.05, 0.05), "builtin")
      >>> builder = prepare(parts, "builtin", tempfile.mkdtemp())  # doctest: +ELLIPSIS
      Preparing corpus builtin_... (466,195 bytes) in ...
      Prepared corpus builtin_...; later runs read it from there.
      >>> read_split(builder, "validation") == parts["validation"]
      True
    """
    import tensorflow_datasets as tfds

    logging.getLogger("absl").addFilter(_QuietTfds())
    tfds.disable_progress_bar()
    builder = _builder_class()(
        splits=parts,
        name=_digest(parts, label),
        data_dir=data_dir or default_data_dir(),
        file_format="array_record",
    )
    builder.download_and_prepare()
    return builder


def prepared_dir(parts: dict[str, bytes], label: str, data_dir: str | None = None) -> Path:
    """The folder that :func:`prepare` writes these splits' dataset to (TFDS's layout:
    ``<data_dir>/text_corpus/<name>/<version>``, the name a digest of the content).

    Example:
      >>> parts = {"train": b"a\\n", "validation": b"b\\n", "test": b"c\\n"}
      >>> prepared_dir(parts, "Tiny", "/data").as_posix()
      '/data/text_corpus/tiny_621d2780bafc/1.0.0'
    """
    return Path(data_dir or default_data_dir()) / "text_corpus" / _digest(parts, label) / VERSION


def ensure_prepared(parts: dict[str, bytes], label: str, data_dir: str | None = None) -> Path:
    """:func:`prepare`, unless the dataset is already there; returns its folder.

    What it adds to ``download_and_prepare``: a prepared dataset is found without importing
    TFDS, by the ``dataset_info.json`` that TFDS writes in its final folder (it prepares in a
    temporary one and renames it when done, so a half-prepared dataset has none).

    Args:
      parts: bytes of each split.
      label: a readable name for the corpus.
      data_dir: TFDS data directory; :func:`default_data_dir` when empty.

    Returns:
      The dataset's folder (:func:`prepared_dir`).

    Example:
      >>> import tempfile
      >>> parts = {"train": b"a\\n", "validation": b"b\\n", "test": b"c\\n"}
      >>> where = tempfile.mkdtemp()
      >>> ensure_prepared(parts, "tiny", where).name  # doctest: +ELLIPSIS
      Preparing corpus tiny_... (6 bytes) in ...
      Prepared corpus tiny_...; later runs read it from there.
      '1.0.0'
      >>> ensure_prepared(parts, "tiny", where) == prepared_dir(parts, "tiny", where)
      True
    """
    folder = prepared_dir(parts, label, data_dir)
    if not (folder / "dataset_info.json").is_file():
        prepare(parts, label, data_dir)
    return folder


def read_split(builder: Any, split: str) -> bytes:
    """Reads a prepared split back as bytes through the TFDS array_record data source.

    The records are read raw from the split's files and their text taken out of the
    serialized ``tf.train.Example`` s all at once (:func:`_example_texts`; TFDS's own decoding,
    one generic call per record, took most of the time of reading PTB); if any record has
    another layout, the split is decoded by TFDS.
    """
    text = _example_texts(_raw_records(builder, split))
    if text is None:
        source = builder.as_data_source()[split]
        return b"".join(record["text"] for record in source.__getitems__(range(len(source))))
    return text


def _raw_records(builder: Any, split: str) -> list[bytes]:
    """A split's serialized records, in order, read from its array_record files in C++ (the
    data source's reads go through Python per record)."""
    try:
        from array_record.python.array_record_module import ArrayRecordReader

        records: list[bytes] = []
        for part in builder.info.splits[split].file_instructions:
            reader = ArrayRecordReader(part.filename, "readahead_buffer_size:0")
            try:
                records += reader.read(range(part.skip, part.skip + part.take))
            finally:
                reader.close()
        return records
    except (ImportError, AttributeError, TypeError):
        import tensorflow_datasets as tfds

        raw = builder.as_data_source(deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        return raw[split].__getitems__(range(len(raw[split])))


def _example_texts(records: list[bytes]) -> bytes | None:
    """The ``text`` bytes of every serialized ``tf.train.Example``, joined, found for all
    records at once with numpy; None when any record has another layout.

    The layout TFDS writes for the one bytes feature: ``Example.features`` (field 1) >
    ``Features.feature`` map entry (field 1) > key ``"text"`` (field 1) and value (field 2) >
    ``Feature.bytes_list`` (field 1) > ``BytesList.value`` (field 1), each length-delimited and
    each ending where the record ends.

    Example:
      >>> rec = bytes([10, 15, 10, 13, 10, 4]) + b"text" + bytes([18, 5, 10, 3, 10, 1]) + b"a"
      >>> _example_texts([rec, rec]), _example_texts([rec[:-1]])
      (b'aa', None)
    """
    if not records:
        return b""
    size = np.array([len(r) for r in records], np.int64)
    end = np.cumsum(size)
    pos = end - size
    buf = np.frombuffer(b"".join(records) + bytes(16), np.uint8)

    def field(tag: int) -> bool:
        """Steps over one length-delimited field's tag and length; True while every one is
        ``tag`` and ends where its record ends."""
        nonlocal pos
        if not (buf[pos] == tag).all():
            return False
        length, after = _varints(buf, pos + 1)
        if length is None or not (after + length == end).all():
            return False
        pos = after
        return True

    if not (field(0x0A) and field(0x0A)):  # Example.features, Features.feature
        return None
    key = np.frombuffer(b"\n\x04text\x12", np.uint8)
    if not (buf[pos[:, None] + np.arange(len(key))] == key).all():
        return None
    pos = pos + len(key) - 1  # the value's tag (0x12, field 2)
    if not (field(0x12) and field(0x0A) and field(0x0A)):  # value, bytes_list, value
        return None
    # Each text runs from its offset to its record's end: slices, not a mask over the buffer
    # (a fresh process pays for every page of a buffer-sized array it touches).
    starts = (pos - (end - size)).tolist()
    return b"".join([r[s:] for r, s in zip(records, starts, strict=True)])


def _varints(buf: np.ndarray, at: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Protobuf varints (up to 5 bytes) starting at each index: values and the index after."""
    chunk = buf[at[:, None] + np.arange(5)].astype(np.int64)
    last = np.argmax(chunk < 0x80, axis=1)
    if not (chunk[np.arange(len(at)), last] < 0x80).all():
        return None, at
    used = np.arange(5)[None, :] <= last[:, None]
    value = (np.where(used, chunk & 0x7F, 0) << (7 * np.arange(5))[None, :]).sum(axis=1)
    return value, at + last + 1
