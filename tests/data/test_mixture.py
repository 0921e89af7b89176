"""Mixtures of corpora and resampling: proportions, errors, one tokenizer, bootstrap by seed."""

import numpy as np
import pytest

from jaxlm import data
from jaxlm.config import base_config, validate
from jaxlm.data import load_corpus
from jaxlm.data.batching import make_train_data, share_streams
from jaxlm.data.mixture import parse_mixture, probabilities
from jaxlm.data.resample import bootstrap, units, upsample
from jaxlm.errors import ConfigError


def _files(tmp_path):
    a = tmp_path / "alpha.txt"
    a.write_text("".join(f"alpha line {i} of the first corpus\n" for i in range(300)))
    b = tmp_path / "beta.txt"
    b.write_text("".join(f"BETA {i}: a second, different corpus!\n" for i in range(200)))
    return a, b


def _config(model="transformer", **data_fields):
    c = base_config(model)
    for key, value in data_fields.items():
        setattr(c.data, key, value)
    return c


def test_realised_proportions_are_within_one_percent_of_the_weights_over_10000_windows():
    sources = tuple(np.arange(n) for n in (50_000, 8_000, 20_000))  # sizes unlike the weights
    weights = (0.5, 0.3, 0.2)
    random = make_train_data(
        sources, mode="random", batch_size=100, seq_len=16, seed=0, names=("a", "b", "c"),
        probs=weights,
    )  # fmt: skip
    realised = random.realised(100)  # 100 steps x 100 windows
    assert np.all(np.abs(realised - weights) < 0.01), realised
    # Every window fits in the source it was drawn from (sources of other sizes would not).
    batch, source = random._batch(7)
    for row, s in zip(batch["inputs"], source, strict=True):
        assert row[-1] < len(sources[s]) - 1
    # Streams: the shares are fixed, B x weight by largest remainders.
    streams = make_train_data(
        sources, mode="streams", batch_size=100, seq_len=16, seed=0, names=("a", "b", "c"),
        probs=weights,
    )  # fmt: skip
    np.testing.assert_allclose(streams.realised(3), weights)
    assert share_streams(np.array([0.3, 0.7]), 32).tolist() == [10, 22]
    assert share_streams(np.array([0.98, 0.01, 0.01]), 4).tolist() == [2, 1, 1]  # one at least


def test_mixture_windows_are_a_pure_function_of_seed_and_step():
    sources = (np.arange(3_000), np.arange(10_000, 11_000))
    make = lambda seed: make_train_data(  # noqa: E731
        sources, mode="random", batch_size=32, seq_len=8, seed=seed, names=("a", "b"),
        probs=(0.4, 0.6),
    )  # fmt: skip
    a, b = make(1), make(1)
    for step in (0, 11, 500):
        np.testing.assert_array_equal(a.batch(step)["inputs"], b.batch(step)["inputs"])
        np.testing.assert_array_equal(a.sources(step), b.sources(step))
    assert not np.array_equal(a.sources(11), make(2).sources(11))
    batch, source = a._batch(11)
    np.testing.assert_array_equal(batch["inputs"][:, 0] >= 10_000, source == 1)


