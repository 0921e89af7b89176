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
