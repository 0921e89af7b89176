"""Counting under a memory budget: the same model as in memory, bit for bit, in many chunks."""

from __future__ import annotations

import re

import numpy as np
import pytest

from jaxlm.config import load_config, validate
from jaxlm.errors import ConfigError
from jaxlm.models import ngram
from jaxlm.models.ngram import arpa, chunked
from jaxlm.models.ngram.spec import NGramLM
from tests.models.ngram import helpers
from tests.models.ngram.helpers import HAS_PTB, random_corpus


def assert_same_model(got: ngram.NGramModel, want: ngram.NGramModel) -> None:
    """Equal tables, log-probabilities and back-offs to the last bit, and the same info."""
    assert (got.order, got.vocab_size, got.eos_id, got.add_bos) == (
        want.order,
        want.vocab_size,
        want.eos_id,
        want.add_bos,
    )
    for n in range(want.order):
        np.testing.assert_array_equal(got.keys[n], want.keys[n])
        assert got.log_probs[n].tobytes() == want.log_probs[n].tobytes(), f"order {n + 1}"
    for n in range(want.order - 1):
        assert got.log_backoffs[n].tobytes() == want.log_backoffs[n].tobytes(), f"order {n + 1}"
    assert {k: v for k, v in got.info.items() if k != "memory"} == want.info


CASES = [
    # (vocab, eos, order, method, cutoffs, add_bos)
    (30, 0, 4, "modified_kneser_ney", None, True),
    (30, None, 3, "modified_kneser_ney", None, True),  # one stream: contexts cross the cuts
    (50, 0, 5, "kneser_ney", (0, 1, 2), True),  # cut-offs renumber the rows
    (20, 0, 3, "add_k", None, True),
    (40, 0, 4, "absolute", (0, 0, 1), False),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[3]}-{c[2]}" for c in CASES])
