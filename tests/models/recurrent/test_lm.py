"""RecurrentLM: shapes, carried state, weight-drop, AR/TAR, dropouts, tying, dtypes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import base_config
from jaxlm.models import get_model
from jaxlm.models.recurrent import RecurrentLM
from jaxlm.precision import Policy

CELLS = ["rnn", "lstm", "gru"]
TOKENS = jax.random.randint(jax.random.key(1), (3, 10), 0, 17)


def _model(cell="lstm", **kw) -> RecurrentLM:
    return RecurrentLM(vocab_size=17, cell=cell, embed_dim=6, hidden_sizes=(8, 5), **kw)


@functools.cache
def _params(cell: str, tie: bool = False):
    model = _model(cell, tie_embeddings=tie)
    return jax.jit(model.init)(jax.random.key(0), TOKENS, model.initial_carry(3))["params"]


@jax.jit(static_argnums=0)
def _fwd(model, params, tokens, carry, key=None):
    """Evaluation forward pass, or a training one when ``key`` is given."""
    if key is None:
        return model.apply({"params": params}, tokens, carry)
    return model.apply(
        {"params": params}, tokens, carry, deterministic=False, rngs={"dropout": key}
    )


@jax.jit(static_argnums=0)
def _train_with_h(model, params, key):
    """A training forward pass: ``aux`` and the last recurrent layer's output ``[B, T, H]``."""
    (_, _, aux), state = model.apply(
        {"params": params},
        TOKENS,
        model.initial_carry(3),
        deterministic=False,
        rngs={"dropout": key},
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    return aux, state["intermediates"]["layers_1"]["__call__"][0][0]


@jax.jit(static_argnums=0)
def _grad(model, params, key, tokens=TOKENS):
    def loss(p):
        logits, _, _ = model.apply(
            {"params": p},
            tokens,
            model.initial_carry(3),
            deterministic=False,
            rngs={"dropout": key},
        )
        return jnp.sum(logits**2)

    return jax.grad(loss)(params)


@pytest.mark.parametrize("cell", CELLS)
def test_shapes_names_and_carried_state(cell):
    model, params = _model(cell), _params(cell)
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    assert params["layers_0"]["ih"]["kernel"].shape == (6, gates * 8)
    assert params["layers_0"]["hh"]["kernel"].shape == (8, gates * 8)
    assert params["layers_1"]["ih"]["kernel"].shape == (8, gates * 5)  # per-layer widths
    assert params["head"]["kernel"].shape == (5, 17)
    assert ("bias" in params["layers_1"]["hh"]) == (cell == "gru")
    carry0 = model.initial_carry(3)
    whole, carry_whole, aux = _fwd(model, params, TOKENS, carry0)
    assert whole.shape == (3, 10, 17) and whole.dtype == jnp.float32 and aux == {}
    assert jax.tree.map(jnp.shape, carry_whole) == jax.tree.map(jnp.shape, carry0)
    # Two half windows with the carry passed on equal the whole window.
    first, carry, _ = _fwd(model, params, TOKENS[:, :5], carry0)
    second, carry, _ = _fwd(model, params, TOKENS[:, 5:], carry)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), carry, carry_whole)


@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_is_one_mask_per_window(cell):
    # A weight dropped for the whole window has exactly zero gradient; a mask per time step
    # would leave almost none at zero over 10 steps.
    model, params = _model(cell, weight_drop=(0.5, 0.0)), _params(cell)
    g = _grad(model, params, jax.random.key(2))
    zero = float(jnp.mean(g["layers_0"]["hh"]["kernel"] == 0))
    assert 0.35 < zero < 0.65, zero
    assert float(jnp.mean(g["layers_1"]["hh"]["kernel"] == 0)) < 0.05  # per-layer: not dropped
    g2 = _grad(model, params, jax.random.key(3))["layers_0"]["hh"]["kernel"]
    assert not np.array_equal(g["layers_0"]["hh"]["kernel"] == 0, g2 == 0)  # fresh key, mask
    # Evaluation does not drop weights.
    a, _, _ = _fwd(model, params, TOKENS, model.initial_carry(3))
    b, _, _ = _fwd(_model(cell), params, TOKENS, model.initial_carry(3))
    np.testing.assert_array_equal(a, b)


def test_per_layer_values_must_match_the_layers():
    with pytest.raises(ValueError, match="weight_drop"):
        jax.eval_shape(
            _model(weight_drop=(0.1, 0.2, 0.3)).init,
            jax.random.key(0),
            TOKENS,
            _model().initial_carry(3),
        )


