"""On-device augmentation: each edit does what it says, realised rates, length T, margins,
reproducibility by (seed, step), whole words, the unchanged program with rates 0, and an
evaluation that is never augmented."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import sharding
from jaxlm.checkpoints import load_run
from jaxlm.config import validate
from jaxlm.data import augment, batching, load_corpus
from jaxlm.data.subword import SubwordTokenizer
from jaxlm.data.tokenizers import ByteTokenizer, CharTokenizer, WordTokenizer
from jaxlm.errors import ConfigError, CorpusError
from jaxlm.search.population import train_population
from jaxlm.train import hparams
from jaxlm.train import plan as plan_lib
from jaxlm.train.evaluate import Evaluator
from jaxlm.train.loop import train_and_evaluate
from tests.helpers import smoke

SOURCE = 0  # the only id the test source draws; the raw windows (ids 1..L) never hold it
V = 100


def _point_cdf(token: int = SOURCE, vocab: int = V) -> np.ndarray:
    """A source that always draws ``token``."""
    return (np.arange(vocab) >= token).astype(np.float32)


_jitted_edit = jax.jit(augment.edit, static_argnums=0)


def _edit(raw, seq_len, key=0, tables=None, **spec):
    spec = augment.Augment(seq_len=seq_len, extra=raw.shape[1] - seq_len - 1, **spec)
    hp = {augment.CDF: _point_cdf(), **(tables or {})}
    out = _jitted_edit(spec, jax.random.PRNGKey(key), jnp.asarray(raw), hp)
    return [np.asarray(x) for x in out]


def _raw(rows: int, length: int) -> np.ndarray:
    return np.tile(np.arange(1, length + 1, dtype=np.int32), (rows, 1))  # ids 1..L


def _edited(inputs, targets, mask) -> list[list[int]]:
    """Each row's edited text: its first input, then the targets the mask keeps."""
    return [[int(i[0]), *t[m > 0].tolist()] for i, t, m in zip(inputs, targets, mask, strict=True)]


def test_the_targets_are_the_next_tokens_of_the_edited_window():
    raw = _raw(8, 60)
    inputs, targets, mask = _edit(raw, 40, delete=0.3, insert=0.2, swap=0.2, replace=0.1)
    assert inputs.shape == targets.shape == mask.shape == (8, 40)
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])


def test_deletion_removes_tokens_and_keeps_the_order():
    raw = _raw(16, 60)
    inputs, targets, mask = _edit(raw, 59, delete=0.3)  # no margin: the tail is masked
    for row in _edited(inputs, targets, mask):
        assert row == sorted(set(row)) and set(row) <= set(range(1, 61))  # a subsequence
        assert 20 < len(row) < 60  # some gone, most kept
    # Masked targets come only after the edited text ends: the mask is a prefix of ones.
    assert np.all(np.diff(mask, axis=1) <= 0) and mask.min() == 0


def test_insertion_adds_drawn_tokens_between_the_originals():
    raw = _raw(16, 60)
    inputs, targets, mask = _edit(raw, 50, insert=0.25)
    assert mask.min() == 1  # insertions only lengthen
    for row in _edited(inputs, targets, mask):
        originals = [t for t in row if t != SOURCE]
        assert originals == list(range(1, len(originals) + 1))  # the raw text, in order
        assert 0 < row.count(SOURCE) < len(row) // 2  # and the source's tokens between


def test_swap_exchanges_neighbours_only():
    raw = _raw(16, 41)
    inputs, targets, mask = _edit(raw, 40, swap=0.3)
    assert mask.min() == 1
    moved = 0
    for row in _edited(inputs, targets, mask):
        assert sorted(row) == list(range(1, 42))  # a permutation of the window
        for j, t in enumerate(row):
            assert abs(t - (j + 1)) <= 1  # each token at most one place away
            if t == j + 2:  # moved left: its neighbour took its place
                assert row[j + 1] == j + 1
                moved += 2
    assert moved > 0


def test_replacement_keeps_the_length_and_draws_from_the_source():
    raw = _raw(16, 41)
    inputs, targets, mask = _edit(raw, 40, replace=0.3)
    assert mask.min() == 1
    for row in _edited(inputs, targets, mask):
        kept = [t for t in row if t != SOURCE]
        assert len(row) == 41 and 0 < len(kept) < 41
        assert all(row[j] in (j + 1, SOURCE) for j in range(41))  # in place, or the source's


def test_a_missing_table_is_named():
    spec = augment.Augment(seq_len=4, insert=0.1, swap=0.1, unit="word")
    wanted = (
        r"tables \['data.augment.word_start', 'data.augment.words', .*'data.augment.word_cdf'\]"
    )
    with pytest.raises(ValueError, match=wanted):
        augment.edit(spec, jax.random.PRNGKey(0), jnp.zeros((1, 5), jnp.int32), {})


