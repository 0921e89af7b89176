"""Dropout on the LSTM's forget, output and update gates (and a GRU's candidate): one cell step
against a hand computation, the hand-written backward pass against autodiff and finite
differences, masks shared over time when locked, and rates of 0 leaving everything as it was."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxlm.models.recurrent import LSTMLayer, RecurrentLM, gate_mask, kernels
from jaxlm.models.recurrent.kernels import recurrence, recurrent_layer, reference_layer

B, D, H = 4, 3, 5  # batch, input width, hidden width
RNG = np.random.default_rng(0)
X = RNG.normal(size=(1, B, D)).astype(np.float32)
C0, H0 = RNG.normal(size=(2, B, H)).astype(np.float32)
MASKS = (RNG.integers(0, 2, (3, B, H)) * 2.0).astype(np.float32)  # 0 or 1 / 0.5


def _weights(gates: int):
    rng = np.random.default_rng(gates)
    return tuple(
        (0.5 * rng.normal(size=shape)).astype(np.float32)
        for shape in ((D, gates * H), (gates * H,), (H, gates * H), (gates * H,))
    )


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


_STEP = jax.jit(functools.partial(recurrent_layer, "lstm"))


# One mask for the window ([B, H]) with the others off, or all three as per-step ([1, B, H]).
@pytest.mark.parametrize("dropped", ["forget", "output", "update", "all_per_step"])
def test_one_lstm_step_equals_the_hand_computation(dropped):
    w_ih, b_ih, w_hh, _ = _weights(4)
    per_step = dropped == "all_per_step"
    mf, mo, mg = (
        MASKS[j] if dropped in (gate, "all_per_step") else None
        for j, gate in enumerate(("forget", "output", "update"))
    )
    masks = tuple(None if m is None else m[None] if per_step else m for m in (mf, mo, mg))
    h, (c1, h1) = _STEP(X, w_ih, b_ih, w_hh, None, (C0, H0), masks)
    # numpy, in PyTorch's gate order (input, forget, cell, output).
    z = X[0] @ w_ih + b_ih + H0 @ w_hh
    i, f, g, o = np.split(z, 4, axis=-1)
    i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
    one = np.ones((B, H), np.float32)
    mf, mo, mg = (one if m is None else m for m in (mf, mo, mg))
    c_want = (f * mf) * C0 + i * (g * mg)  # the update's dropout: c = f c + i d(g)
    h_want = (o * mo) * np.tanh(c_want)
    np.testing.assert_allclose(c1, c_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h1, h_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h[0], h_want, rtol=1e-5, atol=1e-6)
    # The masks matter: without them the step is another one.
    c_plain = f * C0 + i * g
    assert not np.allclose(h_want, o * np.tanh(c_plain), atol=1e-3)


def test_one_gru_step_drops_the_candidate():
    w_ih, b_ih, w_hh, b_hh = _weights(3)
    mn = MASKS[2]
    _, h1 = recurrent_layer("gru", X, w_ih, b_ih, w_hh, b_hh, H0, (None, None, mn))
    xr, xz, xn = np.split(X[0] @ w_ih + b_ih, 3, axis=-1)
    hr, hz, hn = np.split(H0 @ w_hh + b_hh, 3, axis=-1)
    r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    np.testing.assert_allclose(h1, (1 - z) * (n * mn) + z * H0, rtol=1e-5, atol=1e-6)


def _window_args(cell: str, t: int = 5, b: int = 4):
    g = {"lstm": 4, "gru": 3}[cell]
    ks = jax.random.split(jax.random.key(1), 8)
    x = jax.random.normal(ks[0], (t, b, D))
    w_ih = 0.5 * jax.random.normal(ks[1], (D, g * H))
    b_ih = jax.random.normal(ks[2], (g * H,))
    w_hh = 0.5 * jax.random.normal(ks[3], (H, g * H))
    b_hh = jax.random.normal(ks[4], (g * H,)) if cell == "gru" else None
    h0 = jax.random.normal(ks[5], (b, H))
    carry = (jax.random.normal(ks[6], (b, H)), h0) if cell == "lstm" else h0
    return x, w_ih, b_ih, w_hh, b_hh, carry


def _masks(cell: str, locked: bool, t: int = 5, b: int = 4):
    shape = (b, H) if locked else (t, b, H)
    keys = jax.random.split(jax.random.key(7), 3)
    masks = tuple(gate_mask(k, 0.4, shape) for k in keys)
    return masks if cell == "lstm" else (None, None, masks[2])


# groups=2: two batch slices side by side, each with its slice of the masks (kernels._scan).
@pytest.mark.parametrize(
    "cell, locked, groups",
    [
        ("lstm", True, 2),
        ("lstm", False, 1),
        ("gru", False, 2),
    ],
)
def test_the_backward_pass_with_masks_equals_autodiff(cell, locked, groups, monkeypatch):
    monkeypatch.setattr(kernels, "batch_groups", lambda batch: groups)
    args, masks = _window_args(cell), _masks(cell, locked)
    r = jax.random.normal(jax.random.key(9), (5, 4, H))

    def loss(fn, *a):
        out, fin = fn(cell, *a, masks)
        return jnp.sum(out * r) + sum(jnp.sum(f * f) for f in jax.tree.leaves(fin))

    nums = (0, 1, 2, 3, 4, 5)
    ours = jax.jit(jax.value_and_grad(functools.partial(loss, recurrent_layer), nums))(*args)
    ref = jax.jit(jax.value_and_grad(functools.partial(loss, reference_layer), nums))(*args)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), ours, ref)


def test_the_backward_pass_with_masks_passes_check_grads(cell="lstm"):
    x, w_ih, b_ih, w_hh, b_hh, carry = _window_args(cell, t=3, b=2)
    masks = _masks(cell, locked=False, t=3, b=2)
    # The loop alone (recurrence: the vocabulary-table path's own backward pass).
    xw = jnp.einsum("tbi,ig->tbg", x, w_ih)

    def f(xw, b_ih, w_hh, carry):
        out, fin = recurrence(cell, xw, b_ih, w_hh, b_hh, carry, masks)
        return jnp.sum(out**2) + sum(jnp.sum(a**2) for a in jax.tree.leaves(fin))

    check_grads(jax.jit(f), (xw, b_ih, w_hh, carry), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


@jax.jit(static_argnums=0)
def _layer_h(layer, params, x, key=None):
    """The layer's output ``[B, T, H]`` in training (``key`` given) or evaluation."""
    carry = layer.initial_carry(x.shape[0])
    if key is None:
        return layer.apply(params, x, carry)[0]
    return layer.apply(params, x, carry, deterministic=False, rngs={"dropout": key})[0]