@pytest.mark.parametrize("cell", CELLS)
def test_ar_tar_equal_the_hand_computation(cell):
    model, params = _model(cell, ar=2.0, tar=1.0), _params(cell)
    aux, h = _train_with_h(model, params, jax.random.key(0))  # no dropout: h is both
    want = 2.0 * jnp.mean(h**2) + 1.0 * jnp.mean((h[:, 1:] - h[:, :-1]) ** 2)
    assert aux["reg_loss"].dtype == jnp.float32
    np.testing.assert_allclose(aux["reg_loss"], want, rtol=1e-5)
    _, _, aux_eval = _fwd(model, params, TOKENS, model.initial_carry(3))
    assert "reg_loss" not in aux_eval  # evaluation adds nothing


def test_ar_sees_the_dropped_output_and_tar_the_raw_one():
    params = _params("lstm")
    key = jax.random.key(4)
    ar, h = _train_with_h(_model(ar=1.0, dropout=0.5), params, key)
    tar, h2 = _train_with_h(_model(tar=1.0, dropout=0.5), params, key)
    np.testing.assert_array_equal(h, h2)
    # Locked dropout at 0.5 zeroes about half the units and doubles the rest: AR ~ 2 mean(h^2).
    assert 1.3 < float(ar["reg_loss"] / jnp.mean(h**2)) < 2.7
    np.testing.assert_allclose(tar["reg_loss"], jnp.mean((h[:, 1:] - h[:, :-1]) ** 2), rtol=1e-5)


def test_embedding_dropout_drops_whole_words():
    model, params = _model(embed_dropout=0.5), _params("lstm")
    g = _grad(model, params, jax.random.key(5))["embed"]["embedding"]
    used = np.unique(np.asarray(TOKENS))
    dropped = np.all(np.asarray(g)[used] == 0, axis=1)
    assert 0 < dropped.sum() < len(used)  # some words gone everywhere they appear
    # Five words, about six occurrences each: a per-occurrence mask would almost never zero a
    # whole row (0.5 ** 6), a per-word mask zeroes about half of them.
    repeated = jax.random.randint(jax.random.key(6), (3, 10), 0, 5)
    rows = np.asarray(_grad(model, params, jax.random.key(5), repeated)["embed"]["embedding"])[:5]
    zero = np.all(rows == 0, axis=1)
    assert 0 < zero.sum() < 5 and np.all(np.any(rows[~zero] != 0, axis=1))


@pytest.mark.parametrize("cell", ["gru"])
def test_tied_embeddings_with_projection(cell):
    params = _params(cell, tie=True)
    assert "head" not in params and params["proj"]["kernel"].shape == (5, 6)
    model = _model(cell, tie_embeddings=True)
    logits, _, _ = _fwd(model, params, TOKENS, model.initial_carry(3))
    assert logits.shape == (3, 10, 17)
    same = RecurrentLM(
        vocab_size=17, cell=cell, embed_dim=5, hidden_sizes=(8, 5), tie_embeddings=True
    )
    p2 = jax.eval_shape(same.init, jax.random.key(0), TOKENS, same.initial_carry(3))["params"]
    assert "proj" not in p2 and "head" not in p2


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = base_config().model
    cfg.update(embed_dim=8, hidden_sizes=(8,), name="gru")
    model = get_model(cfg, 17, Policy.from_string("params=float32,compute=bfloat16"))
    params = jax.jit(model.init)(jax.random.key(0), TOKENS, model.initial_carry(3))["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    logits, carry, _ = _fwd(model, params, TOKENS, model.initial_carry(3))
    assert logits.dtype == jnp.float32 and carry[0].dtype == jnp.float32


@pytest.mark.parametrize("locked", [True, False])
def test_locked_dropout_shares_one_mask_over_time(locked):
    model = _model(dropout=0.5, locked_dropout=locked)
    _, state = jax.jit(
        lambda p: model.apply(
            {"params": p},
            TOKENS,
            model.initial_carry(3),
            deterministic=False,
            rngs={"dropout": jax.random.key(0)},
            capture_intermediates=True,
            mutable=["intermediates"],
        )
    )(_params("lstm"))
    dropped = np.asarray(state["intermediates"]["Dropout_0"]["__call__"][0]) == 0  # [B, T, E]
    same_over_time = np.all(dropped == dropped[:, :1], axis=1).all()
    assert same_over_time == locked and 0.2 < dropped.mean() < 0.8
