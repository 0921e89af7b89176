"""jaxlm.data.load_corpus: the corpora a config names, split, tokenized, with clear errors."""

from pathlib import Path

import numpy as np
import pytest

from jaxlm.config import base_config
from jaxlm.data import CorpusError, builders, load_corpus

PTB = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ptb"


def data_config(**fields):
    c = base_config().data
    for key, value in fields.items():
        setattr(c, key, value)
    return c


def test_builtin_corpus_is_deterministic_and_split():
    corpus = load_corpus(data_config())
    again = load_corpus(data_config())
    np.testing.assert_array_equal(corpus.validation, again.validation)
    total = len(corpus.train) + len(corpus.validation) + len(corpus.test)
    assert abs(len(corpus.train) / total - 0.9) < 0.01
    assert abs(len(corpus.validation) / total - 0.05) < 0.01
    text = builders.builtin_text().decode()
    assert len(text) == total
    assert corpus.tokenizer.decode(corpus.test) == text[-len(corpus.test) :]
    assert corpus.tokenizer.decode(corpus.train[:22]) == 'The "assert" statement'


def test_one_file_split_by_fractions(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("abcdefghij" * 100)
    c = load_corpus(data_config(corpus="text_files", path=str(path), split=(0.8, 0.1, 0.1)))
    assert (len(c.train), len(c.validation), len(c.test)) == (800, 100, 100)


def test_ptb_layout_folder(tmp_path):
    for split, text in [("train", "a b c\nb c\n"), ("valid", "a b\n"), ("test", "c d\n")]:
        (tmp_path / f"ptb.{split}.txt").write_text(text)
    c = load_corpus(data_config(corpus="text_files", path=str(tmp_path), tokenizer="word"))
    assert c.tokenizer.vocab_size == 5  # <eos> <unk> b c a
    assert c.test.tolist() == [3, 1, 0]  # "d" is unseen in training


@pytest.mark.skipif(not PTB.is_dir(), reason="../shared/data/ptb not present")
def test_ptb_word_level_counts():
    c = load_corpus(data_config(corpus="text_files", path=str(PTB), tokenizer="word"))
    assert c.tokenizer.vocab_size == 10_000
    assert (len(c.train), len(c.validation), len(c.test)) == (929_589, 73_760, 82_430)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(CorpusError, match=f"corpus file not found: {missing}"):
        load_corpus(data_config(corpus="text_files", path=str(missing)))


def test_empty_file_is_named(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(CorpusError, match=f"corpus file is empty: {empty}"):
        load_corpus(data_config(corpus="text_files", path=str(empty)))


@pytest.mark.parametrize("tokenizer", ["char", "word"])
def test_non_utf8_is_named_with_offset(tmp_path, tokenizer):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(("hello world\n" * 50).encode() + "café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{bad}: bytes at offset 603 are not valid UTF-8"):
        load_corpus(data_config(corpus="text_files", path=str(bad), tokenizer=tokenizer))


def test_byte_tokenizer_accepts_any_bytes(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(("hello world\n" * 50).encode() + "café\n".encode("latin-1"))
    c = load_corpus(data_config(corpus="text_files", path=str(bad), tokenizer="byte"))
    assert 0xE9 in c.test.tolist()


def test_folder_without_a_split_is_named(tmp_path):
    (tmp_path / "ptb.train.txt").write_text("a\n")
    (tmp_path / "ptb.test.txt").write_text("a\n")
    with pytest.raises(CorpusError, match="expected exactly one file with 'valid'"):
        load_corpus(data_config(corpus="text_files", path=str(tmp_path)))


def test_bad_split_fractions():
    with pytest.raises(CorpusError, match="config.data.split"):
        load_corpus(data_config(split=(0.9, 0.2, 0.1)))


BOM = "\ufeff"  # U+FEFF, which editors on Windows write first as the bytes EF BB BF


@pytest.mark.parametrize("tokenizer", ["char", "word"])
def test_a_leading_byte_order_mark_is_not_text(tmp_path, tokenizer):
    text = "The cat sat on the mat.\nThe dog ate the hat.\n" * 20
    splits = {"train": text, "valid": text[:88], "test": text[88:176]}

    def load(path):
        config = data_config(corpus="text_files", path=str(path), tokenizer=tokenizer)
        config.data_dir = str(tmp_path / "tfds")
        return load_corpus(config)

    for name, mark in (("plain", ""), ("marked", BOM)):
        (tmp_path / f"{name}.txt").write_text(mark + text, encoding="utf-8")
        (tmp_path / name).mkdir()
        for split, part in splits.items():  # each file of a folder corpus has its own mark
            (tmp_path / name / f"ptb.{split}.txt").write_text(mark + part, encoding="utf-8")
    assert (tmp_path / "marked.txt").read_bytes().startswith(b"\xef\xbb\xbfThe cat")
    for plain, marked in (("plain.txt", "marked.txt"), ("plain", "marked")):
        a, b = load(tmp_path / plain), load(tmp_path / marked)
        assert b.tokenizer.to_json() == a.tokenizer.to_json()
        assert BOM not in "".join(b.tokenizer.vocab)
        for split in builders.SPLITS:
            np.testing.assert_array_equal(b.split(split), a.split(split))
    # Inside a text, U+FEFF is a character like any other (a zero-width no-break space).
    inner = tmp_path / "inner.txt"
    inner.write_text(text.replace("dog", BOM + "dog", 1), encoding="utf-8")
    vocab = load(inner).tokenizer.vocab
    assert (BOM in vocab) if tokenizer == "char" else (BOM + "dog" in vocab)
    only = tmp_path / "only_a_mark.txt"
    only.write_text(BOM + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=f"corpus file is empty: {only}"):
        load(only)


def test_byte_tokenizer_keeps_a_byte_order_mark(tmp_path):
    path = tmp_path / "marked.txt"
    path.write_bytes(b"\xef\xbb\xbf" + b"The cat sat on the mat.\n" * 40)
    config = data_config(corpus="text_files", path=str(path), tokenizer="byte")
    config.data_dir = str(tmp_path / "tfds")
    assert load_corpus(config).train[:4].tolist() == [0xEF, 0xBB, 0xBF, ord("T")]


def test_subword_tokenizers_take_the_files_bytes_and_say_how_long_training_took(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    data = ("hello world\n" * 50).encode() + "café\n".encode("latin-1") + b"\xef\xbb\xbf end\n"
    bad.write_bytes(data)
    for kind, size in (("bpe", 300), ("unigram", 300)):
        c = load_corpus(
            data_config(corpus="text_files", path=str(bad), tokenizer=kind, vocab_size=size)
        )
        assert f"Trained a {kind} tokenizer of" in capsys.readouterr().out
        parts = [c.tokenizer.decode_bytes(c.split(s)) for s in ("train", "validation", "test")]
        assert b"".join(parts) == data  # not UTF-8, a byte-order mark inside: all kept
        assert c.counts["test"]["bytes"] == len(parts[2])


def test_counts_are_the_split_texts_words_and_bytes():
    c = load_corpus(data_config())
    text = builders.builtin_text().decode()
    test = text[-len(c.test) :]
    assert c.counts["test"] == {
        "bytes": len(test.encode()),
        "words": len(test.split()) + test.count("\n"),
    }


@pytest.mark.skipif(not PTB.is_dir(), reason="../shared/data/ptb not present")
def test_ptb_words_are_the_word_level_token_counts():
    c = load_corpus(data_config(corpus="text_files", path=str(PTB), tokenizer="char"))
    words = {split: c.counts[split]["words"] for split in ("train", "validation", "test")}
    assert words == {"train": 929_589, "validation": 73_760, "test": 82_430}
    assert c.counts["validation"]["bytes"] == 399_782
