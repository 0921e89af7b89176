"""TFDS builders for text corpora, written to array_record and read back without TensorFlow.

Each split is stored as a sequence of byte records (lines, each keeping its trailing newline), in
order (``disable_shuffling``), so joining a split's records gives back its exact bytes. Preparing
is done once per corpus content; later runs read the array_record files through
``builder.as_data_source()``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import tensorflow_datasets as tfds

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


class TextCorpus(tfds.core.GeneratorBasedBuilder):
    """A text corpus given as bytes per split, stored as ordered line records.

    The builder config's name is a digest of the content, so each distinct corpus (and split)
    is prepared once under ``data_dir/text_corpus/<name>/``.
    """

    VERSION = tfds.core.Version("1.0.0")

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


def _digest(parts: dict[str, bytes], label: str) -> str:
    h = hashlib.sha256()
    for name in SPLITS:
        h.update(name.encode() + b"\0" + hashlib.sha256(parts[name]).digest())
    slug = "".join(ch if ch.isalnum() else "_" for ch in label.lower())[:40].strip("_")
    return f"{slug or 'corpus'}_{h.hexdigest()[:12]}"


class _QuietTfds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "custom data configuration" not in record.getMessage()


def prepare(parts: dict[str, bytes], label: str, data_dir: str | None = None) -> TextCorpus:
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
    logging.getLogger("absl").addFilter(_QuietTfds())
    tfds.disable_progress_bar()
    builder = TextCorpus(
        splits=parts,
        name=_digest(parts, label),
        data_dir=data_dir or default_data_dir(),
        file_format="array_record",
    )
    builder.download_and_prepare()
    return builder


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> bytes:
    """Reads a prepared split back as bytes through the TFDS array_record data source."""
    source = builder.as_data_source()[split]
    return b"".join(record["text"] for record in source.__getitems__(range(len(source))))