def test_mixture_streams_keep_each_sources_epochs_with_a_reset_per_row():
    sources = (np.arange(2_000), np.arange(100_000, 100_400))  # the second is 5 x shorter
    mix = make_train_data(
        sources, mode="streams", batch_size=4, seq_len=10, seed=0, names=("a", "b"),
        probs=(0.5, 0.5),
    )  # fmt: skip
    per_epoch_b = (400 // 2 - 1 - 10) // 10  # 18 windows of the short source's two streams
    prev = None
    for step in range(2 * per_epoch_b + 1):
        batch = mix.batch(step)
        assert batch["reset"].shape == (4,)
        assert batch["reset"][2:].tolist() == [step % per_epoch_b == 0] * 2
        assert bool(batch["reset"][0]) == (step == 0)  # the long source is still in epoch 0
        assert np.all(batch["inputs"][:2] < 100_000) and np.all(batch["inputs"][2:] >= 100_000)
        if prev is not None:  # row by row, contiguous unless the row was reset
            cont = prev["targets"][:, -1] == batch["inputs"][:, 0]
            np.testing.assert_array_equal(cont, ~batch["reset"])
        prev = batch


def test_temperature_flattens_or_sharpens_the_weights():
    np.testing.assert_allclose(probabilities((1.0, 3.0)), (0.25, 0.75))
    np.testing.assert_allclose(probabilities((1.0, 9.0), 2.0), (0.25, 0.75))  # 1 : sqrt 9
    flat = probabilities((1.0, 9.0), 1e6)
    np.testing.assert_allclose(flat, (0.5, 0.5), atol=1e-5)
    np.testing.assert_allclose(probabilities((1.0, 2.0), 0.5), (0.2, 0.8))  # 1 : 4


def test_a_mixture_spec_is_parsed_with_names_paths_and_weights():
    sources = parse_mixture("builtin:0.3, shakespeare=text_files:/a/b:c/input.txt:0.7")
    assert [(s.name, s.corpus, s.path, s.weight) for s in sources] == [
        ("builtin", "builtin", "", 0.3),
        ("shakespeare", "text_files", "/a/b:c/input.txt", 0.7),  # a colon in the path
    ]
    assert parse_mixture("text_files:data/ptb:2")[0].name == "ptb"  # the folder's name
    assert parse_mixture("") == ()


@pytest.mark.parametrize(
    "mixture, message",
    [
        ("builtin:0.3,text_files:x.txt", r"entry 2 'text_files:x.txt': weight 'x.txt' is not a"),
        ("builtin", r"entry 1 'builtin': no weight"),
        ("builtin:-1", r"entry 1 'builtin:-1': weight -1 is not a positive number"),
        ("builtin:0.5,,builtin:0.5", r"entry 2 '': empty"),
        ("web:1", r"entry 1 'web:1': unknown corpus 'web'"),
        ("text_files:1", r"entry 1 'text_files:1': text_files needs a path"),
        ("builtin:1,builtin:2", r"entry 2 'builtin:2': a second source named 'builtin'"),
        ("builtin:1,text_files:{missing}:1", r"entry 2 .*missing.txt does not exist"),
        ("builtin:1,b=text_files:{empty}:1", r"entry 2 'b=text_files:.*empty.txt:1'.* is empty"),
    ],
)
def test_bad_mixture_entries_are_refused_by_validate_naming_the_entry(tmp_path, mixture, message):
    (tmp_path / "empty.txt").write_text("\n  \n")
    spec = mixture.format(missing=tmp_path / "missing.txt", empty=tmp_path / "empty.txt")
    with pytest.raises(ConfigError, match=rf"^config\.data\.mixture: {message}") as e:
        validate(_config(mixture=spec))
    assert "\n" not in str(e.value)


def test_mixture_fields_that_do_not_fit_together_are_refused(tmp_path):
    a, _ = _files(tmp_path)
    with pytest.raises(ConfigError, match="config.data.mixture_target: 'c' names no source"):
        validate(_config(mixture=f"builtin:1,text_files:{a}:1", mixture_target="c"))
    with pytest.raises(ConfigError, match="config.data.corpus and config.data.path must be"):
        validate(_config(mixture="builtin:1", corpus="text_files", path=str(a)))
    with pytest.raises(ConfigError, match="config.data.batch_size=1: streams mode gives each"):
        validate(_config("lstm", mixture=f"builtin:1,text_files:{a}:1", batch_size=1))
    validate(_config(mixture=f"builtin:1,text_files:{a}:1", batch_size=1, windows="random"))
    c = _config()
    c.data.resample.temperature = 2.0
    with pytest.raises(ConfigError, match="config.data.resample.temperature is 2.0 but"):
        validate(c)
    with pytest.raises(ConfigError, match="config.data.mixture: an n-gram model is counted"):
        validate(_config("ngram", mixture="builtin:1"))


def test_a_mixture_shares_one_tokenizer_and_reports_the_target(tmp_path):
    a, b = _files(tmp_path)
    c = _config(
        mixture=f"text_files:{a}:0.25,text_files:{b}:0.75", mixture_target="beta", windows="random"
    )
    validate(c)
    corpus = load_corpus(c.data)
    alpha, beta = corpus.sources
    assert (alpha.name, beta.name) == ("alpha", "beta") and beta.target and not alpha.target
    np.testing.assert_array_equal(corpus.validation, beta.validation)  # the target's splits
    assert corpus.counts == beta.counts and corpus.name == "beta"
    assert (alpha.prob, beta.prob) == (0.25, 0.75)
    tok = corpus.tokenizer  # one char vocabulary over both: each decodes exactly
    assert tok.decode(alpha.test) == a.read_text()[-len(alpha.test) :]
    assert tok.decode(beta.train[:6]) == "BETA 0"
    windows = data.train_data(c, corpus)
    assert windows.mode == "random" and windows.names == ("alpha", "beta")
    assert abs(windows.realised(200)[1] - 0.75) < 0.02


def test_bootstrap_is_reproducible_by_seed_and_differs_by_seed():
    text = "".join(f"line {i}\n" for i in range(200))
    a, again, other = (
        bootstrap(text, "line", 0),
        bootstrap(text, "line", 0),
        bootstrap(text, "line", 1),
    )
    assert a == again and a != other
    lines = a.splitlines()
    assert len(lines) == 200 and set(lines) <= set(text.splitlines())
    assert 0.5 < len(set(lines)) / 200 < 0.75  # about 1 - 1/e of the units drawn at least once
    docs = "one\ndoc\n\ntwo\n\n\nthree\n"
    assert units(docs, "document")[0] == ["one\ndoc", "two", "three"]
    drawn = bootstrap(docs, "document", 0).split("\n\n")
    assert len(drawn) == 3 and set(d.strip() for d in drawn) <= {"one\ndoc", "two", "three"}
    assert bootstrap(docs.encode(), "document", 0) == bootstrap(docs, "document", 0).encode()


def test_bootstrap_resamples_the_training_split_only(tmp_path):
    a, _ = _files(tmp_path)
    plain = _config(corpus="text_files", path=str(a), tokenizer="byte")
    resampled = _config(corpus="text_files", path=str(a), tokenizer="byte")
    resampled.data.resample.kind = "bootstrap"
    x, y = load_corpus(plain.data, seed=0), load_corpus(resampled.data, seed=0)
    y2, z = load_corpus(resampled.data, seed=0), load_corpus(resampled.data, seed=1)
    np.testing.assert_array_equal(x.validation, y.validation)
    np.testing.assert_array_equal(x.test, y.test)
    assert not np.array_equal(x.train, y.train)
    np.testing.assert_array_equal(y.train, y2.train)
    assert not np.array_equal(y.train, z.train)
    kept = set(x.tokenizer.decode(x.train).split("\n"))
    assert set(y.tokenizer.decode(y.train).rstrip("\n").split("\n")) <= kept


def test_upsample_repeats_with_fresh_offsets():
    tokens = np.arange(100)
    out = upsample(tokens, 3, seq_len=8, seed=0)
    np.testing.assert_array_equal(out[:100], tokens)
    assert 3 * 100 - 2 * 7 <= len(out) <= 300
    second = out[100:]
    offset = int(second[0])
    assert 0 <= offset < 8 and np.array_equal(second[: 100 - offset], tokens[offset:])
    assert not np.array_equal(out, upsample(tokens, 3, seq_len=8, seed=5)) or offset == 0
    assert upsample(tokens, 1, 8, 0) is tokens