def test_drawn_tokens_follow_the_unigram_distribution_or_the_uniform_one():
    tokens = np.array([3] * 50 + [5] * 30 + [8] * 20)
    cdf = augment.unigram_cdf(tokens, 10)
    spec = augment.Augment(seq_len=199, replace=0.9)
    raw = jnp.full((64, 200), 9, jnp.int32)
    inputs, targets, _ = _jitted_edit(spec, jax.random.PRNGKey(0), raw, {augment.CDF: cdf})
    drawn = np.asarray(targets)[np.asarray(targets) != 9]
    freq = np.bincount(drawn, minlength=10) / len(drawn)
    np.testing.assert_allclose(freq[[3, 5, 8]], [0.5, 0.3, 0.2], atol=0.02)
    assert freq[[0, 1, 2, 4, 6, 7, 9]].sum() == 0  # unseen ids are never drawn
    uniform = {augment.CDF: augment.uniform_cdf(10)}
    _, targets, _ = _jitted_edit(spec, jax.random.PRNGKey(0), raw, uniform)
    freq = np.bincount(np.asarray(targets).ravel(), minlength=10) / targets.size
    np.testing.assert_allclose(freq[:9], 0.9 / 10, atol=0.01)


@pytest.mark.parametrize("op, rate", [("delete", 0.2), ("insert", 0.1), ("swap", 0.15)])
def test_realised_rates_are_near_the_configured_ones(op, rate):
    raw = _raw(512, 101)
    inputs, targets, mask = _edit(raw, 100, key=3, **{op: rate})
    rows = _edited(inputs, targets, mask)
    if op == "delete":
        realised = 1 - np.mean([len(r) for r in rows]) / 101
    elif op == "insert":  # the source's tokens per original token
        realised = np.mean([r.count(SOURCE) / (len(r) - r.count(SOURCE)) for r in rows])
    else:  # tokens not in their place, minus the pairs at the row's ends that have none
        realised = np.mean([np.mean(np.array(r) != np.arange(1, 102)) for r in rows])
        realised *= 101 / 100
    assert abs(realised - rate) < 0.01, realised


def test_replacement_rate_with_a_large_uniform_vocabulary():
    spec = augment.Augment(seq_len=100, replace=0.2)
    raw = jnp.zeros((256, 101), jnp.int32)
    hp = {augment.CDF: augment.uniform_cdf(100_000)}
    _, targets, _ = _jitted_edit(spec, jax.random.PRNGKey(1), raw, hp)
    assert abs(float(jnp.mean(targets != 0)) - 0.2) < 0.01


def test_the_default_margin_makes_a_short_window_rare():
    spec = augment.Augment(seq_len=64, extra=augment.auto_margin(64, 0.3), delete=0.3)
    raw = _raw(2000, 65 + spec.extra)
    _, _, mask = _jitted_edit(spec, jax.random.PRNGKey(0), jnp.asarray(raw), {})
    assert float(np.asarray(mask).min()) == 1.0  # not one window of 2,000 ran short
    assert augment.auto_margin(64, 0.3, "word") > spec.extra  # words vary more


def test_edits_are_a_function_of_the_key_from_seed_and_step():
    raw = jnp.asarray(_raw(4, 60))
    spec = augment.Augment(seq_len=40, extra=19, delete=0.2, insert=0.1, swap=0.1, replace=0.1)
    hp = {augment.CDF: augment.uniform_cdf(V)}
    rng = jax.random.split(jax.random.PRNGKey(0))[1]  # a run's base key, as state.rng

    def at(rng, step):
        key = augment.step_key(rng, jnp.int32(step))
        return np.asarray(_jitted_edit(spec, key, raw, hp)[0])

    np.testing.assert_array_equal(at(rng, 7), at(rng, 7))
    assert not np.array_equal(at(rng, 7), at(rng, 8))
    other = jax.random.split(jax.random.PRNGKey(1))[1]
    assert not np.array_equal(at(rng, 7), at(other, 7))
    # Apart from the dropout key of the same step.
    assert not np.array_equal(augment.step_key(rng, 7), jax.random.fold_in(rng, 7))


TEXT = " alpha beta gamma delta epsilon zeta eta theta iota kappa\nlambda mu nu xi omicron pi\n"


