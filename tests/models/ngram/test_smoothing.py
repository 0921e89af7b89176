"""N-gram estimation: hand computations, a slow reference, properties, NLTK and PTB."""

from __future__ import annotations

import collections
import math
from fractions import Fraction

import numpy as np
import pytest

from jaxlm.models import ngram
from jaxlm.models.ngram.counts import pad
from tests.models.ngram import helpers
from tests.models.ngram.helpers import (
    EOS,
    HAS_NLTK,
    HAS_PTB,
    TINY,
    A,
    B,
    C,
    all_contexts,
    random_corpus,
    tiny_model,
)

# ------------------------------------------------------------------------------------------------
# A slow, dictionary-based reference of the same estimator, written from the definitions.


class Reference:
    """Interpolated (modified) KN / absolute / add-k straight from Chen and Goodman, with dicts."""

    def __init__(self, tokens, vocab_size, order, method, discount, k, cutoffs, eos_id, add_bos):
        self.v, self.n, self.method, self.k = vocab_size, order, method, k
        bos = vocab_size
        sents, cur = [], []
        for t in tokens.tolist():
            cur.append(t)
            if eos_id is not None and t == eos_id:
                sents.append(cur)
                cur = []
        if cur:
            sents.append(cur)
        self.raw = collections.Counter()
        for s in sents:
            seq = [bos, *s] if add_bos else s
            for i in range(len(seq)):
                for n in range(1, order + 1):
                    if i - n + 1 >= 0:
                        self.raw[tuple(seq[i - n + 1 : i + 1])] += 1
        left = collections.defaultdict(set)
        for g in self.raw:
            if len(g) > 1:
                left[g[1:]].add(g[0])
        self.adj = {}
        for g, c in self.raw.items():
            kn = method in ("modified_kneser_ney", "kneser_ney")
            if kn and len(g) < order and g[0] != bos:
                self.adj[g] = len(left[g])
            else:
                self.adj[g] = c
        self.adj[(bos,)] = 0
        self.cut = [0] + [cutoffs] * (order - 1) if isinstance(cutoffs, int) else list(cutoffs)
        self.disc = {}
        for n in range(1, order + 1):
            if method == "add_k":
                self.disc[n] = (0.0, 0.0, 0.0, 0.0)
                continue
            if discount is not None:
                d = discount if method == "modified_kneser_ney" else (discount,) * 3
            else:
                cc = collections.Counter(a for g, a in self.adj.items() if len(g) == n)
                try:
                    y = cc[1] / (cc[1] + 2 * cc[2])
                    if method == "modified_kneser_ney":
                        d = tuple(j - (j + 1) * y * cc[j + 1] / cc[j] for j in (1, 2, 3))
                    else:
                        d = (y,) * 3
                    assert all(0 <= dj <= j for j, dj in zip((1, 2, 3), d, strict=True))
                except (ZeroDivisionError, AssertionError):  # KenLM's fallback
                    d = (0.5, 1.0, 1.5) if method == "modified_kneser_ney" else (0.5,) * 3
            self.disc[n] = (0.0, *d)
        self.by_ctx = collections.defaultdict(list)
        for g in self.adj:
            self.by_ctx[g[:-1]].append(g)

    def prob(self, w: int, h: tuple[int, ...]) -> float:
        h = h[max(0, len(h) - (self.n - 1)) :] if self.n > 1 else ()
        n = len(h) + 1
        lower = 1.0 / self.v if n == 1 else None
        entries = self.by_ctx.get(h, [])
        extra = self.k * self.v if self.method == "add_k" else 0.0
        total = sum(self.adj[g] for g in entries) + extra
        if lower is None:
            lower = self.prob(w, h[1:])
        if total == 0:
            return lower
        gamma_num, own = extra, 0.0
        for g in entries:
            a = self.adj[g]
            kept = self.raw[g] > self.cut[n - 1]
            d = self.disc[n][min(a, 3)]
            gamma_num += d if kept else a
            if g[-1] == w and kept:
                own = (a - d) / total
        return own + gamma_num / total * lower


