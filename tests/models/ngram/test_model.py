"""NGramModel: batch scoring, saving and loading, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from jaxlm.models import ngram
from tests.models.ngram.helpers import EOS, TINY, A, B, C, random_corpus, tiny_model


def test_batch_rows_score_like_separate_texts():
    v = 8
    model = ngram.build(random_corpus(4, 2000, v, 0), v, 4, eos_id=0)
    rows = random_corpus(5, 3 * 50, v, 0).reshape(3, 50)
    log_probs, orders = model.score(rows)
    for r in range(3):
        lp, o = model.score(rows[r])
        np.testing.assert_array_equal(log_probs[r], lp)
        np.testing.assert_array_equal(orders[r], o)
    assert orders.min() >= 1 and orders.max() == 4


def test_save_and_load_score_identically(tmp_path):
    model = tiny_model(vocab=["<eos>", "a", "b", "c"])
    model.save(tmp_path / "m.npz")
    back = ngram.NGramModel.load(tmp_path / "m.npz")
    test = np.array([A, B, C, EOS, C, A, EOS, B, B])
    np.testing.assert_array_equal(back.score(test)[0], model.score(test)[0])
    assert back.vocab == model.vocab and back.info == model.info


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 4\)"):
        tiny_model().score(np.array([1, 4]))
    with pytest.raises(ValueError, match="unknown n-gram method"):
        ngram.build(TINY, 4, 2, method="witten_bell")
    with pytest.raises(ValueError, match="outside"):
        ngram.build(TINY, 4, 2, method="kneser_ney", discount=1.5)
    with pytest.raises(ValueError, match="no 3-grams"):
        ngram.build(np.array([1, 0, 2, 0]), 4, 3, eos_id=0, add_bos=False)


def test_a_memory_mapped_model_scores_like_the_loaded_one(tmp_path):
    """``load(mmap=True)`` maps every table from the file (aligned, so searches copy nothing),
    the old ``np.savez`` files included; ``np.load`` still reads the file."""
    v = 30
    model = ngram.build(random_corpus(1, 4000, v, 0), v, 4, eos_id=0, cutoffs=(0, 1))
    model.save(tmp_path / "m.npz")
    test = random_corpus(2, 800, v, 0)
    loaded = ngram.NGramModel.load(tmp_path / "m.npz")
    mapped = ngram.NGramModel.load(tmp_path / "m.npz", mmap=True)
    tables = mapped.keys + mapped.log_probs + mapped.log_backoffs
    assert all(isinstance(t, np.memmap) and t.flags.aligned for t in tables)
    assert all(t.ctypes.data % 64 == 0 and not t.flags.writeable for t in tables)
    assert not any(isinstance(t, np.memmap) for t in loaded.keys)
    for m in (loaded, mapped):
        np.testing.assert_array_equal(m.score(test)[0], model.score(test)[0])
        np.testing.assert_array_equal(m.score(test)[1], model.score(test)[1])
        assert m.info == model.info and m.num_ngrams == model.num_ngrams
    np.testing.assert_array_equal(mapped.next_log_probs([3, 4]), model.next_log_probs([3, 4]))
    with np.load(tmp_path / "m.npz") as z:  # a plain .npz, as before
        np.testing.assert_array_equal(z["keys_3"], model.keys[2])
        np.savez(tmp_path / "old.npz", **{k: z[k] for k in z.files})  # the old writer's layout
    old = ngram.NGramModel.load(tmp_path / "old.npz", mmap=True)
    assert isinstance(old.keys[3], np.memmap)
    np.testing.assert_array_equal(old.score(test)[0], model.score(test)[0])
