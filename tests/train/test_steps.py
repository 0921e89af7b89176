"""jaxlm.train.steps: the train step is one pure function of (state, batch)."""

from __future__ import annotations

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


def test_the_train_step_is_pure_and_advances_the_step():
    config = load_config("lstm:smoke")
    setup = state.build(config, 30)
    step = jax.jit(make_train_step(setup.model, setup.tx, optim.learning_rate(config)))
    s0 = jax.jit(setup.init)()
    a, ma = step(s0, BATCH)
    b, mb = step(s0, BATCH)  # the same inputs, the same outputs: dropout keys are fold_in(step)
    for x, y in zip(jax.tree.leaves((a, ma)), jax.tree.leaves((b, mb)), strict=True):
        np.testing.assert_array_equal(x, y)
    assert int(a.step) == 1 and float(ma["loss"]) > 0 and float(ma["lr"]) == 0.0  # warm-up
    c, _ = step(a, BATCH)
    assert int(c.step) == 2 and not np.array_equal(c.carry[0][1], a.carry[0][1])


def test_reset_and_carry_state_start_the_window_from_zero():
    config = load_config("lstm:smoke")
    setup = state.build(config, 30)
    s1, _ = jax.jit(make_train_step(setup.model, setup.tx, lambda s: 0.1))(
        jax.jit(setup.init)(), BATCH
    )
    carried = jax.jit(make_train_step(setup.model, setup.tx, lambda s: 0.1))
    fresh = jax.jit(make_train_step(setup.model, setup.tx, lambda s: 0.1, carry_state=False))
    _, m_carried = carried(s1, BATCH)
    _, m_fresh = fresh(s1, BATCH)
    _, m_reset = carried(s1, dict(BATCH, reset=jnp.asarray(True)))
    assert float(m_fresh["loss"]) == float(m_reset["loss"]) != float(m_carried["loss"])


def test_label_smoothing_reports_the_plain_log_likelihood():
    config = load_config("lstm:smoke")
    setup = state.build(config, 30)
    s0 = jax.jit(setup.init)()
    plain = make_train_step(setup.model, setup.tx, lambda s: 0.1)
    smoothed = make_train_step(setup.model, setup.tx, lambda s: 0.1, label_smoothing=0.2)
    (_, m1), (_, m2) = jax.jit(plain)(s0, BATCH), jax.jit(smoothed)(s0, BATCH)
    assert float(m1["loss"]) == float(m2["loss"]) and float(m1["grad_norm"]) != float(
        m2["grad_norm"]
    )


def test_jit_train_step_donates_the_state_and_keeps_its_shardings():
    config = load_config("lstm:smoke")
    setup = state.build(config, 30)
    mesh = sharding.make_mesh()
    shardings = sharding.state_shardings(setup.abstract, mesh)
    s0 = jax.jit(setup.init, out_shardings=shardings)()
    step = jit_train_step(setup, optim.learning_rate(config), shardings, mesh, config.train)
    with jax.set_mesh(mesh):
        s1, _ = step(s0, sharding.device_batch(jax.device_get(BATCH), mesh))
    assert s0.params["head"]["kernel"].is_deleted()  # donated
    assert s1.carry[0][0].sharding.spec == shardings.carry[0][0].spec
