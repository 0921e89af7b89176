"""jaxlm.data.words: the words of any tokenizer's tokens, and scores gathered per word."""

from __future__ import annotations

import numpy as np
import pytest

from jaxlm.data.subword import SubwordTokenizer
from jaxlm.data.tokenizers import ByteTokenizer, CharTokenizer, WordTokenizer
from jaxlm.data.words import aggregate, count_words, token_words

TEXT = "The cat sat.\nA naïve 🙂 cat\r\n\n  sat on the mat \n"


@pytest.fixture(scope="module")
def bpe() -> SubwordTokenizer:
    return SubwordTokenizer.train_bpe(TEXT * 30, vocab_size=300)


def test_count_words_is_the_word_tokenizers_count():
    rng = np.random.default_rng(0)
    alphabet = list("ab \n\r\t\x0b\x0c\x1c\x85\u2028\u00a0é🙂")
    for _ in range(300):
        text = "".join(rng.choice(alphabet, int(rng.integers(0, 40))))
        assert count_words(text) == len(WordTokenizer([]).words(text)), repr(text)
        assert count_words(text.encode()) == count_words(text)


def test_every_tokenizer_maps_its_tokens_to_the_same_words(bpe):
    words = WordTokenizer([]).words(TEXT)
    tokenizers = [CharTokenizer.train(TEXT), ByteTokenizer(), bpe]
    for tok in tokenizers:
        ids = tok.encode(TEXT)
        w = token_words(tok, ids)
        assert w.text == TEXT.encode() and len(w) == count_words(TEXT) == len(words)
        assert list(w.words) == words  # "<eos>" for each line end, as the word tokenizer has
        # Each token's first non-blank byte lies in its word; blank tokens: in the next word.
        for (start, end), word in zip(w.token_spans, w.token_word, strict=True):
            piece = w.text[start:end]
            first = start + len(piece) - len(piece.lstrip(b" \t"))
            span = w.spans[word]
            assert span[0] <= first < span[1] or (first == end and span[0] >= end), tok.kind
        # The words' sums add up to the tokens'; a word is NaN on average only when no token
        # is its own (a BPE's "\r\n\n" is one token over two line ends).
        scores = np.random.default_rng(1).random(len(ids))
        assert np.isclose(aggregate(scores, w, "sum").sum(), scores.sum())
        owned = np.bincount(w.token_word, minlength=len(w)) > 0
        assert (np.isnan(aggregate(scores, w, "mean")) == ~owned).all()
        assert owned.all() or tok.kind == "bpe"
    # The word tokenizer: one token a word.
    tok = WordTokenizer.train(TEXT)
    ids = tok.encode(TEXT)
    w = token_words(tok, ids)
    assert w.token_word.tolist() == list(range(len(ids))) and list(w.words) == words


def test_a_character_split_across_byte_tokens_goes_with_its_word():
    tok = ByteTokenizer()
    w = token_words(tok, tok.encode("ok 🙂!\n"))  # the emoji is four byte tokens
    assert w.words == ("ok", "🙂!", "<eos>")
    assert w.token_word.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 2]


def test_aggregations_by_hand():
    tok = CharTokenizer.train("ab cd\n")
    w = token_words(tok, tok.encode("ab cd\n"))  # a b | " " c d | \n
    scores = np.array([1.0, 3.0, 0.5, 2.0, -1.0, 4.0])
    assert aggregate(scores, w, "sum").tolist() == [4.0, 1.5, 4.0]
    assert aggregate(scores, w, "mean").tolist() == [2.0, 0.5, 4.0]
    assert aggregate(scores, w, "max").tolist() == [3.0, 2.0, 4.0]
    # Several scores per token (an attribution per embedding feature).
    per_feature = np.stack([scores, 2 * scores], axis=1)
    assert aggregate(per_feature, w, "sum").tolist() == [[4.0, 8.0], [1.5, 3.0], [4.0, 8.0]]
    with pytest.raises(ValueError, match="how: 'median'"):
        aggregate(scores, w, "median")
    with pytest.raises(ValueError, match="scores: 5 values for 6 tokens"):
        aggregate(scores[:5], w)


def test_a_token_over_two_line_ends_leaves_the_second_without_tokens(bpe):
    ids = bpe.encode("cat\n\n\nsat")
    w = token_words(bpe, ids)
    assert w.words == ("cat", "<eos>", "<eos>", "<eos>", "sat")
    sums = aggregate(np.ones(len(ids)), w, "sum")
    means = aggregate(np.ones(len(ids)), w, "mean")
    assert sums.sum() == len(ids)
    assert np.isnan(means).sum() == (sums == 0).sum() > 0  # "ĊĊ" is one token here
