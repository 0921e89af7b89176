"""jaxlm.data.batching: batches as a pure function of (seed, step)."""

import numpy as np

from jaxlm.data.batching import eval_batches, make_streams, train_batch, windows_per_epoch


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