def _word_edit(tok, op, key):
    ids = tok.encode(TEXT)
    tables = {augment.WORD_START: augment.word_tables(tok, tok.vocab_size)}
    spec = augment.Augment(seq_len=len(ids) - 1, unit="word", **{op: 0.4})
    out = _jitted_edit(spec, jax.random.PRNGKey(key), jnp.asarray(ids)[None], tables)
    inputs, targets, mask = (np.asarray(x)[0] for x in out)
    return tok.decode(np.array([inputs[0], *targets[mask > 0]]))


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_whole_words_are_deleted_and_swapped(kind):
    if kind == "char":
        tok = CharTokenizer.train(TEXT)
    else:
        tok = SubwordTokenizer.train_bpe(TEXT * 20, 300)
    words = TEXT.split()
    for key in range(4):
        deleted = _word_edit(tok, "delete", key).split()
        assert set(deleted) <= set(words) and deleted == [w for w in words if w in deleted]
        assert len(deleted) < len(words)
        swapped = _word_edit(tok, "swap", key).split()
        assert sorted(swapped) == sorted(words)  # whole words, each once
        assert all(abs(swapped.index(w) - words.index(w)) <= 1 for w in words)
    assert any(_word_edit(tok, "swap", k).split() != words for k in range(4))


def test_word_tables_mark_word_starts_for_each_tokenizer():
    char = CharTokenizer.train("ab c\td\n")
    start = augment.word_tables(char, char.vocab_size)
    assert {char.vocab[i] for i in np.flatnonzero(start)} == {" ", "\t", "\n"}
    bpe = SubwordTokenizer.train_bpe("the theme of the thesis " * 20, 262)
    start = augment.word_tables(bpe, bpe.vocab_size)
    assert start[bpe.encode(" the")[0]] == 1 and start[bpe.encode("the")[0]] == 0
    byte = ByteTokenizer()
    start = augment.word_tables(byte, 258)
    assert np.flatnonzero(start).tolist() == [9, 10, 11, 12, 13, 32, 256, 257]
    word = WordTokenizer.train("a b a\nb c\n")
    assert augment.word_tables(word, word.vocab_size).all()


# Whole-word insertion and replacement: the window's words are all distinct and none is in the
# table, which is built from another text (cat 3 times, dog twice, emu once), so each word of an
# edited window says where it came from.
WINDOW = (
    " alpha beta gamma delta epsilon zeta theta iota kappa lambda omicron sigma upsilon omega"
    " aleph gimel daleth zayin tsadi resh"
)
TABLE_TEXT = " cat dog cat emu cat dog"
TABLE_SHARE = {"cat": 3 / 6, "dog": 2 / 6, "emu": 1 / 6}


@functools.cache
def _tokenizer(kind: str):
    if kind == "char":
        return CharTokenizer.train(WINDOW + TABLE_TEXT)
    if kind == "byte":
        return ByteTokenizer()
    return SubwordTokenizer.train_bpe((WINDOW + TABLE_TEXT) * 20, 280)  # words of 1-4 tokens


def _word_draws(kind: str, rows: int, extra: int = 0, source: str = "unigram", **rates):
    """Rows of ``WINDOW`` repeated, ``T = 100`` (and ``extra``) tokens, edited with whole words
    drawn from the table of ``TABLE_TEXT``: each row's edited text as its words, the targets and
    the mask. The tables are padded to 300 ids, so the tokenizers share one compiled edit."""
    tok = _tokenizer(kind)
    start = np.zeros(300, np.float32)
    start[: tok.vocab_size] = augment.word_tables(tok, tok.vocab_size)
    table = augment.word_table(tok.encode(TABLE_TEXT * 10), start, 8, 6)
    hp = {
        augment.WORD_START: start,
        augment.WORDS: table.tokens,
        augment.WORD_LENGTHS: table.lengths,
        augment.WORD_CDF: table.cdf(source),
    }
    spec = augment.Augment(seq_len=100, extra=extra, unit="word", **rates)
    ids = np.asarray(tok.encode(WINDOW * 8))[: 101 + extra]
    out = _jitted_edit(spec, jax.random.PRNGKey(0), jnp.asarray(np.tile(ids, (rows, 1))), hp)
    inputs, targets, mask = (np.asarray(x) for x in out)
    words = [tok.decode(np.array(r)).split() for r in _edited(inputs, targets, mask)]
    return words, targets, mask


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_whole_words_are_replaced_by_whole_table_words_at_the_rate(kind):
    rows, _, mask = _word_draws(kind, 512, replace=0.3)
    original = (WINDOW * 8).split()
    drawn = []
    for words in rows:
        complete = words[:-1]  # the last word may be cut where the window ends
        assert len(words) <= len(original)  # one word for one word
        for k, word in enumerate(complete):
            assert word == original[k] or word in TABLE_SHARE, (k, word)  # in place, or drawn
        drawn += [w for w in complete if w in TABLE_SHARE]
    realised = len(drawn) / sum(len(words) - 1 for words in rows)
    assert abs(realised - 0.3) < 0.02, realised
    share = {w: drawn.count(w) / len(drawn) for w in TABLE_SHARE}  # the words' unigram
    assert all(abs(share[w] - TABLE_SHARE[w]) < 0.03 for w in TABLE_SHARE), share


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_whole_table_words_are_inserted_between_the_words(kind):
    rows, _, mask = _word_draws(kind, 512, source="uniform", insert=0.2)
    assert mask.min() == 1  # insertions only lengthen
    original = (WINDOW * 8).split()
    inserted, kept = [], 0
    for words in rows:
        complete = words[:-1]
        others = [w for w in complete if w not in TABLE_SHARE]
        assert others == original[: len(others)]  # every original word, in order, whole
        inserted += [w for w in complete if w in TABLE_SHARE]
        kept += len(others)
    assert abs(len(inserted) / kept - 0.2) < 0.02, len(inserted) / kept  # per original word
    share = {w: inserted.count(w) / len(inserted) for w in TABLE_SHARE}
    assert all(abs(share[w] - 1 / 3) < 0.03 for w in TABLE_SHARE), share  # uniform


