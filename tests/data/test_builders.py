"""jaxlm.data.builders: corpora as TFDS array_record datasets, read back without TensorFlow."""

import subprocess
import sys
from pathlib import Path

import pytest

from jaxlm.config import base_config
from jaxlm.data import builders, load_corpus


def test_tfds_roundtrip_keeps_exact_bytes(tmp_path):
    parts = {"train": b"line one\nline two\n\n", "validation": "é\n".encode(), "test": b"no nl"}
    builder = builders.prepare(parts, "roundtrip", str(tmp_path))
    for split, data in parts.items():
        assert builders.read_split(builder, split) == data
    files = {p.name.split("-")[1] for p in tmp_path.rglob("*.array_record-*")}
    assert files == {"train.array_record", "validation.array_record", "test.array_record"}


def test_tensorflow_is_neither_imported_nor_installed():
    load_corpus(base_config().data)
    assert "tensorflow" not in sys.modules
    result = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True)
    assert result.returncode != 0


def test_preparing_says_what_happens_and_not_downloading(tmp_path, capfd):
    parts = {"train": b"some text\n", "validation": b"more\n", "test": b"and more\n"}
    builders.prepare(parts, "fresh", str(tmp_path))
    out = capfd.readouterr().out
    assert "Preparing corpus fresh_" in out and "(24 bytes)" in out
    assert "Download" not in out and "download" not in out
    builders.prepare(parts, "fresh", str(tmp_path))  # prepared once: silent after that
    assert capfd.readouterr().out == ""


def test_a_prepared_corpus_is_found_without_preparing_it_again(tmp_path, monkeypatch):
    """``ensure_prepared`` prepares once, then finds the dataset by its ``dataset_info.json``
    (without TFDS); a folder without one (a preparation that died) is prepared again."""
    parts = {"train": b"one\ntwo\n", "validation": b"three\n", "test": b"four\n"}
    folder = builders.ensure_prepared(parts, "found", str(tmp_path))
    assert folder == builders.prepared_dir(parts, "found", str(tmp_path))
    assert (folder / "dataset_info.json").is_file()
    builder = builders.prepare(parts, "found", str(tmp_path))  # the folder TFDS reads
    assert Path(builder.data_dir) == folder
    assert builders.read_split(builder, "train") == parts["train"]

    def refuse(*args, **kwargs):
        raise AssertionError("prepared again")

    monkeypatch.setattr(builders, "prepare", refuse)
    assert builders.ensure_prepared(parts, "found", str(tmp_path)) == folder
    (folder / "dataset_info.json").unlink()
    with pytest.raises(AssertionError, match="prepared again"):
        builders.ensure_prepared(parts, "found", str(tmp_path))
