"""The spike guard: flags against the bias-corrected moving average, skips that leave the inner
state as it was, the warm-up, a new level accepted after max_consecutive, traced factors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm.transforms import guard_spikes, spike_metrics, wants_loss

PARAMS = {"w": jnp.zeros(3)}
GRAD = {"w": jnp.ones(3)}


def _run(tx, losses, grads=None):
    """The updates and states of one ``update`` per loss, compiled once (eager is slow)."""
    update = jax.jit(lambda g, state, loss: tx.update({"w": g}, state, PARAMS, loss=loss))
    state = tx.init(PARAMS)
    out = []
    for i, loss in enumerate(losses):
        g = GRAD["w"] if grads is None else jnp.full(3, grads[i])
        updates, state = update(g, state, jnp.float32(loss))
        out.append((updates["w"], state))
    return out


def _reference(losses, factor, warmup, decay):
    """The flags by hand: a bias-corrected exponential average of the unflagged losses."""
    avg, n, flags = 0.0, 0, []
    for x in losses:
        flagged = n >= warmup and x > factor * avg / (1 - decay ** max(n, 1))
        flags.append(flagged)
        if not flagged:
            avg, n = decay * avg + (1 - decay) * x, n + 1
    return flags


def test_a_spike_is_a_loss_above_factor_times_the_corrected_average():
    decay = 0.9
    rng = np.random.default_rng(0)
    losses = list(3.0 - np.linspace(0, 1, 40) + rng.uniform(-0.2, 0.2, 40))
    for i, jump in ((12, 2.5), (13, 2.6), (25, 1.9), (31, 4.0)):  # 1.9: not quite a spike
        losses[i] *= jump
    steps = _run(guard_spikes(optax.sgd(1.0), loss_factor=2.0, warmup=5, decay=decay), losses)
    flags = [bool(s.loss_spike) for _, s in steps]
    expected = _reference(losses, 2.0, 5, decay)
    assert flags == expected
    assert [i for i, f in enumerate(flags) if f] == [12, 13, 31]
    assert int(steps[-1][1].count) == 37  # the flagged steps were not averaged
    # warn policy (skip_loss False): the updates were applied anyway.
    assert all(float(u[0]) == -1.0 for u, _ in steps)


def test_skip_applies_no_update_and_keeps_the_inner_state():
    tx = guard_spikes(optax.adam(0.1), loss_factor=2.0, warmup=2, skip_loss=True)
    steps = _run(tx, [1.0, 1.0, 10.0, 1.0])
    before, spiked = steps[1][1], steps[2][1]
    assert bool(spiked.loss_spike) and int(spiked.skipped) == 1
    np.testing.assert_array_equal(steps[2][0], np.zeros(3))
    old, new = jax.tree.leaves(before.inner_state), jax.tree.leaves(spiked.inner_state)
    for a, b in zip(old, new, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not bool(steps[3][1].loss_spike) and float(np.abs(steps[3][0]).max()) > 0


def test_gradient_norm_spikes_and_a_nan_loss_that_does_not_poison_the_average():
    tx = guard_spikes(optax.sgd(1.0), grad_factor=5.0, warmup=2, skip_grad=True)
    steps = _run(tx, [1.0, 1.0, float("nan"), 1.0, 1.0], grads=[1.0, 1.0, 1.0, 100.0, 1.0])
    assert [bool(s.grad_spike) for _, s in steps] == [False, False, False, True, False]
    assert not any(bool(s.loss_spike) for _, s in steps)  # the loss is not checked
    assert np.isfinite(float(steps[-1][1].loss_avg)) and int(steps[2][1].count) == 2
    np.testing.assert_array_equal(steps[3][0], np.zeros(3))


def test_a_level_that_lasts_becomes_the_new_normal():
    tx = guard_spikes(optax.sgd(1.0), loss_factor=2.0, warmup=1, skip_loss=True, max_consecutive=2)
    steps = _run(tx, [1.0, 5.0, 5.0, 5.0, 5.0])
    assert [bool(s.loss_spike) for _, s in steps] == [False, True, True, True, False]
    assert [int(s.skipped) for _, s in steps] == [0, 1, 2, 2, 2]  # the third in a row is taken


def test_traced_factors_under_jit_and_what_the_step_reports():
    tx = guard_spikes(optax.sgd(1.0), loss_factor=jnp.float32(2.0), warmup=1, skip_loss=True)
    state = tx.init(PARAMS)
    assert wants_loss(state) and not wants_loss(optax.sgd(1.0).init(PARAMS))
    update = jax.jit(lambda s, loss: tx.update(GRAD, s, PARAMS, loss=loss))
    _, state = update(state, 1.0)
    _, state = update(state, 3.0)
    assert spike_metrics(state) == pytest.approx(
        {"loss_spike": 1.0, "grad_spike": 0.0, "skipped_spikes": 1.0}
    )
    # A traced factor of 0 is off (a population member without the check), not "any loss".
    off = guard_spikes(optax.sgd(1.0), loss_factor=jnp.float32(0.0), warmup=1, skip_loss=True)
    assert not any(bool(s.loss_spike) for _, s in _run(off, [1.0, 3.0, 9.0]))
    # Without a loss (another caller of update) nothing is checked or averaged.
    _, same = tx.update(GRAD, state, PARAMS)
    assert int(same.count) == int(state.count)
