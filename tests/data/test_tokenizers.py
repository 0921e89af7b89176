"""jaxlm.data.tokenizers: char, byte and word tokenizers and their JSON."""

import numpy as np
import pytest

from jaxlm.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    WordTokenizer,
    load_tokenizer,
    save_tokenizer,
)


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


LINE_ENDS = [
    "the cat sat\nthe dog sat\nthe end\n",
    "a b\n\nc",  # an empty line, no newline at the end
    "a\r\nb\rc\n",  # \r and \r\n end lines too (the slow path)
    "x\x0by\fz\x85w\u2028v\n",  # line breaks that add no <eos>
    "<eos> a <unk> a\n",  # the specials written out
    "",
]


@pytest.mark.parametrize("text", LINE_ENDS)
def test_word_tokenizer_fast_split_and_one_pass_training_agree(text):
    tok = WordTokenizer.train(text)
    slow = []  # words(), spelled out line by line
    for line in text.splitlines(keepends=True):
        slow += line.split() + (["<eos>"] if line.endswith(("\n", "\r")) else [])
    assert tok.words(text) == slow
    assert tok.encode(text).tolist() == [tok.vocab.index(w) for w in slow]
    lines = text.splitlines(keepends=True)
    blocks = ["".join(lines[:1]), "".join(lines[1:])]
    one, ids = WordTokenizer.train_and_encode(blocks)
    assert one.vocab == tok.vocab
    assert ids.dtype == np.int32 and ids.tolist() == tok.encode(text).tolist()


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