def test_chunked_equals_in_memory_bit_for_bit(case, tmp_path):
    vocab, eos, order, method, cutoffs, add_bos = case
    tokens = random_corpus(vocab + order, 40_000, vocab, eos)
    kw = dict(eos_id=eos, method=method, cutoffs=cutoffs, add_bos=add_bos)
    want = ngram.build(tokens, vocab, order, **kw)
    got = ngram.build(tokens, vocab, order, memory_limit=800_000, tmp_dir=tmp_path, **kw)
    per_chunk = (800_000 - 64 * (vocab + 1)) // chunked.TOKEN_BYTES
    assert got.info["memory"] == {"limit_bytes": 800_000, "chunks": -(-40_000 // per_chunk)}
    assert got.info["memory"]["chunks"] >= 8
    assert_same_model(got, want)
    assert all(isinstance(k, np.memmap) for k in got.keys[1:])  # the tables stay on disk
    assert list(tmp_path.iterdir()) == []  # the spilled chunks are gone
    ids = random_corpus(99, 500, vocab, eos)
    assert got.nll(ids) == want.nll(ids)


@pytest.mark.parametrize("spare", [10**9, 20_000], ids=["all-in-memory", "some-spilled"])
def test_one_chunk_keeps_its_columns_in_memory_while_they_fit(spare, tmp_path):
    # one chunk: the budget's share not needed by the working arrays holds the columns; with a
    # small share the later columns spill to files mid-build (a held column moves to its file)
    vocab, order, num = 40, 5, 40_000
    tokens = random_corpus(11, num, vocab, 0)
    work = chunked.TOKEN_BYTES * num + 2 * chunked.ENTRY_BYTES * (vocab + 1)
    budget = 64 * (vocab + 1) + work + spare
    got = ngram.build(tokens, vocab, order, eos_id=0, memory_limit=budget, tmp_dir=tmp_path)
    assert got.info["memory"] == {"limit_bytes": budget, "chunks": 1}
    assert_same_model(got, ngram.build(tokens, vocab, order, eos_id=0))
    on_disk = [isinstance(k, np.memmap) for k in got.keys[1:]]
    assert any(on_disk) == (spare < work), on_disk
    assert list(tmp_path.iterdir()) == []


def test_budget_too_small_names_the_smallest_that_works(tmp_path):
    tokens = random_corpus(3, 20_000, 30, 0)
    with pytest.raises(ConfigError, match="too small") as e:
        ngram.build(tokens, 30, 3, eos_id=0, memory_limit=100_000, tmp_dir=tmp_path)
    need = int(re.search(r"at least (\d+) bytes", str(e.value)).group(1))
    assert need > 100_000
    got = ngram.build(tokens, 30, 3, eos_id=0, memory_limit=need, tmp_dir=tmp_path)
    assert got.info["memory"]["chunks"] == -(-20_000 // chunked.MIN_CHUNK)
    assert_same_model(got, ngram.build(tokens, 30, 3, eos_id=0))


def test_a_chunk_without_ngrams_of_an_order(tmp_path):
    # the third chunk holds only one-token sentences: no bigram but <s> <eos>, no trigrams
    rng = random_corpus(7, 3 * chunked.MIN_CHUNK, 20, 0)
    tokens = np.concatenate([rng[:-1], [0], np.zeros(chunked.MIN_CHUNK, np.int32), rng])
    budget = 64 * 21 + chunked.MIN_CHUNK * chunked.TOKEN_BYTES  # chunks of MIN_CHUNK tokens
    got = ngram.build(tokens, 20, 4, eos_id=0, memory_limit=budget, tmp_dir=tmp_path)
    assert got.info["memory"]["chunks"] == 7
    assert_same_model(got, ngram.build(tokens, 20, 4, eos_id=0))


def test_parse_memory_limit():
    ram = chunked.physical_memory()
    assert chunked.parse_memory_limit(None) is None
    assert chunked.parse_memory_limit("") is None
    assert chunked.parse_memory_limit("4GB") == 4 * 10**9
    assert chunked.parse_memory_limit("1.5GiB") == 3 * 2**29
    assert chunked.parse_memory_limit("512M") == 2**29
    assert chunked.parse_memory_limit(4_000_000_000) == 4 * 10**9
    assert chunked.parse_memory_limit("4000") == 4000
    assert chunked.parse_memory_limit(0.25) == int(0.25 * ram)
    assert chunked.parse_memory_limit("0.5") == int(0.5 * ram)
    for bad in ("4XB", "-1GB", 0, -5, 1.5, 0.0, True, "GB", [1]):
        with pytest.raises(ValueError, match=re.escape(f"memory_limit={bad!r}: expected")):
            chunked.parse_memory_limit(bad)


def test_config_validates_memory_limit():
    c = load_config("ngram:smoke")
    assert c.model.memory_limit is None and c.model.tmp_dir == ""
    for good in ("4GB", 0.25, 4_000_000_000):
        c.model.memory_limit = good  # a locked config takes every kind
        validate(c)
    c.model.memory_limit = "4XB"
    with pytest.raises(ConfigError, match=r"config\.model\.memory_limit: expected .*'4XB'"):
        validate(c)
    with pytest.raises(ValueError, match=r"config\.model\.memory_limit='4XB'"):
        NGramLM(vocab_size=5, memory_limit="4XB")


def test_fit_spills_to_the_scratch_folder_and_cleans_up(tmp_path):
    tokens = random_corpus(5, 20_000, 20, 0)
    lm = NGramLM(vocab_size=20, order=3, memory_limit="1MB")
    model = lm.fit(tokens, eos_id=0, scratch=tmp_path)
    assert model.info["memory"]["chunks"] > 1
    assert list(tmp_path.iterdir()) == []
    want = NGramLM(vocab_size=20, order=3).fit(tokens, eos_id=0)
    assert_same_model(model, want)
    # the memory-mapped tables save and write as ARPA like in-memory ones
    model.save(tmp_path / "m.npz")
    assert_same_model(ngram.NGramModel.load(tmp_path / "m.npz"), want)
    arpa.write_arpa(model, tmp_path / "got.arpa")
    arpa.write_arpa(want, tmp_path / "want.arpa")
    assert (tmp_path / "got.arpa").read_bytes() == (tmp_path / "want.arpa").read_bytes()


@pytest.mark.skipif(not HAS_PTB, reason="needs ../shared/data/ptb")
def test_ptb_5gram_in_many_chunks_equals_in_memory(tmp_path):
    ids, tok = helpers.ptb_ids()
    train = ids["train"]
    want = ngram.build(train, tok.vocab_size, 5, eos_id=tok.eos_id)
    got = ngram.build(
        train, tok.vocab_size, 5, eos_id=tok.eos_id, memory_limit="16MB", tmp_dir=tmp_path
    )
    assert got.info["memory"]["chunks"] >= 8
    assert_same_model(got, want)
    assert got.nll(ids["test"]) == want.nll(ids["test"])