def test_shorter_replacing_words_run_a_window_short_and_the_tail_is_masked():
    # No margin, and every table word shorter than every window word: a row with a
    # replacement ends before T + 1 tokens unless its insertions make up for it.
    rows, targets, mask = _word_draws("char", 64, replace=0.2, insert=0.1)
    assert np.all(np.diff(mask, axis=1) <= 0)  # a prefix of ones
    short = mask.min(axis=1) == 0
    assert 0 < short.sum() < 64
    assert np.all(targets[mask == 0] == 0) and np.all(targets[mask > 0] != 0)  # 0: <unk>
    slots = (WINDOW * 8)[:101].split()  # the raw window's words (101 chars), the last cut
    for words in (w for w, s in zip(rows, short, strict=True) if s):
        # The whole edited text is there: each raw word or a table word in its place, the
        # insertions between, none lost to the insertions' extra tokens.
        others = [w for w in words if w not in TABLE_SHARE]
        assert others == [w for w in slots if w in others] and len(words) >= len(slots)
        assert words[-1] in (slots[-1], *TABLE_SHARE)
    # The default margin counts replaced words as deleted: no row runs short.
    extra = augment.auto_margin(100, augment.shrink_rate(0.0, 0.2, "word"), "word")
    _, _, mask = _word_draws("char", 64, extra=extra, replace=0.2, insert=0.1)
    assert mask.min() == 1


def test_the_word_table_holds_the_most_frequent_short_words_in_any_chunking(monkeypatch):
    tok = CharTokenizer.train(" a bb ccc dddddddd\n")
    start = augment.word_tables(tok, tok.vocab_size)
    text = " bb a ccc bb dddddddd bb a ccc a bb\n"  # bb 4, a 3, ccc 2, the 9-token word, \n
    table = augment.word_table(tok.encode(text), start, 3, 5)
    words = [tok.decode(row[:n]) for row, n in zip(table.tokens, table.lengths, strict=True)]
    assert words == [" bb", " a", " ccc"] and table.counts.tolist() == [4, 3, 2]
    assert table.total == 11 and table.lengths.tolist() == [3, 2, 4]
    assert np.all(table.tokens[1, 2:] == 0)  # padded
    np.testing.assert_allclose(table.cdf(), [4 / 9, 7 / 9, 1.0], rtol=1e-6)
    monkeypatch.setattr(augment, "_CHUNK", 2)  # the chunks' counts merged: the same table
    chunked = augment.word_table(tok.encode(text), start, 3, 5)
    assert np.array_equal(chunked.tokens, table.tokens) and chunked.total == 11
    assert chunked.counts.tolist() == [4, 3, 2]
    big = augment.word_table(tok.encode(text), start, 8, 5)  # fewer words than rows
    assert big.lengths.tolist()[4:] == [0] * 4 and big.cdf("uniform")[3:].tolist() == [1.0] * 5
    word = WordTokenizer.train("a b a\nb c\n")
    one = augment.word_table(word.encode("a b a\n"), augment.word_tables(word, 6), 4, 2)
    assert set(one.lengths.tolist()) <= {0, 1}  # the word tokenizer's words: one token each


