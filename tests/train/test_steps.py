"""jaxlm.train.steps: the train step is one pure function of (state, batch)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import optim, sharding, state
from jaxlm.config import load_config
from jaxlm.train.steps import jit_train_step, make_train_step

BATCH = {
    "inputs": jnp.asarray(np.random.default_rng(0).integers(0, 30, (8, 32)), jnp.int32),
    "targets": jnp.asarray(np.random.default_rng(1).integers(0, 30, (8, 32)), jnp.int32),
    "reset": jnp.asarray(False),
}


@functools.cache
def setup() -> state.Setup:
    return state.build(load_config("lstm:smoke"), 30)


@functools.cache
def step(**options):
    """The smoke LSTM's train step, jitted once per set of options."""
    s = setup()
    return jax.jit(
        make_train_step(s.model, s.tx, optim.learning_rate(load_config("lstm:smoke")), **options)
    )


def test_the_train_step_is_pure_and_advances_the_step():
    s0 = jax.jit(setup().init)()
    a, ma = step()(s0, BATCH)
    b, mb = step()(s0, BATCH)  # the same inputs, the same outputs: dropout keys are fold_in(step)
    for x, y in zip(jax.tree.leaves((a, ma)), jax.tree.leaves((b, mb)), strict=True):
        np.testing.assert_array_equal(x, y)
    assert int(a.step) == 1 and float(ma["loss"]) > 0 and float(ma["lr"]) == 0.0  # warm-up
    c, mc = step()(a, BATCH)
    assert int(c.step) == 2 and not np.array_equal(c.carry[0][1], a.carry[0][1])
    assert float(mc["lr"]) > 0


def test_reset_and_carry_state_start_the_window_from_zero():
    s1, _ = step()(jax.jit(setup().init)(), BATCH)
    _, m_carried = step()(s1, BATCH)
    _, m_fresh = step(carry_state=False)(s1, BATCH)
    _, m_reset = step()(s1, dict(BATCH, reset=jnp.asarray(True)))
    assert float(m_fresh["loss"]) == float(m_reset["loss"]) != float(m_carried["loss"])


def test_label_smoothing_reports_the_plain_log_likelihood():
    s0 = jax.jit(setup().init)()
    (_, plain), (_, smoothed) = step()(s0, BATCH), step(label_smoothing=0.2)(s0, BATCH)
    assert float(plain["loss"]) == float(smoothed["loss"])
    assert float(plain["grad_norm"]) != float(smoothed["grad_norm"])  # it trains on another loss


def test_jit_train_step_donates_the_state_and_keeps_its_shardings():
    config = load_config("lstm:smoke")
    mesh = sharding.make_mesh()
    shardings = sharding.state_shardings(setup().abstract, mesh)
    s0 = jax.jit(setup().init, out_shardings=shardings)()
    train_step = jit_train_step(setup(), optim.learning_rate(config), shardings, mesh, config.train)
    with jax.set_mesh(mesh):
        s1, _ = train_step(s0, sharding.device_batch(jax.device_get(BATCH), mesh))
    assert s0.params["head"]["kernel"].is_deleted()  # donated
    assert s1.carry[0][0].sharding.spec == shardings.carry[0][0].spec
