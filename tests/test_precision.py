"""Dtype policies, dynamic loss scaling, and bfloat16 / float16 training against float32."""

import functools
import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm import losses, precision
from jaxlm.models import get_model
from jaxlm.precision import DynamicLossScaleState, Policy, dynamic_loss_scale, loss_scale


def test_policy_strings():
    p = Policy.from_string("params=float32,compute=bfloat16,output=float32")
    assert (p.param_dtype, p.compute_dtype, p.output_dtype) == (
        jnp.float32,
        jnp.bfloat16,
        jnp.float32,
    )
    assert Policy.from_string("f16").compute_dtype == jnp.float16
    assert Policy.from_string("float16").needs_loss_scaling
    assert not Policy.from_string("bfloat16").needs_loss_scaling
    with pytest.raises(ValueError, match="unknown dtype"):
        Policy.from_string("compute=float8")
    with pytest.raises(ValueError, match="unknown field"):
        Policy.from_string("weights=float32")


PARAMS = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
GRADS = {"w": jnp.array([0.1, 0.2, -0.3]), "b": jnp.array(0.05)}


def _scaled(scale, grads=GRADS):
    return jax.tree.map(lambda g: g * scale, grads)


def test_growth_after_n_finite_steps_and_unscaled_updates():
    tx = dynamic_loss_scale(optax.adam(0.1), init_scale=8.0, growth_interval=3)
    ref = optax.adam(0.1)
    state, ref_state = tx.init(PARAMS), ref.init(PARAMS)
    update = jax.jit(tx.update)
    scales = []
    for _ in range(7):
        s = float(loss_scale(state))
        updates, state = update(_scaled(s), state, PARAMS)
        want, ref_state = ref.update(GRADS, ref_state, PARAMS)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, want)
        scales.append(float(loss_scale(state)))
    assert scales == [8, 8, 16, 16, 16, 32, 32]
    assert int(state.skipped) == 0 and bool(state.last_finite)


@pytest.mark.parametrize("bad", [jnp.inf, -jnp.inf, jnp.nan])
def test_overflow_halves_the_scale_and_skips_the_step(bad):
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1))
    tx = dynamic_loss_scale(tx, init_scale=2.0**10, growth_interval=2)
    state = tx.init(PARAMS)
    update = jax.jit(tx.update)
    _, state = update(_scaled(2.0**10), state, PARAMS)  # one good step: good_steps = 1
    before = state
    grads = _scaled(2.0**10)
    grads["w"] = grads["w"].at[1].set(bad)  # injected overflow
    updates, state = update(grads, state, PARAMS)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))  # step skipped
    jax.tree.map(np.testing.assert_array_equal, state.inner_state, before.inner_state)
    assert float(state.scale) == 2.0**9 and int(state.good_steps) == 0
    assert int(state.skipped) == 1 and not bool(state.last_finite)
    metrics = precision.loss_scale_metrics(state)
    assert float(metrics["step_applied"]) == 0.0 and float(metrics["skipped_steps"]) == 1.0
    # The next finite step applies normally with the halved scale.
    updates, state = update(_scaled(2.0**9), state, PARAMS)
    assert all(np.all(np.asarray(u) != 0) for u in jax.tree.leaves(updates))
    assert int(state.inner_state[1][0].count) == 2  # adam counted the two applied steps only


def test_scale_floor_and_discovery_inside_other_states():
    tx = dynamic_loss_scale(optax.sgd(0.1), init_scale=2.0, min_scale=1.0)
    state = tx.init(PARAMS)
    for _ in range(3):
        _, state = tx.update(_scaled(jnp.inf), state, PARAMS)
    assert float(state.scale) == 1.0
    wrapped = optax.MultiSteps(tx, every_k_schedule=2)
    assert float(loss_scale(wrapped.init(PARAMS))) == 2.0
    assert float(loss_scale(optax.adam(0.1).init(PARAMS))) == 1.0
    assert precision.wrap_optimizer(optax.sgd(0.1), Policy()) is not None
    plain = optax.sgd(0.1)
    assert precision.wrap_optimizer(plain, Policy()) is plain  # float32: nothing to scale
    assert precision.wrap_optimizer(plain, Policy.from_string("bfloat16")) is plain
    f16 = precision.wrap_optimizer(optax.sgd(0.1), Policy.from_string("float16"))
    assert isinstance(f16.init(PARAMS), DynamicLossScaleState)
    with pytest.raises(ValueError, match="backoff_factor"):
        dynamic_loss_scale(optax.sgd(0.1), backoff_factor=2.0)