def test_a_split_without_short_words_is_refused_by_name():
    config = smoke(**{"data.augment.insert": 0.1, "data.augment.unit": "word"})
    config.data.augment.word_tokens = 2
    tok = CharTokenizer.train(" alpha beta")
    with pytest.raises(CorpusError, match=r"config.data.augment.word_tokens=2: .* \(of 2 words\)"):
        augment.tables(config.data, tok.encode(" alpha beta"), tok, tok.vocab_size)


def _program(hlo: str) -> str:
    """Compiled HLO without its source locations (their tables' order varies with tracing)."""
    body = hlo[hlo.index("\n\n", hlo.index("StackFrames")) :] if "StackFrames" in hlo else hlo
    return re.sub(r", metadata=\{[^}]*\}", "", body)


def test_rates_of_zero_leave_the_program_and_the_batch_as_they_were():
    base = smoke()
    off = smoke(**{"data.augment.source": "uniform", "data.augment.unit": "word"})
    off.data.augment.extra = 16  # a margin is read only when an edit is on
    validate(off)
    assert augment.margin(off.data) == 0 and augment.from_config(off.data) is None
    assert augment.tables(off.data, np.arange(10), None, 10) == {}
    texts = []
    for config in (base, off):
        plan = plan_lib.make_plan(config, vocab_size=40)
        with jax.set_mesh(plan.mesh):
            texts.append(_program(plan_lib.compile_step(plan, config).as_text()))
    assert texts[0] == texts[1]
    streams = batching.make_streams(np.arange(5000), 8)
    for step in (0, 7, 300):
        a = batching.train_batch(streams, step, 32, 0)
        b = batching.train_batch(streams, step, 32, 0, length=32 + augment.margin(off.data))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_runs_that_differ_only_in_rates_share_one_program():
    # Whole words, every edit on: the word table's shape is the config's, not the corpus's.
    configs = [
        smoke(
            **{
                **{f"data.augment.{op}": r for op in augment.OPS},
                "data.augment.delete": d,
                "data.augment.extra": 24,
                "data.augment.unit": "word",
            }
        )
        for d, r in ((0.1, 0.05), (0.3, 0.2))
    ]
    assert hparams.fields_in_force(configs[0])[-4:] == hparams.DATA_FIELDS
    assert float(hparams.from_config(configs[1])["data.augment.delete"]) == pytest.approx(0.3)
    texts = []
    for config in configs:
        plan = plan_lib.make_plan(config, vocab_size=40)
        with jax.set_mesh(plan.mesh):
            texts.append(_program(plan_lib.compile_step(plan, config).as_text()))
    assert texts[0] == texts[1]


def test_a_raw_window_extends_the_same_window():
    streams = batching.make_streams(np.arange(5000), 8)
    # 16: the last window of the first epoch, which holds one window less with the margin
    for step in (0, 9, 16):
        a = batching.train_batch(streams, step, 32, 0)
        b = batching.train_batch(streams, step, 32, 0, length=52)
        assert b["inputs"].shape == (8, 52)
        np.testing.assert_array_equal(a["inputs"], b["inputs"][:, :32])
        np.testing.assert_array_equal(a["targets"], b["targets"][:, :32])
        assert a["reset"] == b["reset"]


def test_evaluation_is_never_augmented(tmp_path):
    text = tmp_path / "corpus.txt"  # small splits: the final evaluation is quick
    text.write_text((TEXT * 100)[:8000])
    config = smoke(
        **{
            "data.corpus": "text_files",
            "data.path": str(text),
            "data.split": (0.8, 0.1, 0.1),
            "train.num_steps": 4,
            "train.eval_every": 4,
            "train.eval_steps": 2,
            "train.checkpoint_every": 4,
            "train.sample_tokens": 0,
            "data.augment.delete": 0.5,
            "data.augment.replace": 0.5,
            "data.augment.unit": "word",
            "data.augment.extra": 64,  # the default, for half the words gone, is too long
        }
    )
    final = train_and_evaluate(config, tmp_path / "run")
    run = load_run(tmp_path / "run")
    corpus = load_corpus(config.data, run.tokenizer)
    mesh = sharding.make_mesh(1, 1)
    evaluator = Evaluator(run.model, mesh, batch_size=8, seq_len=32)  # knows nothing of augment
    with jax.set_mesh(mesh):
        plain = evaluator(run.params, corpus.validation)
    assert final["validation_loss"] == pytest.approx(plain["loss"], rel=1e-6)


def test_a_population_refuses_augmentation(tmp_path):
    config = smoke(**{"data.augment.swap": 0.1})
    with pytest.raises(ConfigError, match=r"population: config.data.augment is not applied"):
        train_population(config, [{"optimizer.learning_rate": 1e-3}], tmp_path / "pop")