@pytest.mark.parametrize(
    "method,discount,cutoffs,eos,add_bos,order",
    [
        ("modified_kneser_ney", None, 0, 0, True, 3),
        ("modified_kneser_ney", None, (0, 1, 1), 0, True, 3),
        ("modified_kneser_ney", (0.4, 0.9, 1.3), 0, None, True, 4),
        ("modified_kneser_ney", (0.4, 0.9, 1.3), (0, 0, 1, 2), 0, False, 4),
        ("kneser_ney", None, 0, 0, True, 4),
        ("kneser_ney", 0.75, (0, 1), None, False, 2),
        ("absolute", None, (0, 0, 1), 0, True, 3),
        ("add_k", None, 0, 0, True, 3),
        ("add_k", None, (0, 1, 1), None, True, 3),
    ],
)
def test_matches_slow_reference(method, discount, cutoffs, eos, add_bos, order):
    v = 40
    toks = random_corpus(0, 2000, v, eos)
    kw = {"k": 0.3} if method == "add_k" else {"discount": discount}
    cut = [0] + [cutoffs] * (order - 1) if isinstance(cutoffs, int) else list(cutoffs)
    model = ngram.build(
        toks, v, order, method=method, cutoffs=cut, eos_id=eos, add_bos=add_bos, **kw
    )
    ref = Reference(toks, v, order, method, discount, kw.get("k", 1.0), cut, eos, add_bos)
    if discount is None and method != "add_k":
        assert len(model.info["discount_fallback_orders"]) < order  # most orders estimate
        np.testing.assert_allclose(
            model.info["discounts"], [ref.disc[n][1:] for n in range(1, order + 1)], rtol=1e-12
        )
    contexts = all_contexts(model)
    picks = np.random.default_rng(0).choice(len(contexts), min(150, len(contexts)), replace=False)
    contexts = [contexts[i] for i in sorted(picks)] + [(), (v,), (1, 2), (v, 3, 3), (5, 5, 5)]
    for h in contexts:
        ours = np.exp(model.next_log_probs(h))
        want = [ref.prob(w, tuple(h)) for w in range(v)]
        np.testing.assert_allclose(ours, want, rtol=1e-10, err_msg=f"context {h}")
    # scoring a held-out text agrees with the per-context distributions
    test = random_corpus(1, 300, v, eos)
    log_probs, _ = model.score(test)
    seq, hist, pos = pad(test, v, eos, add_bos)
    for i, t in enumerate(pos[:120].tolist()):
        h = tuple(seq[t - hist[t] : t].tolist())
        assert log_probs[i] == pytest.approx(math.log(ref.prob(int(seq[t]), h)), rel=1e-10)


