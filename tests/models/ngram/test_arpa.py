"""ARPA files: the hand-computed numbers, exact round trips, escapes, SRILM back-off, KenLM."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from jaxlm.checkpoints import checksums
from jaxlm.models import ngram
from jaxlm.models.ngram import arpa
from tests.models.ngram import helpers
from tests.models.ngram.helpers import HAS_KENLM, HAS_PTB, PTB, TINY, random_corpus, tiny_model


def read_arpa_lines(path) -> dict[tuple[str, ...], tuple[float, float | None]]:
    """An ARPA file as {words: (log10 prob, log10 back-off or None)}, parsed naively."""
    out = {}
    for line in Path(path).read_text().splitlines():
        f = line.split("\t")
        if len(f) >= 2 and not line.startswith("ngram"):
            out[tuple(f[1].split())] = (float(f[0]), float(f[2]) if len(f) > 2 else None)
    return out


def reference_write_arpa(model, path, vocab=None) -> None:
    """The writer before the vectorised one (one ``repr`` and one join per n-gram), kept to
    check that the new one writes the same bytes."""
    names = np.array(
        arpa.arpa_names(vocab if vocab is not None else model.vocab, model.vocab_size,
                        model.eos_id),
        dtype=object,
    )  # fmt: skip

    def fmt(values):
        out = np.where(np.isneginf(values), -99.0, values)
        return [repr(x) if x != 0 else "0" for x in out.tolist()]

    m = model.vocab_size + 1
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\\data\\\n")
        for n, count in enumerate(model.num_ngrams, 1):
            f.write(f"ngram {n}={count}\n")
        words = names
        for n in range(1, model.order + 1):
            key = model.keys[n - 1]
            if n > 1:
                words = words[key // m] + " " + names[key % m]
            f.write(f"\n\\{n}-grams:\n")
            probs = fmt(model.log_probs[n - 1] / arpa.LN10)
            if n < model.order:
                backs = fmt(model.log_backoffs[n - 1] / arpa.LN10)
                lines = map("\t".join, zip(probs, words.tolist(), backs, strict=True))
            else:
                lines = map("\t".join, zip(probs, words.tolist(), strict=True))
            f.write("\n".join(lines))
            f.write("\n")
        f.write("\n\\end\\\n")


def assert_same_bytes_as_the_reference(model, tmp_path, vocab=None) -> None:
    arpa.write_arpa(model, tmp_path / "new.arpa", vocab)
    reference_write_arpa(model, tmp_path / "old.arpa", vocab)
    assert (tmp_path / "new.arpa").read_bytes() == (tmp_path / "old.arpa").read_bytes()


def test_values_are_written_as_repr_writes_them():
    """Arrow's cast where it agrees with repr (fixed-notation fractions), rewritten into repr's
    exponent form below 1e-4 (subnormals included), repr itself elsewhere."""
    rng = np.random.default_rng(0)
    x = np.concatenate([
        -rng.random(20_000) * 7,
        rng.standard_normal(20_000) * 10.0 ** rng.uniform(-8, 18, 20_000),
        rng.standard_normal(20_000) * 10.0 ** rng.uniform(-320, -4, 20_000),  # exponent forms
        [0.0, -0.0, -np.inf, np.inf, np.nan, 1.0, -99.0, 1e-4, 9.999999999999999e-05, 1e9,
         999999999.5, 1e16, 1.5e-7, 2e-6, -1e-5, 3.5e-10, -0.30103, 2.0**-60, 5e-324, 1 / 3],
    ])  # fmt: skip
    text = arpa._column(x).to_pylist()
    want = ["-99.0" if v == -np.inf else "0" if v == 0 else repr(v) for v in x.tolist()]
    assert text == want


def test_float32_values_are_the_shortest_that_read_back_to_the_float32():
    """``precision="float32"``: each text reads back (as float32) to the value rounded to
    float32, and has no more significant digits than numpy's shortest float32 repr."""
    rng = np.random.default_rng(1)
    x = np.concatenate([
        -rng.random(20_000) * 7,
        rng.standard_normal(20_000) * 10.0 ** rng.uniform(-44, 38, 20_000),
        [0.0, -0.0, -np.inf, -99.0, 1.0, 1e-4, 1.5e-7, -0.30103, 1 / 3, 2.0**-140],
    ])  # fmt: skip
    text = arpa._column(x, "float32").to_pylist()
    want = np.where(np.isneginf(x), -99.0, x).astype(np.float32)
    np.testing.assert_array_equal(np.array(text, dtype=np.float32), want)
    assert text[-10:-5] == ["0", "0", "-99", "-99", "1"]

    def digits(s: str) -> int:
        return len(s.lower().split("e")[0].replace("-", "").replace(".", "").strip("0"))

    assert all(digits(t) <= digits(str(w)) for t, w in zip(text, want, strict=True))


