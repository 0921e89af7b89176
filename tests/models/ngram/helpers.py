"""What the n-gram test files share: the hand-computed tiny corpus, random corpora, PTB."""

from __future__ import annotations

import importlib.util

import numpy as np

from jaxlm.models import ngram
from tests.helpers import ROOT

PTB = ROOT / ".." / "shared" / "data" / "ptb"
HAS_PTB = (PTB / "ptb.test.txt").exists()
HAS_KENLM = importlib.util.find_spec("kenlm") is not None
HAS_NLTK = importlib.util.find_spec("nltk") is not None

# The tiny corpus of the hand computation: <eos> = 0, a = 1, b = 2, c = 3.
EOS, A, B, C = 0, 1, 2, 3
TINY = np.array([A, B, C, EOS, A, B, EOS, B, C, EOS, A, B, C, EOS])


def tiny_model(**kw) -> ngram.NGramModel:
    """The hand-computed trigram: modified KN with fixed discounts D1, D2, D3+ = 0.5, 1, 1.5."""
    kw.setdefault("method", "modified_kneser_ney")
    kw.setdefault("discount", (0.5, 1.0, 1.5))
    return ngram.build(TINY, vocab_size=4, order=3, eos_id=EOS, **kw)


def random_corpus(seed: int, n: int, vocab_size: int, eos_id: int | None) -> np.ndarray:
    """Zipf-ish tokens with sentence ends, so every order sees repeats and singletons."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab_size + 1) ** 1.5
    toks = rng.choice(vocab_size, size=n, p=p / p.sum())
    if eos_id is not None:
        toks[toks == eos_id] = (eos_id + 1) % vocab_size
        ends = rng.random(n) < 0.15
        toks[ends] = eos_id
    return toks.astype(np.int32)


def all_contexts(model: ngram.NGramModel) -> list[tuple[int, ...]]:
    """The empty context and every stored n-gram of orders 1..N-1 (which may be contexts)."""
    out = [()]
    for n in range(1, model.order):
        out += [tuple(r) for r in model.ngram_words(n).tolist()]
    return out


def ptb_ids() -> tuple[dict[str, np.ndarray], object]:
    """PTB splits through the project's word tokenizer (vocabulary from the training split)."""
    from jaxlm.data.tokenizers import WordTokenizer

    texts = {s: (PTB / f"ptb.{s}.txt").read_text() for s in ("train", "valid", "test")}
    tok = WordTokenizer.train(texts["train"])
    return {s: tok.encode(t) for s, t in texts.items()}, tok


def ptb_5gram() -> tuple[ngram.NGramModel, dict[str, np.ndarray], object]:
    """The PTB 5-gram (modified KN, no cut-offs), its token ids and tokenizer."""
    ids, tok = ptb_ids()
    model = ngram.build(ids["train"], tok.vocab_size, 5, eos_id=tok.eos_id, vocab=tok.vocab)
    return model, ids, tok