def test_modified_kn_matches_hand_computation():
    """Trigram, modified KN, discounts D1, D2, D3+ = 1/2, 1, 3/2 (given, as KenLM's fallback).

    Sentences: "a b c", "a b", "b c", "a b c". Adjusted counts (raw at the top order and for
    n-grams starting with <s>, else the number of distinct left neighbours):
      unigrams: a 1 {<s>}, b 2 {a, <s>}, c 1 {b}, </s> 2 {c, b}; total 6
      bigrams: <s>a 3 (raw), <s>b 1 (raw), ab 1 {<s>}, bc 2 {a, <s>}, c</s> 1 {b}, b</s> 1 {a}
      trigrams (raw): <s>ab 3, abc 2, ab</s> 1, bc</s> 3, <s>bc 1
    """
    f = Fraction
    d = {1: f(1, 2), 2: f(1), 3: f(3, 2)}
    # unigrams: gamma = (d1 + d2 + d1 + d2) / 6 = 1/2, spread uniformly over V = 4
    g0 = (d[1] + d[2] + d[1] + d[2]) / 6
    p1 = {A: (1 - d[1]) / 6 + g0 / 4, B: (2 - d[2]) / 6 + g0 / 4,
          C: (1 - d[1]) / 6 + g0 / 4, EOS: (2 - d[2]) / 6 + g0 / 4}  # fmt: skip
    assert p1 == {A: f(5, 24), B: f(7, 24), C: f(5, 24), EOS: f(7, 24)}
    # bigram contexts
    g_s = (d[3] + d[1]) / 4  # <s>: <s>a 3, <s>b 1
    p_s = {A: (3 - d[3]) / 4 + g_s * p1[A], B: (1 - d[1]) / 4 + g_s * p1[B],
           C: g_s * p1[C], EOS: g_s * p1[EOS]}  # fmt: skip
    assert p_s == {A: f(23, 48), B: f(13, 48), C: f(5, 48), EOS: f(7, 48)}
    g_a = d[1] / 1  # a: ab 1
    p_a = {w: g_a * p1[w] for w in p1} | {B: (1 - d[1]) / 1 + g_a * p1[B]}
    g_b = (d[2] + d[1]) / 3  # b: bc 2, b</s> 1
    p_b = {w: g_b * p1[w] for w in p1} | {C: (2 - d[2]) / 3 + g_b * p1[C],
                                          EOS: (1 - d[1]) / 3 + g_b * p1[EOS]}  # fmt: skip
    assert (p_a[B], p_b[C], p_b[EOS]) == (f(31, 48), f(7, 16), f(5, 16))
    g_c = d[1] / 1  # c: c</s> 1
    p_c = {w: g_c * p1[w] for w in p1} | {EOS: (1 - d[1]) + g_c * p1[EOS]}
    # trigram contexts
    g_sa = d[3] / 3  # <s>a: <s>ab 3
    p_sa = {w: g_sa * p_a[w] for w in p1} | {B: (3 - d[3]) / 3 + g_sa * p_a[B]}
    g_ab = (d[2] + d[1]) / 3  # ab: abc 2, ab</s> 1
    p_ab = {w: g_ab * p_b[w] for w in p1} | {C: (2 - d[2]) / 3 + g_ab * p_b[C],
                                             EOS: (1 - d[1]) / 3 + g_ab * p_b[EOS]}  # fmt: skip
    g_bc = d[3] / 3  # bc: bc</s> 3
    p_bc = {w: g_bc * p_c[w] for w in p1} | {EOS: (3 - d[3]) / 3 + g_bc * p_c[EOS]}
    assert (p_sa[B], p_sa[C], p_ab[C], p_ab[EOS], p_bc[EOS]) == (
        f(79, 96), f(5, 96), f(53, 96), f(31, 96), f(79, 96))  # fmt: skip

    model = tiny_model()
    s = model.bos_id
    table = {(): p1, (s,): p_s, (A,): p_a, (B,): p_b, (C,): p_c, (s, A): p_sa, (A, B): p_ab,
             (B, C): p_bc}  # fmt: skip
    for h, dist in table.items():
        want = [float(dist[w]) for w in range(4)]
        np.testing.assert_allclose(np.exp(model.next_log_probs(h)), want, rtol=1e-14)
    # Scoring "a b c" then "c a": orders say which n-gram supplied each probability.
    log_probs, orders = model.score(np.array([A, B, C, EOS, C, A, EOS]))
    want = [p_s[A], p_sa[B], p_ab[C], p_bc[EOS], p_s[C], p_c[A], p_a[EOS]]
    np.testing.assert_allclose(np.exp(log_probs), [float(x) for x in want], rtol=1e-14)
    assert orders.tolist() == [2, 3, 3, 3, 1, 1, 1]


def test_discount_formulas_by_hand():
    # Chen and Goodman eq. 26 with n1..n4 = 10, 4, 2, 1: Y = 10/18.
    y = 10 / 18
    want = (1 - 2 * y * 4 / 10, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2)
    np.testing.assert_allclose(ngram.modified_kn_discounts([0, 10, 4, 2, 1]), want)
    assert ngram.kn_discount([0, 10, 4]) == pytest.approx(10 / 18)
    # The tiny corpus's unigram counts of counts are n1..n4 = 2, 2, 0, 0 (no n3), and its
    # trigram ones 2, 1, 2, 0, which give D2 = 2 - 3 (1/2) (2/1) < 0.
    with pytest.raises(ValueError, match="order 1.*n1..n4 = \\[2, 2, 0, 0\\]"):
        ngram.build(TINY, vocab_size=4, order=3, eos_id=EOS, discount_fallback=None)
    # By default such orders fall back to KenLM's 0.5, 1, 1.5, and say so.
    model = ngram.build(TINY, vocab_size=4, order=3, eos_id=EOS)
    assert model.info["discount_fallback_orders"] == [1, 3]
    assert model.info["discounts"][2] == [0.5, 1.0, 1.5]


@pytest.mark.parametrize("method", ngram.METHODS)
@pytest.mark.parametrize("eos,add_bos,order", [(0, True, 4), (None, True, 3), (0, False, 3)])
def test_every_context_sums_to_one(method, eos, add_bos, order):
    v = 9
    toks = random_corpus(2, 2000, v, eos)
    kw = {"k": 0.5} if method == "add_k" else {}
    for cutoffs in (None, (0, 1, 2)):
        model = ngram.build(
            toks, v, order, method=method, eos_id=eos, add_bos=add_bos, cutoffs=cutoffs, **kw
        )
        sums = [np.exp(model.next_log_probs(h)).sum() for h in all_contexts(model)]
        np.testing.assert_allclose(sums, 1.0, rtol=1e-12)