# --------------------------------------------------------------------------------------------
# Training a small model: bfloat16 tracks float32; float16 with loss scaling survives overflow.

TEXT = inspect.getsource(precision)[:6000]
VOCAB = sorted(set(TEXT))
DATA = np.array([VOCAB.index(c) for c in TEXT], np.int32)


def _batch(step: int, batch: int, seq: int) -> jnp.ndarray:
    starts = np.random.default_rng(step).integers(0, len(DATA) - seq - 1, batch)
    return jnp.asarray(np.stack([DATA[s : s + seq + 1] for s in starts]))


def _train(spec: str, steps: int, tx_wrap=lambda tx: tx):
    """Losses of the smoke LSTM (configs/lstm.py:smoke model and optimizer) under ``spec``."""
    from jaxlm.config import load_config
    from jaxlm.optim import build_optimizer

    config = load_config(f"{Path(__file__).parents[1] / 'configs/lstm.py'}:smoke")
    policy = Policy.from_string(spec)
    model = get_model(config.model, len(VOCAB), policy)
    tx = tx_wrap(build_optimizer(config))
    b, t = config.data.batch_size, config.data.seq_len
    params = jax.jit(model.init)(jax.random.key(0), _batch(0, b, t)[:, :-1], model.initial_carry(b))
    params = params["params"]
    opt_state = jax.jit(tx.init)(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, tokens, key):
        def loss_fn(p):
            logits, _, _ = model.apply(
                {"params": p},
                tokens[:, :-1],
                model.initial_carry(b),
                deterministic=False,
                rngs={"dropout": key},
            )
            total, count = losses.cross_entropy(logits, tokens[:, 1:])
            return loss_scale(opt_state) * total / count, total / count

        (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    out = []
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, _batch(i, b, t), jax.random.key(i))
        out.append(float(loss))
    return np.array(out), params, opt_state


def test_bfloat16_losses_track_float32():
    f32, _, _ = _train("float32", 30)
    bf16, params, _ = _train("params=float32,compute=bfloat16,output=float32", 30)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert f32[-5:].mean() < f32[:5].mean() - 0.5  # it learns
    # Stated tolerance: every step within 0.02 nats, and within 0.5% on average (measured
    # here: at most 0.00066 nats apart over these 30 steps).
    np.testing.assert_allclose(bf16, f32, atol=0.02)
    assert np.mean(np.abs(bf16 - f32) / f32) < 0.005


def test_float16_with_loss_scaling_survives_overflow():
    # 2^24 times the loss overflows float16 (max 65504) in the backward pass at first: the
    # scale must back off, skipping those steps, and training then proceeds.
    def wrap(tx):
        return dynamic_loss_scale(tx, init_scale=2.0**24, growth_interval=1000)

    f16, params, opt_state = _train("float16", 30, wrap)
    assert int(opt_state.skipped) >= 1 and float(opt_state.scale) < 2.0**24
    assert np.all(np.isfinite(f16))
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))
    assert f16[-5:].mean() < f16[:5].mean() - 0.5


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_output_dtype_sets_the_logits_dtype(name):
    from jaxlm.config import base_config
    from jaxlm.models import get_model

    config = base_config(name).model
    tokens = jnp.zeros((2, 5), jnp.int32)
    for policy, want in [
        (Policy(), jnp.float32),
        (Policy.from_string("params=float32,compute=bfloat16,output=bfloat16"), jnp.bfloat16),
    ]:
        model = get_model(config, vocab_size=11, policy=policy)
        carry = model.initial_carry(2)
        params = model.init(jax.random.key(0), tokens, carry)["params"]
        logits, _, _ = model.apply({"params": params}, tokens, carry)
        assert logits.dtype == want
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


