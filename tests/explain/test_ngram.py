"""jaxlm.explain.ngram: the back-off path of each token, against a hand computation from a tiny
ARPA file, and the counts behind it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxlm.explain import Target, attribute, explain_ngram
from jaxlm.models.ngram import arpa, build, count_ngrams

ARPA = """\\data\\
ngram 1=4
ngram 2=4
ngram 3=2

\\1-grams:
-0.5\t</s>
-99\t<s>\t-0.3
-0.4\ta\t-0.2
-0.6\tb\t-0.1

\\2-grams:
-0.2\t<s> a\t-0.15
-0.3\ta b\t-0.05
-0.25\tb </s>
-0.35\ta a

\\3-grams:
-0.1\t<s> a b
-0.05\ta b </s>

\\end\\
"""
LN10 = math.log(10.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("arpa") / "tiny.arpa"
    path.write_text(ARPA)
    return arpa.read_arpa(path, vocab=["</s>", "a", "b"], eos_id=0)


def test_each_token_s_path_equals_the_hand_computation(model):
    tokens = [1, 2, 2, 1, 1, 0]  # a b b a a </s>
    got = explain_ngram(model, tokens)
    # log10 p by hand from the file: found n-grams, back-off weights of the contexts missed
    expected = [
        (2, [(2, True, -0.2)]),  # <s> a
        (3, [(3, True, -0.1)]),  # <s> a b
        (1, [(3, False, -0.05), (2, False, -0.1), (1, True, -0.6)]),  # a b | b
        (1, [(3, False, 0.0), (2, False, -0.1), (1, True, -0.4)]),  # b b | a: "b b" not stored
        (2, [(3, False, 0.0), (2, True, -0.35)]),  # b a | a: "b a" not stored, "a a" found
        (1, [(3, False, 0.0), (2, False, -0.2), (1, True, -0.5)]),  # a a | </s>: no back-off
    ]
    for tok, (order, path) in zip(got, expected, strict=True):
        assert tok.order == order and tok.backoffs == len(path) - 1
        steps = [(s.order, s.found, s.log_prob if s.found else s.log_backoff) for s in tok.path]
        assert [(o, f) for o, f, _ in steps] == [(o, f) for o, f, _ in path]
        np.testing.assert_allclose([v for *_, v in steps], [v * LN10 for *_, v in path], atol=1e-12)
        assert tok.log_prob == pytest.approx(sum(v for *_, v in path) * LN10, abs=1e-12)
    log_probs, orders = model.score(np.array(tokens))
    np.testing.assert_allclose([t.log_prob for t in got], log_probs, atol=1e-12)
    assert [t.order for t in got] == orders.tolist()
    assert got[2].summary(3) == f"3-gram {10**-0.75:.3g}, from order 1 after two back-offs"


def test_attribute_gives_diagnostics_paths_and_occlusion(model):
    tokens = np.array([1, 2, 2, 1, 1, 0])
    e = attribute(model, None, tokens, Target(4, token=0), method="occlusion")
    assert e.model_kind == "ngram" and len(e.ngram) == 6
    (t,) = e.targets
    assert t.score == pytest.approx(-0.7 * LN10)
    # without token 4 the context is empty: the unigram; token 3 is past the back-off already
    np.testing.assert_allclose(t.attributions["occlusion"], [0, 0, 0, 0, -0.2 * LN10], atol=1e-12)
    d = e.diagnostics
    assert d.surprisal_bits[4] == pytest.approx(0.7 * LN10 / math.log(2))
    p = np.exp(model.next_log_probs([1, 1]))
    assert d.top_ids[4].tolist()[:3] == np.argsort(-p, kind="stable")[:3].tolist()
    with pytest.raises(ValueError, match="need gradients; an n-gram model has none"):
        attribute(model, None, tokens, method="ig")


def test_the_counts_behind_each_step():
    train = np.array([1, 2, 0, 1, 1, 0, 2, 0])  # a b </s> a a </s> b </s>
    model = build(train, vocab_size=3, order=3, eos_id=0, method="kneser_ney")
    counts = count_ngrams(train, 3, 3, eos_id=0)
    (tok,) = explain_ngram(model, [1], counts)  # <s> a: seen twice after <s> (3 sentences)
    assert tok.path[-1].order == 2 and (tok.path[-1].count, tok.path[-1].context_count) == (2, 3)
    b_after_aa = explain_ngram(model, [1, 1, 2], counts)[2]  # a a | b
    steps = [(s.order, s.found, s.count, s.context_count) for s in b_after_aa.path]
    assert steps == [(3, False, 0, 1), (2, True, 1, 3)]  # "a a b" never seen; "a b" once in 3 "a"