def test_cutoffs_drop_rare_ngrams():
    v = 9
    toks = random_corpus(3, 3000, v, 0)
    full = ngram.count_ngrams(toks, v, 3, eos_id=0)
    model = ngram.build(toks, v, 3, eos_id=0, cutoffs=(0, 1, 2))
    assert model.num_ngrams == [
        v + 1,
        int((full.counts[1] > 1).sum()),
        int((full.counts[2] > 2).sum()),
    ]
    with pytest.raises(ValueError, match="non-decreasing"):
        ngram.build(toks, v, 3, eos_id=0, cutoffs=(0, 2, 1))
    with pytest.raises(ValueError, match="unigrams"):
        ngram.build(toks, v, 3, eos_id=0, cutoffs=(1, 1, 1))


def test_add_k_unigram_is_textbook():
    toks = np.array([0, 1, 1, 2, 2, 2])
    model = ngram.build(toks, vocab_size=5, order=1, method="add_k", k=0.5)
    counts = np.array([1, 2, 3, 0, 0])
    np.testing.assert_allclose(np.exp(model.next_log_probs(())), (counts + 0.5) / (6 + 2.5))


@pytest.mark.skipif(not HAS_NLTK, reason="nltk is not installed (pip install jaxlm[ngram])")
@pytest.mark.parametrize("order,d", [(2, 0.1), (3, 0.75), (4, 0.5)])
def test_nltk_kneser_ney_interpolated_gives_the_same_probabilities(order, d):
    """NLTK's KneserNeyInterpolated is our plain interpolated KN with its conventions.

    NLTK discounts every order above 1 by the same ``d`` and does not discount unigrams (they are
    continuation counts over the number of bigram types), so ours gets ``discount=(0, d, ..., d)``.
    Both are given the same unpadded stream (``add_bos=False``, no sentence ends); it ends with a
    copy of its first tokens so every lower-order n-gram has a left neighbour (NLTK divides by zero
    otherwise).
    """
    from nltk.lm import KneserNeyInterpolated
    from nltk.util import everygrams

    v = 12
    s = random_corpus(10, 400, v, None)
    stream = np.concatenate([s, s[: order - 1]])
    words = [f"w{t}" for t in stream.tolist()]
    nltk_lm = KneserNeyInterpolated(order, discount=d)
    nltk_lm.fit([list(everygrams(words, max_len=order))], vocabulary_text=words)
    ours = ngram.build(stream, v, order, method="kneser_ney", discount=(0.0,) + (d,) * (order - 1),
                       add_bos=False)  # fmt: skip
    rng = np.random.default_rng(11)
    contexts = [()] + [tuple(r) for r in ours.ngram_words(order - 1).tolist()]
    contexts += [tuple(rng.integers(0, v, order - 1).tolist()) for _ in range(20)]  # some unseen
    worst = 0.0
    for h in contexts:
        mine = np.exp(ours.next_log_probs(h))
        theirs = [nltk_lm.score(f"w{w}", [f"w{c}" for c in h]) for w in range(v)]
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-15, err_msg=f"context {h}")
        worst = max(worst, float(np.abs(mine - theirs).max()))
    assert worst < 1e-14


@pytest.fixture(scope="module")
def ptb_5gram():
    return helpers.ptb_5gram()


@pytest.mark.skipif(not HAS_PTB, reason="../shared/data/ptb is absent")
def test_ptb_5gram_modified_kn_matches_mikolov(ptb_5gram):
    """Mikolov (2012, table 4.1): 5-gram interpolated modified KN, no cut-offs: test ppl 141.2."""
    model, ids, tok = ptb_5gram
    assert tok.vocab_size == 10000 and len(ids["test"]) == 82430
    assert model.num_ngrams[0] == 10001 and model.info["discount_fallback_orders"] == []
    test_ppl = model.perplexity(ids["test"])
    assert test_ppl == pytest.approx(141.2, rel=0.005)
    assert model.perplexity(ids["valid"]) == pytest.approx(148.0, rel=0.005)
