"""jaxlm.data.subword: byte-level BPE and Unigram round-trip any bytes; GPT-2's files give
GPT2TokenizerFast's ids; the JSON record rebuilds the same tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from jaxlm.data import builders
from jaxlm.data.subword import ENDOFTEXT, SubwordTokenizer, byte_alphabet, text_chunks
from jaxlm.data.tokenizers import load_tokenizer, save_tokenizer, train_tokenizer
from jaxlm.errors import ConfigError

PTB = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ptb"
needs_ptb = pytest.mark.skipif(not PTB.is_dir(), reason="../shared/data/ptb not present")
EMOJI_CJK = (
    "Emoji 🙂🙃 👨‍👩‍👧 🇯🇵, CJK 日本語のテキスト 中文 한국어, naïve café — “quotes” …\n"
    "  two spaces,\ttabs,\r\nCRLF, trailing   \n\n\n<|endoftext|> and 'll 've don't N N\n"
)


@pytest.fixture(scope="module")
def builtin() -> bytes:
    return builders.builtin_text()


@pytest.fixture(scope="module")
def bpe(builtin) -> SubwordTokenizer:
    return SubwordTokenizer.train_bpe(builtin, vocab_size=1000)


@pytest.fixture(scope="module")
def unigram(builtin) -> SubwordTokenizer:
    return SubwordTokenizer.train_unigram(builtin[:100_000], vocab_size=600)


def _random_bytes(rng: np.random.Generator) -> bytes:
    """Random bytes of several kinds: uniform, mostly ASCII, and valid UTF-8 with junk."""
    n = int(rng.integers(0, 400))
    kind = rng.integers(3)
    if kind == 0:
        return rng.integers(0, 256, n).astype(np.uint8).tobytes()
    if kind == 1:  # text-like, with whitespace runs and some high bytes
        alphabet = np.frombuffer(b"ab c\n\r\t  '.sN\x00\x80\xc3\xa9\xff", np.uint8)
        return alphabet[rng.integers(0, len(alphabet), n)].tobytes()
    chars = [chr(int(c)) for c in rng.integers(1, 0x2FFFF, n // 4 + 1) if not 0xD800 <= c < 0xE000]
    data = "".join(chars).encode()
    cut = int(rng.integers(0, len(data) + 1))  # a character cut in half, then valid again
    return data[:cut] + bytes(rng.integers(0, 256, 3).astype(np.uint8)) + data[cut:]


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_any_byte_string_round_trips_exactly(kind, request):
    tok = request.getfixturevalue(kind)
    rng = np.random.default_rng(17)
    cases = [_random_bytes(rng) for _ in range(300)]
    cases += [b"", b"\xff", b"\xed\xa0\x80", b"\xef\xbb\xbfBOM", b"a\x00b", ENDOFTEXT.encode()]
    cases += [EMOJI_CJK.encode(), "🙂".encode()[:3], bytes(range(256)), bytes(range(256))[::-1]]
    for data in cases:
        ids = tok.encode(data)
        assert ids.dtype == np.int32 and (ids < tok.vocab_size).all() and (ids >= 0).all()
        assert tok.decode_bytes(ids) == data, data
    # Text and its UTF-8 bytes are the same tokens.
    assert tok.encode(EMOJI_CJK).tolist() == tok.encode(EMOJI_CJK.encode()).tolist()
    assert tok.decode(tok.encode(EMOJI_CJK)) == EMOJI_CJK


@needs_ptb
def test_the_corpora_round_trip_exactly(bpe, builtin):
    for data in [builtin, *((PTB / f"ptb.{s}.txt").read_bytes() for s in ("valid", "test"))]:
        ids = bpe.encode(data)
        assert bpe.decode_bytes(ids) == data
        assert len(ids) < len(data) / 2  # subwords, not bytes


@needs_ptb
def test_encoding_in_pieces_gives_the_ids_of_one_call(bpe, builtin):
    for data in (builtin, (PTB / "ptb.valid.txt").read_bytes()):
        text = data.decode()
        whole = bpe.tokenizer.encode(text, add_special_tokens=False).ids
        assert len(list(text_chunks(text))) > 3
        assert bpe.encode(text).tolist() == whole
    # Small pieces of random text with every kind of blank run: the same ids again.
    rng = np.random.default_rng(3)
    alphabet = list("ab c\n\r\t  \n'.sN1\u00a0\u3000é")
    for _ in range(200):
        text = "".join(rng.choice(alphabet, int(rng.integers(0, 60))))
        pieces = [
            bpe.tokenizer.encode(p, add_special_tokens=False).ids for p in text_chunks(text, 3)
        ]
        assert sum(pieces, []) == bpe.tokenizer.encode(text, add_special_tokens=False).ids, text
    # Cut only after a line end between non-blank characters, or before " word".
    text = "a\n b\n\nc\nd \n  e\nf\t\n g"
    pieces = list(text_chunks(text, size=1))
    assert "".join(pieces) == text and pieces == ["a\n", " b\n\nc\n", "d \n  e\n", "f\t\n", " g"]


def test_training_is_deterministic_and_the_vocabulary_is_byte_level(bpe, builtin):
    again = SubwordTokenizer.train_bpe(builtin, vocab_size=1000)
    assert again.to_json() == bpe.to_json()
    assert bpe.vocab_size == 1000 and bpe.vocab[0] == ENDOFTEXT and bpe.eos_id == 0
    assert set(byte_alphabet()) <= set(bpe.vocab)
    assert bpe.train_seconds > 0


def test_json_record_rebuilds_the_same_tokenizer(bpe, unigram, tmp_path):
    for tok in (bpe, unigram):
        save_tokenizer(tok, tmp_path / "t.json")
        record = json.loads((tmp_path / "t.json").read_text())  # JSON, never a pickle
        assert record["kind"] == tok.kind and record["vocab_size"] == tok.vocab_size
        assert (
            record["tokenizer"]["model"]["type"] == {"bpe": "BPE", "unigram": "Unigram"}[tok.kind]
        )
        back = load_tokenizer(tmp_path / "t.json")
        assert back.kind == tok.kind and back.vocab == tok.vocab
        assert back.encode(EMOJI_CJK).tolist() == tok.encode(EMOJI_CJK).tolist()


def test_vocabulary_sizes_below_the_bytes_are_refused():
    with pytest.raises(ConfigError, match=r"config.data.vocab_size: 100; a bpe .* at least 257"):
        train_tokenizer("bpe", "abc", vocab_size=100)
    with pytest.raises(ConfigError, match=r"config.data.vocab_size: 0; a unigram .* 258"):
        train_tokenizer("unigram", "abc", vocab_size=0)


def test_gpt2_folders_that_are_not_there_are_named(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer_path: empty"):
        train_tokenizer("gpt2", b"", tokenizer_path="")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(ConfigError, match=rf"{tmp_path} holds no GPT-2 tokenizer .*vocab.json"):
        SubwordTokenizer.from_gpt2(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nnot a merge line at all\n")
    (tmp_path / "vocab.json").write_text("[1, 2")
    with pytest.raises(ConfigError, match=f"cannot read the GPT-2 tokenizer in {tmp_path}"):
        SubwordTokenizer.from_gpt2(tmp_path)


@needs_ptb
def test_gpt2_files_give_the_ids_of_gpt2_tokenizer_fast(bpe, builtin, tmp_path):
    """GPT-2's own files cannot be downloaded here: GPT-2-format vocab.json and merges.txt of a
    byte-level BPE trained on the built-in corpus stand for them, read by both sides."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    bpe.save_gpt2_files(tmp_path)
    assert (tmp_path / "merges.txt").read_text().startswith("#version: 0.2\n")
    ours = SubwordTokenizer.from_gpt2(tmp_path)
    hf = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path))
    texts = {
        "ptb valid": (PTB / "ptb.valid.txt").read_text(),
        "builtin": builtin.decode(),
        "emoji and CJK": EMOJI_CJK,
    }
    for name, text in texts.items():
        expected = hf(text)["input_ids"]
        got = ours.encode(text).tolist()
        assert got == expected, name
        assert hf.decode(expected) == ours.decode(got) == text, name
    assert ours.kind == "gpt2" and ours.vocab == bpe.vocab
    # The same tokenizer saved as tokenizer.json reads back to the same ids.
    hf.save_pretrained(str(tmp_path / "saved"))
    again = SubwordTokenizer.from_gpt2(tmp_path / "saved" / "tokenizer.json")
    assert again.encode(EMOJI_CJK).tolist() == hf(EMOJI_CJK)["input_ids"]