def test_a_float32_file_is_smaller_and_scores_within_float32(tmp_path):
    v = 40
    vocab = ["<eos>"] + [f"w{i}" for i in range(1, v)]
    model = ngram.build(random_corpus(6, 3000, v, 0), v, 4, eos_id=0, vocab=vocab)
    digest = arpa.write_arpa(model, tmp_path / "f32.arpa", precision="float32")
    assert digest == checksums.file_digest(tmp_path / "f32.arpa")
    arpa.write_arpa(model, tmp_path / "f64.arpa")
    size32, size64 = ((tmp_path / f).stat().st_size for f in ("f32.arpa", "f64.arpa"))
    assert size32 < 0.8 * size64
    back = arpa.read_arpa(tmp_path / "f32.arpa", vocab=vocab, eos_id=0)
    for n in range(model.order):
        np.testing.assert_array_equal(back.keys[n], model.keys[n])
        np.testing.assert_array_equal(
            np.maximum(back.log_probs[n] / arpa.LN10, -99).astype(np.float32),  # <s>: -inf
            np.maximum(model.log_probs[n] / arpa.LN10, -99).astype(np.float32),
        )
    test = random_corpus(7, 500, v, 0)
    np.testing.assert_allclose(back.score(test)[0], model.score(test)[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="precision='float16'"):
        arpa.write_arpa(model, tmp_path / "x.arpa", precision="float16")


def test_arpa_file_holds_the_hand_computed_numbers(tmp_path):
    model = tiny_model(vocab=["<eos>", "a", "b", "c"])
    arpa.write_arpa(model, tmp_path / "tiny.arpa")
    text = (tmp_path / "tiny.arpa").read_text()
    assert text.startswith("\\data\\\nngram 1=5\nngram 2=6\nngram 3=5\n\n\\1-grams:\n")
    assert text.endswith("\n\\end\\\n")
    got = read_arpa_lines(tmp_path / "tiny.arpa")
    lg = math.log10
    want = {
        ("<s>",): (-99.0, lg(1 / 2)),
        ("a",): (lg(5 / 24), lg(1 / 2)),
        ("</s>",): (lg(7 / 24), 0.0),
        ("<s>", "a"): (lg(23 / 48), lg(1 / 2)),
        ("a", "b"): (lg(31 / 48), lg(1 / 2)),
        ("b", "c"): (lg(7 / 16), lg(1 / 2)),
        ("<s>", "a", "b"): (lg(79 / 96), None),
        ("a", "b", "c"): (lg(53 / 96), None),
    }
    for words, (p, b) in want.items():
        assert got[words][0] == pytest.approx(p, rel=1e-14, abs=1e-15), words
        assert got[words][1] == pytest.approx(b, abs=1e-15) if b is not None else True, words
    assert ("c", "a") not in got and len(got) == 16


@pytest.mark.parametrize("method", ngram.METHODS)
@pytest.mark.parametrize("cutoffs", [None, (0, 1, 2)])
def test_arpa_round_trip_scores_identically(tmp_path, method, cutoffs):
    v = 40
    vocab = ["<eos>"] + [f"w{i}" for i in range(1, v)]
    model = ngram.build(
        random_corpus(6, 3000, v, 0), v, 4, method=method, eos_id=0, cutoffs=cutoffs, vocab=vocab
    )
    arpa.write_arpa(model, tmp_path / "m.arpa")
    assert_same_bytes_as_the_reference(model, tmp_path)
    test = random_corpus(7, 500, v, 0)
    want_lp, want_orders = model.score(test)
    for back in (arpa.read_arpa(tmp_path / "m.arpa", vocab=vocab, eos_id=0),
                 arpa.read_arpa(tmp_path / "m.arpa")):  # fmt: skip
        assert back.num_ngrams == model.num_ngrams and back.eos_id == 0 and back.add_bos
        for n in range(model.order):
            np.testing.assert_array_equal(back.keys[n], model.keys[n])
        lp, orders = back.score(test)
        np.testing.assert_allclose(lp, want_lp, rtol=1e-14, atol=1e-14)
        np.testing.assert_array_equal(orders, want_orders)


@pytest.mark.parametrize("cutoffs", [(0, 0, 5), (0, 5, 5)])
def test_arpa_round_trip_with_empty_orders(tmp_path, cutoffs):
    """Cut-offs can empty the top orders (``ngram 3=0``); such a file reads back, scoring alike."""
    vocab = ["<eos>", "a", "b", "c"]
    model = tiny_model(cutoffs=cutoffs, vocab=vocab)
    assert model.num_ngrams[-1] == 0
    arpa.write_arpa(model, tmp_path / "e.arpa")
    assert "ngram 3=0\n" in (tmp_path / "e.arpa").read_text()
    assert_same_bytes_as_the_reference(model, tmp_path)
    for back in (arpa.read_arpa(tmp_path / "e.arpa", vocab=vocab, eos_id=0),
                 arpa.read_arpa(tmp_path / "e.arpa")):  # fmt: skip
        assert back.order == 3 and back.num_ngrams == model.num_ngrams
        for n in range(model.order):
            np.testing.assert_array_equal(back.keys[n], model.keys[n])
            np.testing.assert_allclose(back.log_probs[n], model.log_probs[n], rtol=1e-14)
        assert back.keys[2].shape == (0,) and back.keys[2].dtype == np.int64
        assert back.log_probs[2].shape == (0,)
        lp, orders = back.score(TINY)
        np.testing.assert_allclose(lp, model.score(TINY)[0], rtol=1e-14, atol=1e-14)
        np.testing.assert_array_equal(orders, model.score(TINY)[1])
    (tmp_path / "bad.arpa").write_text(
        "\\data\\\nngram 1=2\nngram 2=0\nngram 3=1\n\n\\1-grams:\n-0.3\t</s>\t0\n-99\t<s>\t0\n"
        "\n\\2-grams:\n\n\\3-grams:\n-0.1\t<s> </s> </s>\n\n\\end\\\n"
    )
    with pytest.raises(ValueError, match="has no entry for its context"):
        arpa.read_arpa(tmp_path / "bad.arpa", vocab=["<eos>"], eos_id=0)


def test_arpa_escapes_whitespace_tokens(tmp_path):
    vocab = ["<unk>", " ", "\n", "a", "<U+0020>x"]
    toks = np.array([3, 1, 3, 2, 4, 3, 1, 1, 3, 2, 3, 4])
    model = ngram.build(toks, 5, 3, method="kneser_ney", vocab=vocab)  # one stream, no </s>
    arpa.write_arpa(model, tmp_path / "c.arpa")
    assert_same_bytes_as_the_reference(model, tmp_path)
    assert_same_bytes_as_the_reference(ngram.build(toks, 5, 3), tmp_path)  # ids as names
    text = (tmp_path / "c.arpa").read_text()
    assert "\t<U+0020>\t" in text and "\t<U+000A>\t" in text
    back = arpa.read_arpa(tmp_path / "c.arpa", vocab=vocab)
    assert back.eos_id is None
    np.testing.assert_allclose(back.score(toks)[0], model.score(toks)[0], rtol=1e-14)
    with pytest.raises(ValueError, match="ARPA name"):
        arpa.arpa_names(["a b", "a<U+0020>b"], 2, None)


def test_read_hand_written_arpa_backs_off_like_srilm(tmp_path):
    (tmp_path / "h.arpa").write_text(
        "\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n-1.0\t</s>\n-99\t<s>\t-0.30103\n"
        "-0.5\ta\t-0.2\n-0.8 b\n\n\\2-grams:\n-0.1\t<s> a\n-0.4\ta b\n\n\\end\\\n"
    )
    model = arpa.read_arpa(tmp_path / "h.arpa", vocab=["<eos>", "a", "b"], eos_id=0)
    lp, orders = model.score(np.array([1, 2, 0, 2, 1, 0]))  # "a b", "b a"
    want = [-0.1, -0.4, -1.0, -0.30103 - 0.8, 0.0 - 0.5, -0.2 - 1.0]
    np.testing.assert_allclose(lp / math.log(10), want, rtol=1e-14)
    assert orders.tolist() == [2, 2, 1, 1, 1, 1]
    assert_same_bytes_as_the_reference(model, tmp_path)  # read back: integers, -99, 0
    with pytest.raises(ValueError, match="'c' is not in the vocabulary"):
        (tmp_path / "bad.arpa").write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1\tc\n\\end\\\n")
        arpa.read_arpa(tmp_path / "bad.arpa", vocab=["a"])


@pytest.mark.skipif(not HAS_KENLM, reason="kenlm is not installed (pip install jaxlm[ngram])")
@pytest.mark.parametrize("precision", arpa.PRECISIONS)
def test_kenlm_scores_our_arpa_like_we_do(tmp_path, precision):
    import kenlm

    v = 40
    vocab = ["<eos>", "<unk>"] + [f"w{i}" for i in range(2, v)]
    model = ngram.build(random_corpus(8, 4000, v, 0), v, 4, eos_id=0, vocab=vocab)
    arpa.write_arpa(model, tmp_path / "m.arpa", precision=precision)
    lm = kenlm.Model(str(tmp_path / "m.arpa"))
    test = random_corpus(9, 600, v, 0)
    test = test[: np.flatnonzero(test == 0)[-1] + 1]  # whole sentences
    lp, orders = model.score(test)
    ken_lp, ken_orders = [], []
    for sent in np.split(test, np.flatnonzero(test == 0)[:-1] + 1):
        for logp10, length, _ in lm.full_scores(" ".join(vocab[t] for t in sent[:-1])):
            ken_lp.append(logp10)
            ken_orders.append(length)
    np.testing.assert_allclose(np.array(ken_lp) * math.log(10), lp, rtol=1e-5, atol=1e-5)
    assert ken_orders == orders.tolist()


@pytest.fixture(scope="module")
def ptb_5gram():
    return helpers.ptb_5gram()


@pytest.mark.slow
@pytest.mark.skipif(not (HAS_PTB and HAS_KENLM), reason="needs ../shared/data/ptb and kenlm")
def test_kenlm_reads_our_ptb_arpa_and_agrees(ptb_5gram, tmp_path):
    import kenlm

    model, ids, tok = ptb_5gram
    arpa.write_arpa(model, tmp_path / "ptb5.arpa")
    reference_write_arpa(model, tmp_path / "old.arpa")
    assert (tmp_path / "ptb5.arpa").read_bytes() == (tmp_path / "old.arpa").read_bytes()
    lm = kenlm.Model(str(tmp_path / "ptb5.arpa"))
    lines = (PTB / "ptb.test.txt").read_text().splitlines()
    log10_sum = sum(lm.score(line, bos=True, eos=True) for line in lines)
    count = sum(len(line.split()) + 1 for line in lines)
    kenlm_ppl = 10 ** (-log10_sum / count)
    ours = model.perplexity(ids["test"])
    assert count == len(ids["test"])
    assert kenlm_ppl == pytest.approx(ours, rel=1e-4)
