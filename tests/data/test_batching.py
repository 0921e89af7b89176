"""jaxlm.data.batching: batches as a pure function of (seed, step)."""

import numpy as np
import pytest

from jaxlm.data.batching import (
    eval_batches,
    make_streams,
    make_train_data,
    train_batch,
    window_mode,
    windows_per_epoch,
)
from jaxlm.errors import CorpusError


def test_train_batches_are_a_pure_function_of_seed_and_step():
    streams = make_streams(np.arange(1000), 4)
    a, b = train_batch(streams, 17, 10, seed=3), train_batch(streams, 17, 10, seed=3)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], a["inputs"] + 1)
    # After the first epoch the seed picks each epoch's window offset: the same (seed, step)
    # repeats, another seed shifts the windows.
    later = windows_per_epoch(streams, 10) + 5
    c, d = train_batch(streams, later, 10, seed=3), train_batch(streams, later, 10, seed=3)
    np.testing.assert_array_equal(c["inputs"], d["inputs"])
    others = [train_batch(streams, later, 10, seed=s)["inputs"] for s in range(4, 12)]
    assert any(not np.array_equal(c["inputs"], o) for o in others)


def test_windows_are_contiguous_within_an_epoch_and_reset_at_its_start():
    streams = make_streams(np.arange(1000), 4)  # 249 tokens per stream
    per_epoch = windows_per_epoch(streams, 10)
    assert per_epoch == 23
    prev = None
    for step in range(3 * per_epoch):
        batch = train_batch(streams, step, 10, seed=0)
        assert bool(batch["reset"]) == (step % per_epoch == 0)
        if step % per_epoch:
            np.testing.assert_array_equal(batch["inputs"][:, 0], prev["targets"][:, -1])
        prev = batch
    offsets = {
        int(train_batch(streams, e * per_epoch, 10, seed=0)["inputs"][0, 0]) for e in range(8)
    }
    assert len(offsets) > 1  # window boundaries move between epochs


def test_eval_batches_predict_every_token_once():
    tokens = np.arange(1, 104)
    streams = make_streams(tokens, 4, pad_to=8)
    seen = []
    for batch in eval_batches(streams, 8):
        seen.extend(batch["targets"][batch["mask"] > 0].tolist())
    assert sorted(seen) == tokens[1:].tolist()


def test_random_windows_are_a_pure_function_of_seed_and_step():
    data = make_train_data(np.arange(5000), mode="random", batch_size=8, seq_len=16, seed=3)
    a, b = data.batch(7), data.batch(7)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], a["inputs"] + 1)  # next tokens, contiguous
    np.testing.assert_array_equal(a["inputs"][:, 1:], a["inputs"][:, :-1] + 1)
    assert bool(a["reset"])  # nothing carried into a random window
    assert not np.array_equal(a["inputs"], data.batch(8)["inputs"])
    other = make_train_data(np.arange(5000), mode="random", batch_size=8, seq_len=16, seed=4)
    assert not np.array_equal(a["inputs"], other.batch(7)["inputs"])
    # A fresh object (a resumed run) gives the same windows at any step, in any order.
    again = make_train_data(np.arange(5000), mode="random", batch_size=8, seq_len=16, seed=3)
    for step in (900, 7, 3):
        np.testing.assert_array_equal(again.batch(step)["inputs"], data.batch(step)["inputs"])


def test_random_windows_cover_the_stream_roughly_uniformly():
    n, t = 10_000, 16
    data = make_train_data(np.arange(n), mode="random", batch_size=32, seq_len=t, seed=0)
    starts = np.concatenate([data.batch(s)["inputs"][:, 0] for s in range(500)])  # 16,000
    assert starts.min() >= 0 and starts.max() <= n - t - 1  # every window fits, targets too
    assert starts.max() > n - t - 100 and starts.min() < 100  # both ends are reached
    hist = np.histogram(starts, bins=10, range=(0, n - t))[0]
    assert np.all(np.abs(hist / hist.mean() - 1) < 0.1), hist  # 1,600 a bin, +-10%
    # Steps are not adjacent text: consecutive steps' first windows are far apart on average.
    first = starts.reshape(500, 32)[:, 0]
    assert np.median(np.abs(np.diff(first))) > n / 10


def test_window_length_is_one_argument():
    tokens = np.arange(3000)
    for mode in ("random", "streams"):
        long = make_train_data(tokens, mode=mode, batch_size=4, seq_len=16, seed=1, length=20)
        for step in range(0, 2000, 13):  # many epochs of streams: the last window fits too
            b = long.batch(step)
            assert b["inputs"].shape == (4, 20)
            np.testing.assert_array_equal(b["targets"], b["inputs"] + 1)
            np.testing.assert_array_equal(b["inputs"][:, 1:], b["inputs"][:, :-1] + 1)
    # Streams: the starts are those of T-long windows (an epoch may be a window shorter).
    short = make_train_data(tokens, mode="streams", batch_size=4, seq_len=16, seed=1)
    long = make_train_data(tokens, mode="streams", batch_size=4, seq_len=16, seed=1, length=20)
    np.testing.assert_array_equal(long.batch(5)["inputs"][:, :16], short.batch(5)["inputs"])


def test_streams_mode_is_train_batch_exactly():
    tokens = np.arange(1000)
    data = make_train_data(tokens, mode="streams", batch_size=4, seq_len=10, seed=3)
    streams = make_streams(tokens, 4)
    for step in range(0, 100, 7):
        a, b = data.batch(step), train_batch(streams, step, 10, seed=3)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_auto_windows_are_random_for_models_that_carry_no_state():
    assert window_mode("auto", carry_state=False) == "random"
    assert window_mode("auto", carry_state=True) == "streams"
    assert window_mode("streams", carry_state=False) == "streams"
    with pytest.raises(ValueError, match="windows: 'contiguous'"):
        window_mode("contiguous", carry_state=True)


def test_a_source_too_short_for_a_random_window_is_named():
    with pytest.raises(CorpusError, match=r"tiny: too little training text for seq_len=16"):
        make_train_data(
            np.arange(16), mode="random", batch_size=2, seq_len=16, seed=0, names=("tiny",)
        )
