"""Corpora through TFDS, tokenizers and batching."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxlm.config import base_config
from jaxlm.data import CorpusError, builders, load_corpus
from jaxlm.data.batching import eval_batches, make_streams, train_batch, windows_per_epoch
from jaxlm.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    WordTokenizer,
    load_tokenizer,
    save_tokenizer,
)

PTB = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ptb"


def data_config(**fields):
    c = base_config().data
    for key, value in fields.items():
        setattr(c, key, value)
    return c


# ---------------------------------------------------------------- tokenizers


def test_char_tokenizer_roundtrip_and_unknown():
    tok = CharTokenizer.train("hello world")
    assert tok.vocab_size == len(set("hello world")) + 1
    assert tok.decode(tok.encode("low hold")) == "low hold"
    ids = tok.encode("hz")
    assert ids[1] == tok.unk_id == 0 and ids[0] != 0


def test_byte_tokenizer_is_fixed_and_lossless():
    a, b = ByteTokenizer.train(b"abc"), ByteTokenizer.train(b"xyz")
    assert a.vocab_size == b.vocab_size == 258
    text = "naïve café ☕"
    ids = a.encode(text)
    assert ids.max() < 256 and len(ids) == len(text.encode("utf-8"))
    assert a.decode(ids) == text


def test_word_tokenizer_eos_unk_and_limits():
    text = "the cat sat\nthe dog sat\nthe end\n"
    tok = WordTokenizer.train(text)
    assert tok.vocab[:2] == ["<eos>", "<unk>"]
    assert tok.vocab[2:5] == ["the", "sat", "cat"]  # by frequency, ties alphabetically
    assert tok.encode("the cow sat\n").tolist() == [2, 1, 3, 0]
    assert WordTokenizer.train(text, min_count=2).vocab == ["<eos>", "<unk>", "the", "sat"]
    assert WordTokenizer.train(text, vocab_size=3).vocab == ["<eos>", "<unk>", "the"]


@pytest.mark.parametrize(
    "tok",
    [CharTokenizer.train("abcé"), ByteTokenizer(), WordTokenizer.train("a b\nb c\n")],
    ids=["char", "byte", "word"],
)
def test_tokenizer_json_roundtrip(tok, tmp_path):
    save_tokenizer(tok, tmp_path / "t.json")
    back = load_tokenizer(tmp_path / "t.json")
    assert back.kind == tok.kind and back.vocab == tok.vocab
    sample = "b a c\n" if tok.kind == "word" else "cabé"
    np.testing.assert_array_equal(back.encode(sample), tok.encode(sample))


# ---------------------------------------------------------------- corpora through TFDS


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


def test_tfds_roundtrip_keeps_exact_bytes(tmp_path):
    parts = {"train": b"line one\nline two\n\n", "validation": "é\n".encode(), "test": b"no nl"}
    builder = builders.prepare(parts, "roundtrip", str(tmp_path))
    for split, data in parts.items():
        assert builders.read_split(builder, split) == data
    files = {p.name.split("-")[1] for p in tmp_path.rglob("*.array_record-*")}
    assert files == {"train.array_record", "validation.array_record", "test.array_record"}


def test_tensorflow_is_neither_imported_nor_installed():
    load_corpus(data_config())
    assert "tensorflow" not in sys.modules
    result = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True)
    assert result.returncode != 0


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


# ---------------------------------------------------------------- bad input


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


# ---------------------------------------------------------------- batching


def test_train_batches_are_a_pure_function_of_seed_and_step():
    streams = make_streams(np.arange(1000), 4)
    a, b = train_batch(streams, 17, 10, seed=3), train_batch(streams, 17, 10, seed=3)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], a["inputs"] + 1)
    # After the first epoch the seed picks each epoch's window offset: the same (seed, step)
    # repeats, another seed shifts the windows.
    later = windows_per_epoch(streams, 10) + 5
    c, d = train_batch(streams, later, 10, seed=3), train_batch(streams, later, 10, seed=3)
    np.testing.assert_array_equal(c["inputs"], d["inputs"])
    others = [train_batch(streams, later, 10, seed=s)["inputs"] for s in range(4, 12)]
    assert any(not np.array_equal(c["inputs"], o) for o in others)


def test_windows_are_contiguous_within_an_epoch_and_reset_at_its_start():
    streams = make_streams(np.arange(1000), 4)  # 249 tokens per stream
    per_epoch = windows_per_epoch(streams, 10)
    assert per_epoch == 23
    prev = None
    for step in range(3 * per_epoch):
        batch = train_batch(streams, step, 10, seed=0)
        assert bool(batch["reset"]) == (step % per_epoch == 0)
        if step % per_epoch:
            np.testing.assert_array_equal(batch["inputs"][:, 0], prev["targets"][:, -1])
        prev = batch
    offsets = {
        int(train_batch(streams, e * per_epoch, 10, seed=0)["inputs"][0, 0]) for e in range(8)
    }
    assert len(offsets) > 1  # window boundaries move between epochs


def test_eval_batches_predict_every_token_once():
    tokens = np.arange(1, 104)
    streams = make_streams(tokens, 4, pad_to=8)
    seen = []
    for batch in eval_batches(streams, 8):
        seen.extend(batch["targets"][batch["mask"] > 0].tolist())
    assert sorted(seen) == tokens[1:].tolist()
