"""jaxlm.transforms.validation: reduce-on-plateau against optax.contrib, NT-ASGD against AWD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm import transforms as T


def test_reduce_on_plateau_agrees_with_optax_contrib():
    kw = dict(factor=0.5, patience=2, rtol=1e-3, atol=0.0, cooldown=1, min_scale=0.05)
    ours = optax.chain(optax.sgd(1.0), T.reduce_on_plateau(**kw))
    ref = optax.contrib.reduce_on_plateau(**kw, accumulation_size=1)
    p = {"w": jnp.ones(3)}
    s, r = ours.init(p), ref.init(p)
    report = jax.jit(T.report_validation_loss)
    ref_update = jax.jit(lambda r, v: ref.update(p, r, value=v)[1])
    losses = [5.0, 4.0, 4.0, 3.999, 4.1, 4.2, 4.3, 2.0, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5]
    for loss in losses:
        s = report(s, loss)
        r = ref_update(r, jnp.float32(loss))
        assert float(s[1].scale) == pytest.approx(float(r.scale)), loss
        assert int(s[1].plateau_count) == int(r.plateau_count)
        assert int(s[1].cooldown_count) == int(r.cooldown_count)
    assert float(s[1].scale) == pytest.approx(0.05)  # 1 -> 0.5 -> ... -> 0.03125, floored
    u, _ = ours.update({"w": jnp.ones(3)}, s)
    np.testing.assert_allclose(u["w"], -0.05)


def _awd_switch_index(losses, nonmono):
    """AWD-LSTM main.py's rule; returns the index of the loss that triggers ASGD, or None."""
    best = []
    for i, v in enumerate(losses):
        if len(best) > nonmono and v > min(best[:-nonmono]):
            return i
        best.append(v)
    return None


@pytest.mark.parametrize("rises", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_nt_asgd_triggers_like_awd_lstm_and_averages_iterates(seed, rises):
    rng = np.random.default_rng(seed)
    if rises:  # falls for 5-8 checks, then rises steadily: triggers within 4 rising checks
        k = int(rng.integers(5, 9))
        falls = 5.0 - np.cumsum(rng.uniform(0.1, 1.0, size=k))
        rises_by = np.cumsum(rng.uniform(0.05, 0.3, size=15 - k))
        losses = list(np.concatenate([falls, falls[-1] + rises_by]))
    else:  # mostly falling: these never trigger, and the average is never used
        losses = list(5.0 - np.cumsum(rng.uniform(-0.3, 1.0, size=15)))
    want = _awd_switch_index(losses, 3)
    assert (want is not None) == rises
    tx = optax.chain(optax.sgd(0.1), T.nt_asgd(nonmono=3))
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    report = jax.jit(T.report_validation_loss)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    got, iterates = None, []
    for i, loss in enumerate(losses):
        state = report(state, loss)
        if got is None and bool(state[1].triggered):
            got = i
        updates, state = step(params, state, {"w": jnp.array([float(i), -1.0])})
        params = optax.apply_updates(params, updates)
        if bool(state[1].triggered):
            iterates.append(params["w"])
    assert got == want
    avg = T.averaged_params(state, params)["w"]
    if want is None:
        np.testing.assert_array_equal(avg, params["w"])
    else:
        assert len(iterates) >= 3 and int(state[1].num_averaged) == len(iterates)
        np.testing.assert_allclose(avg, np.mean(iterates, axis=0), rtol=1e-5)
        assert not np.allclose(avg, params["w"])  # the mean, not the last iterate


def test_report_validation_loss_reaches_into_wrappers_and_is_a_no_op_otherwise():
    p = {"w": jnp.ones(2)}
    plain = optax.adam(1e-3).init(p)
    assert T.report_validation_loss(plain, 1.0) is not None
    same = T.report_validation_loss(plain, 1.0)
    assert jax.tree.structure(same) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)
    inner = optax.chain(optax.sgd(1.0), T.reduce_on_plateau(factor=0.5, patience=1))
    tx = optax.MultiSteps(optax.apply_if_finite(inner, 3), 2)
    s = tx.init(p)
    for loss in [1.0, 1.0]:
        s = T.report_validation_loss(s, loss)
    found = [
        x
        for x in jax.tree.leaves(s, is_leaf=lambda x: isinstance(x, T.PlateauState))
        if isinstance(x, T.PlateauState)
    ]
    assert len(found) == 1 and float(found[0].scale) == 0.5