DIMS = (((1,), (0,)), ((), ()))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_dot_general_is_the_narrow_product_with_float32_sums(dtype):
    ka, kb = jax.random.split(jax.random.key(0))
    a, b = jax.random.normal(ka, (16, 32)), jax.random.normal(kb, (32, 8))
    out = precision.dot_general(a, b, DIMS, dtype)
    assert out.dtype == jnp.float32
    # The products of the rounded operands, exact in float32, summed in float32.
    wide = [x.astype(dtype).astype(jnp.float32) for x in (a, b)]
    np.testing.assert_allclose(out, jax.lax.dot_general(*wide, DIMS), rtol=1e-6, atol=1e-6)
    native = jax.lax.dot_general(
        a.astype(dtype), b.astype(dtype), DIMS, preferred_element_type=jnp.float32
    )
    np.testing.assert_allclose(out, native, rtol=1e-5, atol=1e-5)
    # Not the float32 product: the rounding is there.
    assert np.abs(out - a @ b).max() > 1e-3
    # In float32 it is plain dot_general.
    np.testing.assert_array_equal(
        precision.dot_general(a, b, DIMS, jnp.float32), jax.lax.dot_general(a, b, DIMS)
    )


def test_dot_general_gradients_and_what_the_backward_pass_keeps():
    a, b = jnp.linspace(-1, 1, 12).reshape(3, 4), jnp.linspace(0.5, 2, 20).reshape(4, 5)

    def ours(a, b):
        return jnp.sum(jnp.sin(precision.dot_general(a, b, DIMS, jnp.bfloat16)))

    def reference(a, b):
        return jnp.sum(jnp.sin(jax.lax.dot_general(a, b, DIMS)))

    # The gradient at the rounded operands, passed straight through the rounding (unrounded).
    wide = [x.astype(jnp.bfloat16).astype(jnp.float32) for x in (a, b)]
    grads, expected = jax.grad(ours, (0, 1))(a, b), jax.grad(reference, (0, 1))(*wide)
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # The product's operands are kept in bfloat16 (on CPU the float32 copies are made again in
    # the backward pass): only sin's float32 input is kept beside them.
    inner = jax.vjp(lambda a, b: precision.dot_general(a, b, DIMS, jnp.bfloat16), a, b)[1]
    kept = [x.dtype for x in jax.tree.leaves(inner) if hasattr(x, "dtype")]
    assert kept and all(d == jnp.bfloat16 for d in kept), kept
    # Each operand's gradient comes back in its own dtype: float32 here, bfloat16 for bfloat16.
    assert all(g.dtype == jnp.float32 for g in grads)
    low = jax.grad(ours, (0, 1))(a.astype(jnp.bfloat16), b)
    assert (low[0].dtype, low[1].dtype) == (jnp.bfloat16, jnp.float32)


def test_dense_is_flax_dense_in_float32_and_close_in_bfloat16():
    import flax.linen as nn

    from jaxlm.models.common import Dense

    x = jax.random.normal(jax.random.key(1), (6, 16))
    params = nn.Dense(8).init(jax.random.key(2), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
    assert jax.tree.structure(Dense(8).init(jax.random.key(2), x)) == jax.tree.structure(params)
    np.testing.assert_array_equal(Dense(8).apply(params, x), nn.Dense(8).apply(params, x))
    ours = Dense(8, dtype=jnp.bfloat16).apply(params, x)
    flax_bf16 = nn.Dense(8, dtype=jnp.bfloat16).apply(params, x)
    assert ours.dtype == flax_bf16.dtype == jnp.bfloat16
    exact = nn.Dense(8).apply(params, x)
    # One rounding of an exact-product sum: within bfloat16's half-ulp of the float32 layer,
    # and no further from it than flax's (which rounds three times).
    err = np.abs(np.asarray(ours, np.float32) - exact)
    assert np.all(err <= 2.0**-8 * np.abs(exact) + 0.02)
    assert err.mean() <= np.abs(np.asarray(flax_bf16, np.float32) - exact).mean()