X_LAYER = jax.random.normal(jax.random.key(0), (6, 12, D))
LSTM_PARAMS = jax.jit(LSTMLayer(16).init)(
    jax.random.key(1), X_LAYER, LSTMLayer(16).initial_carry(6)
)


@pytest.mark.parametrize("locked", [True, False])
def test_masks_are_shared_over_time_when_locked(locked):
    # Output gate: h_t = d(o_t) tanh(c_t), so the zeros of h are the mask's.
    layer = LSTMLayer(16, gate_dropout_output=0.5, locked_gates=locked)
    zero = np.asarray(_layer_h(layer, LSTM_PARAMS, X_LAYER, jax.random.key(2))) == 0
    assert 0.3 < zero.mean() < 0.7
    assert np.all(zero == zero[:, :1]) == locked
    other = np.asarray(_layer_h(layer, LSTM_PARAMS, X_LAYER, jax.random.key(3))) == 0
    assert not np.array_equal(zero, other)  # another key, other masks
    # Update (candidate): from a zero state a unit whose candidate is dropped for the whole
    # window never holds anything (c = f c + i d(g) stays 0); a fresh mask per step almost
    # always lets some of it in over 12 steps (0.5 ** 12).
    layer = LSTMLayer(16, gate_dropout_update=0.5, locked_gates=locked)
    never = np.all(np.asarray(_layer_h(layer, LSTM_PARAMS, X_LAYER, jax.random.key(2))) == 0, 1)
    assert (0.3 < never.mean() < 0.7) if locked else never.mean() < 0.02


def test_masks_are_scaled_and_drop_at_the_rate():
    m = np.asarray(gate_mask(jax.random.key(0), 0.25, (200, 100)))
    assert set(np.unique(m)) == {0.0, np.float32(1 / 0.75)}
    assert abs((m == 0).mean() - 0.25) < 0.01
    traced = jax.jit(lambda r: gate_mask(jax.random.key(0), r, (200, 100)))(0.25)
    np.testing.assert_allclose(traced, m, rtol=1e-6)  # a traced rate draws the same mask


TOKENS = jax.random.randint(jax.random.key(1), (3, 10), 0, 17)
GATE_FIELDS = ("gate_dropout_forget", "gate_dropout_output", "gate_dropout_update")


def _lm(**kw) -> RecurrentLM:
    return RecurrentLM(vocab_size=17, embed_dim=6, hidden_sizes=(8,), dropout=0.3, **kw)


def _train_loss(model: RecurrentLM):
    def loss(p):
        logits, _, _ = model.apply(
            {"params": p},
            TOKENS,
            model.initial_carry(3),
            deterministic=False,
            rngs={"dropout": jax.random.key(5)},
        )
        return jnp.sum(logits**2)

    return jax.value_and_grad(loss)


def test_rates_of_zero_change_nothing():
    model = _lm()
    params = jax.jit(model.init)(jax.random.key(0), TOKENS, model.initial_carry(3))["params"]
    off = jax.jit(_train_loss(model))(params)

    @jax.jit
    def traced(p, rate):  # traced rates are always on: a traced 0 must drop nothing
        return _train_loss(_lm(**dict.fromkeys(GATE_FIELDS, rate)))(p)

    zero = traced(params, 0.0)
    # The same numbers: the other dropouts draw the same masks with the gate masks present.
    jax.tree.map(np.testing.assert_array_equal, zero, off)
    on = traced(params, 0.3)
    assert float(on[0]) != float(off[0])

    # A static 0 leaves the gate masks out of the program: no random draws beyond the other
    # dropouts' (a traced rate adds one per gate and layer).
    def draws(model):
        return str(jax.make_jaxpr(_train_loss(model))(params)).count("random_bits")

    static_zero = _lm(**dict.fromkeys(GATE_FIELDS, 0.0))
    assert draws(static_zero) == draws(model)
    assert draws(_lm(gate_dropout_update=0.3)) == draws(model) + 1

    # Evaluation is deterministic: with nonzero rates it is the very program of none.
    def evaluation(model):
        return str(
            jax.make_jaxpr(lambda p: model.apply({"params": p}, TOKENS, model.initial_carry(3)))(
                params
            )
        )

    assert evaluation(_lm(**dict.fromkeys(GATE_FIELDS, 0.3))) == evaluation(model)


@pytest.mark.parametrize(
    "cell, field", [("gru", "gate_dropout_forget"), ("rnn", "gate_dropout_update")]
)
def test_cells_without_the_gate_refuse_it(cell, field):
    model = RecurrentLM(vocab_size=17, cell=cell, embed_dim=6, hidden_sizes=(8,), **{field: 0.2})
    with pytest.raises(ValueError, match=f"{field}: a {cell} layer has no"):
        jax.eval_shape(model.init, jax.random.key(0), TOKENS, model.initial_carry(3))
