"""Recurrent language models: a stack of recurrent layers between an embedding and a softmax.

Three cells share one layer shape: ``rnn`` (Elman, tanh), ``lstm`` and ``gru``. Every layer runs
its input-to-hidden product for the whole window as one matrix multiply outside the time loop;
only the hidden-to-hidden product runs inside ``jax.lax.scan``, and the gates of a cell are one
fused matrix multiply. When the first layer reads an embedding of a vocabulary no larger than
half the window's tokens (characters), its input projection is a lookup into the ``[V, G]``
table ``embedding @ W_ih`` instead: the same products, once per vocabulary entry. Gate orders
are PyTorch's (LSTM: input, forget, cell, output; GRU: reset, update, new), so weights map one
to one onto ``torch.nn.LSTM``/``GRU``/``RNN``:

=================  ===========================  ====================================
ours               shape                        torch (``_l{i}`` suffix per layer)
=================  ===========================  ====================================
``ih/kernel``      ``[I, G*H]``                 ``weight_ih.T``
``ih/bias``        ``[G*H]``                    ``bias_ih`` (+ ``bias_hh`` for LSTM, RNN)
``hh/kernel``      ``[H, G*H]``                 ``weight_hh.T``
``hh/bias``        ``[3H]`` (GRU only)          ``bias_hh``
=================  ===========================  ====================================

The AWD-LSTM regularizers (Merity et al. 2017, https://arxiv.org/abs/1708.02182) are switches
of :class:`RecurrentLM`: embedding dropout, locked dropout, weight-drop, AR and TAR.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.models.common import on_rows
from jaxlm.runtime.backend import single_cpu_device

Carry = Any
Dtype = Any


def uniform_init(scale: float) -> nn.initializers.Initializer:
    """Uniform initialiser on ``[-scale, scale)``, as Zaremba et al. and AWD-LSTM use.

    Args:
      scale: half-width of the range.

    Returns:
      A flax initializer ``(key, shape, dtype) -> array``.

    Example:
      >>> w = uniform_init(0.1)(jax.random.key(0), (3, 4))
    """

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


# --------------------------------------------------------------------------------------------
# A recurrent layer as one function with a hand-written backward pass.
#
# Forward: the input projection of the whole window is one matrix product; the scan then adds
# the bias and the recurrent product step by step. Reverse-mode autodiff of a scan would
# accumulate the recurrent weight's gradient inside the backward loop, one small [H, B] x [B, G]
# product per step; the backward pass below only carries the state gradient through time (one
# [B, G] x [G, H] product per step, on a transposed copy of the weights made once) and stacks
# the gradients of the gate pre-activations; both weight gradients are then one product each over
# the whole window. The LSTM's four gate activations are one elementwise pass (see _lstm_act).
# `recurrence` is the time loop alone, from a given input projection (a vocabulary table lookup);
# `recurrent_layer` adds the window's input projection and its gradients around it.


def _mm(a: jax.Array, w: jax.Array) -> jax.Array:
    """``a @ w`` in ``w``'s dtype with float32 accumulation and result."""
    return jnp.dot(a.astype(w.dtype), w, preferred_element_type=jnp.float32)


def _gate_consts(hidden: int) -> tuple[jax.Array, jax.Array]:
    """Per-column ``(s, t)`` of ``act(z) = tanh(s z) s + t``: 1/2, 1/2 for the sigmoid gates
    (input, forget, output), 1, 0 for the cell candidate's tanh."""
    half = jnp.full((hidden,), 0.5, jnp.float32)
    one = jnp.ones((hidden,), jnp.float32)
    s = jnp.concatenate([half, half, one, half])
    t = jnp.concatenate([half, half, 0.0 * one, half])
    return s, t


def _lstm_act(z: jax.Array) -> jax.Array:
    """All four LSTM gate activations in one elementwise pass over ``[B, 4H]``.

    ``sigmoid(x) = tanh(x / 2) / 2 + 1/2``, so the input, forget and output columns and the
    cell column's ``tanh`` are one ``tanh(s z) * s + t`` with per-column constants.
    """
    s, t = _gate_consts(z.shape[-1] // 4)
    return jnp.tanh(z * s) * s + t


def _lstm_step(w, b, hb, carry, xw, *, residuals):
    del hb
    c_prev, h = carry
    gates = _lstm_act(xw + b + _mm(h, w))
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = f * c_prev + i * g
    h = o * jnp.tanh(c)
    if residuals:  # c_prev, not c: the backward loop carries c itself (no shifted copy)
        return (c, h), (h, gates, c_prev)
    return (c, h), h


def _lstm_bwd_step(w_t, carry, xs):
    dh_next, dc_next, c = carry
    dh_out, gates, c_prev = xs
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    tc = jnp.tanh(c)
    dh = dh_out + dh_next
    dc = dc_next + dh * o * (1.0 - tc * tc)
    # d act / dz = s^2 - (a - t)^2: a(1 - a) for sigmoid columns, 1 - a^2 for g.
    s, t = _gate_consts(dc.shape[-1])
    u = gates - t
    dgates = jnp.concatenate([dc * g, dc * c_prev, dc * i, dh * tc], axis=-1)
    dz = dgates * (s * s - u * u)
    return (_mm(dz, w_t), dc * f, c_prev), dz


def _gru_step(w, b, hb, h, xw, *, residuals):
    zh = _mm(h, w) + hb
    xr, xz, xn = jnp.split(xw + b, 3, axis=-1)
    hr, hz, hn = jnp.split(zh, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h_new = n + z * (h - n)
    if residuals:
        return h_new, (h_new, jnp.concatenate([r, z, n, hn], -1))
    return h_new, h_new


def _gru_bwd_step(w_t, dh_next, xs):
    dh_out, acts, h_prev = xs
    r, z, n, hn = jnp.split(acts, 4, axis=-1)
    dh = dh_out + dh_next
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dr = dn * hn * r * (1.0 - r)
    dz = dh * (h_prev - n) * z * (1.0 - z)
    dxw = jnp.concatenate([dr, dz, dn], -1)
    dzh = jnp.concatenate([dr, dz, dn * r], -1)
    return dh * z + _mm(dzh, w_t), (dxw, dzh)


def _elman_step(w, b, hb, h, xw, *, residuals):
    del hb, residuals
    h = jnp.tanh(xw + b + _mm(h, w))
    return h, h


def _elman_bwd_step(w_t, dh_next, xs):
    dh_out, h = xs
    da = (dh_out + dh_next) * (1.0 - h * h)
    return _mm(da, w_t), da


_STEPS = {"lstm": _lstm_step, "gru": _gru_step, "rnn": _elman_step}


def _project(x_TxBxI: jax.Array, w_ih: jax.Array) -> jax.Array:
    """The whole window's input projection, float32 ``[T, B, G]`` (bias added in the scan)."""
    t, b, i = x_TxBxI.shape
    return _mm(x_TxBxI.reshape(t * b, i), w_ih).reshape(t, b, -1)


def _tn(a: jax.Array, g: jax.Array) -> jax.Array:
    """``a.T @ g`` over rows (no transposed copy), float32 accumulation and result."""
    return jax.lax.dot_general(a, g, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _nt(g: jax.Array, w: jax.Array) -> jax.Array:
    """``g @ w.T`` (no transposed copy), in ``w``'s dtype with a float32 result."""
    dims = (((1,), (1,)), ((), ()))
    return jax.lax.dot_general(g.astype(w.dtype), w, dims, preferred_element_type=jnp.float32)


def _layer_impl(cell: str, x_TxBxI, w_ih, b_ih, w_hh, b_hh, carry):
    """The plain computation: ``(h_TxBxH, final carry)``; autodiff through it is the reference."""
    step = functools.partial(_STEPS[cell], w_hh, b_ih, b_hh, residuals=False)
    carry, h = jax.lax.scan(step, carry, _project(x_TxBxI, w_ih))
    return h, carry


# The time loop alone, from a given input projection ``xw`` (with a hand-written backward pass).


def _batch_groups(batch: int) -> int:
    """Independent batch slices the time loop runs side by side: 2 on a single CPU device (even
    batches of 8 or more), else 1. XLA's CPU runtime runs independent operations concurrently,
    so one slice's elementwise step overlaps the other's recurrent product: the char-shape LSTM
    loop (B 32, H 512, T 100) runs 45 -> 38 ms on 2 cores. On GPUs it would only halve each
    kernel, and a batch sharded over devices would be resliced at every step."""
    return 2 if single_cpu_device() and batch % 2 == 0 and batch >= 8 else 1


def _scan(step, carry, xs, *, reverse: bool = False):
    """``jax.lax.scan(step, carry, xs, reverse=reverse)`` for time-major ``xs`` (leaves
    ``[T, B, ...]``) and a carry of ``[B, ...]`` leaves, run as :func:`_batch_groups`
    independent batch slices whose per-step outputs go straight into shared ``[T, B, ...]``
    buffers (no concatenation per step)."""
    t, batch = jax.tree.leaves(xs)[0].shape[:2]
    k = _batch_groups(batch)
    if k == 1:
        return jax.lax.scan(step, carry, xs, reverse=reverse)
    n = batch // k
    carries = tuple(jax.tree.map(lambda a, g=g: a[g * n : (g + 1) * n], carry) for g in range(k))
    y_shapes = jax.eval_shape(step, carries[0], jax.tree.map(lambda a: a[0, :n], xs))[1]
    ys = jax.tree.map(lambda s: jnp.zeros((t, batch, *s.shape[1:]), s.dtype), y_shapes)

    def body(j, state):
        carries, ys = state
        i = t - 1 - j if reverse else j
        x_i = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), xs)
        new = []
        for g in range(k):
            c, y = step(carries[g], jax.tree.map(lambda a, g=g: a[g * n : (g + 1) * n], x_i))
            new.append(c)
            ys = jax.tree.map(
                lambda buf, v, g=g: jax.lax.dynamic_update_slice(
                    buf, v[None], (i, g * n) + (0,) * (v.ndim - 1)
                ),
                ys,
                y,
            )
        return tuple(new), ys

    carries, ys = jax.lax.fori_loop(0, t, body, (carries, ys))
    return jax.tree.map(lambda *a: jnp.concatenate(a, 0), *carries), ys


def _recurrence_fwd(cell, xw_TxBxG, b_ih, w_hh, b_hh, carry):
    step = functools.partial(_STEPS[cell], w_hh, b_ih, b_hh, residuals=True)
    final, res = _scan(step, carry, xw_TxBxG)
    h = res[0] if cell != "rnn" else res
    return (h, final), (b_ih, w_hh, b_hh, carry, final, res)


def _transposed(w: jax.Array) -> jax.Array:
    """``w.T`` as its own row-major array (the loop's products run faster on it)."""
    return jax.lax.optimization_barrier(w.T)


def _recurrence_bwd(cell, saved, cts):
    """Cotangents of ``(xw, b_ih, w_hh, b_hh, carry)``."""
    b_ih, w_hh, b_hh, carry0, final, res = saved
    dh_TxBxH, dfinal = cts
    w_t = _transposed(w_hh)
    if cell == "lstm":
        h, gates, c_prev = res
        h0 = carry0[1]
        (dh0, dc0, _), dzh = _scan(
            functools.partial(_lstm_bwd_step, w_t),
            (dfinal[1], dfinal[0], final[0]),
            (dh_TxBxH, gates, c_prev),
            reverse=True,
        )
        dcarry, dxw = (dc0, dh0), dzh
    elif cell == "gru":
        h, acts = res
        h0 = carry0
        h_prev = jnp.concatenate([h0[None], h[:-1]], 0)
        dcarry, (dxw, dzh) = _scan(
            functools.partial(_gru_bwd_step, w_t), dfinal, (dh_TxBxH, acts, h_prev), reverse=True
        )
    else:
        h, h0 = res, carry0
        dcarry, dzh = _scan(
            functools.partial(_elman_bwd_step, w_t), dfinal, (dh_TxBxH, h), reverse=True
        )
        dxw = dzh
    # dw_hh = sum_t h_{t-1}^T dz_t, one product over the window.
    t, b, hsize = h.shape
    h_prev = jnp.concatenate([h0[None], h[:-1]], 0).reshape(t * b, hsize)
    dw_hh = _tn(h_prev.astype(w_hh.dtype), dzh.reshape(t * b, -1).astype(w_hh.dtype))
    db_ih = jnp.sum(dxw, axis=(0, 1)).astype(b_ih.dtype)
    db_hh = None if b_hh is None else jnp.sum(dzh, axis=(0, 1)).astype(b_hh.dtype)
    return dxw, db_ih, dw_hh.astype(w_hh.dtype), db_hh, dcarry


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def recurrence(cell: str, xw_TxBxG, b_ih, w_hh, b_hh, carry):
    """The time loop of a recurrent layer whose input projection is already computed.

    ``z_t = xw_t + b_ih + h_{t-1} @ w_hh (+ b_hh)``, then the cell's gates, as in
    :func:`recurrent_layer`. The backward pass carries only the state gradient through time and
    computes the recurrent weight's gradient as one product over the whole window.

    Args:
      cell: "lstm", "gru" or "rnn".
      xw_TxBxG: float32 ``[T, B, G]``, the input projection ``x_t @ w_ih`` of every step.
      b_ih, w_hh, b_hh, carry: as in :func:`recurrent_layer`.

    Returns:
      ``(h_TxBxH, final carry)``, float32.

    Example:
      >>> xw, b = jnp.ones((5, 2, 12)), jnp.zeros(12)
      >>> carry = (jnp.zeros((2, 3)), jnp.zeros((2, 3)))
      >>> h, (c, h_last) = recurrence("lstm", xw, b, jnp.zeros((3, 12)), None, carry)
      >>> h.shape
      (5, 2, 3)
    """
    return _recurrence_fwd(cell, xw_TxBxG, b_ih, w_hh, b_hh, carry)[0]


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def recurrent_layer(cell: str, x_TxBxI, w_ih, b_ih, w_hh, b_hh, carry):
    """One recurrent layer over a time-major window, with a hand-written backward pass.

    ``z_t = x_t @ w_ih + b_ih + h_{t-1} @ w_hh (+ b_hh)``, then the cell's gates (GRU: the
    reset gate multiplies the recurrent part of the new-gate pre-activation, as in
    ``torch.nn.GRU``). The input projection of the whole window is one product before the loop
    (see :func:`recurrence` for the loop); the backward pass computes each weight gradient as
    one product over the whole window instead of one per step.

    Args:
      cell: "lstm", "gru" or "rnn".
      x_TxBxI: the layer input, time-major, in the compute dtype.
      w_ih: ``[I, G]`` input weights in the compute dtype.
      b_ih: ``[G]`` float32 bias.
      w_hh: ``[H, G]`` recurrent weights in the compute dtype.
      b_hh: ``[G]`` float32 recurrent bias (GRU), else None.
      carry: the state at the start: ``(c, h)`` for an LSTM, ``h`` otherwise, float32 ``[B, H]``.

    Returns:
      ``(h_TxBxH, final carry)``, float32.

    Example:
      >>> x, w_ih, b = jnp.ones((5, 2, 4)), jnp.zeros((4, 12)), jnp.zeros(12)
      >>> carry = (jnp.zeros((2, 3)), jnp.zeros((2, 3)))
      >>> h, (c, h_last) = recurrent_layer("lstm", x, w_ih, b, jnp.zeros((3, 12)), None, carry)
      >>> h.shape
      (5, 2, 3)
    """
    return _layer_fwd(cell, x_TxBxI, w_ih, b_ih, w_hh, b_hh, carry)[0]


def _layer_fwd(cell, x_TxBxI, w_ih, b_ih, w_hh, b_hh, carry):
    out, saved = _recurrence_fwd(cell, _project(x_TxBxI, w_ih), b_ih, w_hh, b_hh, carry)
    return out, (x_TxBxI, w_ih, saved)


def _layer_bwd(cell, saved, cts):
    x, w_ih, saved = saved
    dxw, db_ih, dw_hh, db_hh, dcarry = _recurrence_bwd(cell, saved, cts)
    t, b, i = x.shape
    dxw2 = dxw.reshape(t * b, -1).astype(w_ih.dtype)
    dw_ih = _tn(x.reshape(t * b, i).astype(w_ih.dtype), dxw2)
    dx = _nt(dxw2, w_ih)
    return (
        dx.reshape(t, b, i).astype(x.dtype),
        dw_ih.astype(w_ih.dtype),
        db_ih,
        dw_hh,
        db_hh,
        dcarry,
    )


recurrent_layer.defvjp(_layer_fwd, _layer_bwd)


class _RecurrentLayer(nn.Module):
    """One recurrent layer over a window, ``[B, T, I] -> [B, T, H]``: parameters, weight-drop
    and the scan over time; :class:`LSTMLayer`, :class:`GRULayer` and :class:`ElmanLayer` set
    the cell.

    Attributes:
      hidden_size: H.
      init_scale: weights are uniform in ``[-init_scale, init_scale)``.
      weight_drop: DropConnect probability on ``hh/kernel`` (one mask per call) in training.
      dtype: compute dtype of the matrix products; the state (an LSTM's cell too) stays
        float32.
      param_dtype: storage dtype of the parameters.

    Example:
      >>> layer = LSTMLayer(8)  # or GRULayer(8), ElmanLayer(8)
      >>> x, carry = jnp.ones((2, 5, 4)), layer.initial_carry(2)
      >>> params = layer.init(jax.random.key(0), x, carry)
      >>> h, carry = layer.apply(params, x, carry)
    """

    hidden_size: int
    init_scale: float = 0.1
    weight_drop: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    cell: ClassVar[str] = "rnn"
    num_gates: ClassVar[int] = 1
    hh_bias: ClassVar[bool] = False

    def initial_carry(self, batch_size: int) -> Carry:
        """Zero hidden state, float32 ``[B, H]``."""
        return jnp.zeros((batch_size, self.hidden_size), jnp.float32)

    @nn.compact
    def __call__(
        self,
        x_BxTxI: jax.Array,
        carry: Carry,
        *,
        deterministic: bool = True,
        embedding: jax.Array | None = None,
    ) -> tuple[jax.Array, Carry]:
        """Runs the layer over a window.

        Args:
          x_BxTxI: the input ``[B, T, I]``, or int token ids ``[B, T]`` when ``embedding`` is
            given.
          carry: the state at the start of the window (see ``initial_carry``).
          deterministic: False in training (weight-drop).
          embedding: ``[V, I]``: the input is ``embedding[x_BxTxI]``. When V is at most half
            the window's B*T tokens, the input projection is then a lookup into the ``[V, G]``
            table ``embedding @ ih/kernel``: the same products, computed once per vocabulary
            entry instead of once per token, whose gradient is a scatter-add of the gate
            gradients by token and two ``[V]``-row products instead of two window-sized ones.

        Returns:
          ``(h_BxTxH, final carry)``.
        """
        init = uniform_init(self.init_scale)
        gh = self.num_gates * self.hidden_size

        def dense_init(key, shape, dtype, bias: bool):
            k1, k2 = jax.random.split(key)
            p = {"kernel": init(k1, shape, dtype)}
            if bias:
                p["bias"] = init(k2, shape[-1:], dtype)
            return p

        ih = self.param(
            "ih",
            functools.partial(dense_init, bias=True),
            (x_BxTxI.shape[-1] if embedding is None else embedding.shape[-1], gh),
            self.param_dtype,
        )
        hh = self.param(
            "hh",
            functools.partial(dense_init, bias=self.hh_bias),
            (self.hidden_size, gh),
            self.param_dtype,
        )
        # DropConnect on the recurrent weights, one mask for the whole window.
        kernel = nn.Dropout(self.weight_drop)(hh["kernel"], deterministic=deterministic)
        w_ih, b_ih = ih["kernel"].astype(self.dtype), ih["bias"].astype(jnp.float32)
        w_hh = kernel.astype(self.dtype)
        hb = hh["bias"].astype(jnp.float32) if self.hh_bias else None
        # Time-major inside: the scan walks the leading axis.
        if embedding is None:
            x_TxBxI = jnp.swapaxes(x_BxTxI, 0, 1).astype(self.dtype)
            h_TxBxH, carry = recurrent_layer(self.cell, x_TxBxI, w_ih, b_ih, w_hh, hb, carry)
        elif 2 * embedding.shape[0] <= x_BxTxI.size:
            table = _mm(embedding.astype(self.dtype), w_ih)  # [V, G] float32
            xw_TxBxG = jnp.take(table, x_BxTxI.T, axis=0, mode="clip")
            h_TxBxH, carry = recurrence(self.cell, xw_TxBxG, b_ih, w_hh, hb, carry)
        else:
            x_TxBxI = jnp.take(embedding.astype(self.dtype), x_BxTxI.T, axis=0, mode="clip")
            h_TxBxH, carry = recurrent_layer(self.cell, x_TxBxI, w_ih, b_ih, w_hh, hb, carry)
        return jnp.swapaxes(h_TxBxH, 0, 1), carry


class LSTMLayer(_RecurrentLayer):
    """One LSTM layer over a window, ``[B, T, I] -> [B, T, H]``, carrying ``(c, h)``.

    Parameters: ``ih/kernel`` ``[I, 4H]``, ``ih/bias`` ``[4H]`` and ``hh/kernel`` ``[H, 4H]``;
    gate order (input, forget, cell, output) as in ``torch.nn.LSTM``.

    Attributes and example: see :class:`_RecurrentLayer`.
    """

    cell: ClassVar[str] = "lstm"
    num_gates: ClassVar[int] = 4

    def initial_carry(self, batch_size: int) -> tuple[jax.Array, jax.Array]:
        """Zero ``(c, h)``, float32 ``[B, H]`` each."""
        shape = (batch_size, self.hidden_size)
        # Two buffers, not one twice: a caller may donate the carry.
        return jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)


class GRULayer(_RecurrentLayer):
    """One GRU layer over a window, ``[B, T, I] -> [B, T, H]``, carrying ``h``.

    Follows ``torch.nn.GRU``: ``r = σ(x W_ir + b_ir + h W_hr + b_hr)``, ``z`` likewise,
    ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``, ``h' = (1 - z) * n + z * h``.
    Parameters: ``ih/kernel`` ``[I, 3H]``, ``ih/bias`` ``[3H]``, ``hh/kernel`` ``[H, 3H]``,
    ``hh/bias`` ``[3H]``; gate order (reset, update, new).

    Attributes and example: see :class:`_RecurrentLayer`.
    """

    cell: ClassVar[str] = "gru"
    num_gates: ClassVar[int] = 3
    hh_bias: ClassVar[bool] = True


class ElmanLayer(_RecurrentLayer):
    """One Elman (tanh) RNN layer over a window, ``[B, T, I] -> [B, T, H]``, carrying ``h``.

    ``h' = tanh(x W_ih + b + h W_hh)``, as ``torch.nn.RNN`` (whose two biases sum to ``b``).

    Attributes and example: see :class:`_RecurrentLayer`.
    """

    cell: ClassVar[str] = "rnn"


CELLS: dict[str, type[_RecurrentLayer]] = {c.cell: c for c in (ElmanLayer, LSTMLayer, GRULayer)}


def _per_layer(value: float | Sequence[float], n: int, name: str) -> tuple[float, ...]:
    """A scalar broadcast to ``n`` layers, or a sequence of exactly ``n`` values."""
    if isinstance(value, int | float):
        return (float(value),) * n
    values = tuple(float(v) for v in value)
    if len(values) != n:
        raise ValueError(f"RecurrentLM.{name}: {len(values)} values for {n} layers")
    return values


class RecurrentLM(nn.Module):
    """Embedding, stacked recurrent layers, softmax: a word- or character-level language model.

    The uniform interface of jaxlm's models: ``apply({"params": p}, tokens_BxT, carry,
    deterministic=...)`` returns ``(logits_BxTxV float32, new_carry, aux)``, where ``aux`` is a
    dict of float32 scalars and ``aux["reg_loss"]`` (if present) is added to the training loss.
    Training calls (``deterministic=False``) with any dropout need ``rngs={"dropout": key}``.

    Attributes:
      vocab_size: V.
      cell: "rnn" (Elman, tanh), "lstm" or "gru".
      embed_dim: E, the embedding width.
      hidden_sizes: the width of each recurrent layer, bottom to top.
      dropout: locked (variational) dropout, one mask per sequence shared over time, on the last
        layer's output; also on the embedding output and between layers unless
        ``input_dropout`` / ``hidden_dropout`` are set (>= 0).
      input_dropout: locked dropout on the embedding output (AWD-LSTM ``dropouti``); < 0: same
        as ``dropout``.
      hidden_dropout: locked dropout between recurrent layers (AWD-LSTM ``dropouth``); < 0:
        same as ``dropout``.
      locked_dropout: True: one dropout mask per sequence, shared over time (Gal and
        Ghahramani; AWD-LSTM); False: a fresh mask at every time step (Zaremba et al.).
      embed_dropout: drops whole rows of the embedding matrix (a word is dropped everywhere it
        appears in the batch), remaining rows scaled by ``1 / (1 - p)``.
      weight_drop: DropConnect on each layer's ``hh/kernel``, one mask per window; a float for
        every layer or one value per layer.
      ar: activation regularization, ``ar * mean(dropped last-layer output ** 2)``, returned
        in ``aux["reg_loss"]`` in training.
      tar: temporal activation regularization, ``tar * mean((h_t - h_{t-1}) ** 2)`` on the
        last layer's output before dropout, added to ``aux["reg_loss"]`` in training.
      tie_embeddings: the output layer reuses the embedding matrix (with a projection ``proj``
        when the last hidden width differs from E).
      init_scale: uniform initialisation range of all weights.
      dtype: compute dtype.
      param_dtype: parameter storage dtype.
      output_dtype: dtype of the returned logits (the loss upcasts to float32 either way).

    Example:
      >>> model = RecurrentLM(vocab_size=65, embed_dim=32, hidden_sizes=(64, 64))
      >>> tokens = jnp.zeros((2, 10), jnp.int32)
      >>> carry = model.initial_carry(2)
      >>> params = model.init(jax.random.key(0), tokens, carry)["params"]
      >>> logits, carry, aux = model.apply({"params": params}, tokens, carry)
      >>> logits.shape
      (2, 10, 65)
    """

    vocab_size: int
    cell: str = "lstm"
    embed_dim: int = 256
    hidden_sizes: Sequence[int] = (512, 512)
    dropout: float = 0.0
    input_dropout: float = -1.0
    hidden_dropout: float = -1.0
    locked_dropout: bool = True
    embed_dropout: float = 0.0
    weight_drop: float | Sequence[float] = 0.0
    ar: float = 0.0
    tar: float = 0.0
    tie_embeddings: bool = False
    init_scale: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    output_dtype: Dtype = jnp.float32

    def _cell(self) -> type[_RecurrentLayer]:
        try:
            return CELLS[self.cell]
        except KeyError:
            raise ValueError(
                f"RecurrentLM.cell: unknown cell {self.cell!r}; expected one of {sorted(CELLS)}"
            ) from None

    def initial_carry(self, batch_size: int, max_length: int | None = None) -> Carry:
        """The zero state of every layer for a batch (``max_length`` is unused here).

        Args:
          batch_size: B.
          max_length: ignored (the Transformer's cache needs it).

        Returns:
          A tuple with one carry per layer: ``(c, h)`` for LSTM layers, ``h`` otherwise.
        """
        del max_length
        cls = self._cell()
        return tuple(cls(h, parent=None).initial_carry(batch_size) for h in self.hidden_sizes)

    def _locked_dropout(self, x_BxTxF: jax.Array, rate: float, deterministic: bool) -> jax.Array:
        dims = (1,) if self.locked_dropout else ()
        return nn.Dropout(rate, broadcast_dims=dims)(x_BxTxF, deterministic=deterministic)

    @nn.compact
    def __call__(
        self, tokens_BxT: jax.Array, carry: Carry, *, deterministic: bool = True
    ) -> tuple[jax.Array, Carry, dict[str, jax.Array]]:
        init = uniform_init(self.init_scale)
        n = len(self.hidden_sizes)
        weight_drop = _per_layer(self.weight_drop, n, "weight_drop")
        p_in = self.dropout if self.input_dropout < 0 else self.input_dropout
        p_hid = self.dropout if self.hidden_dropout < 0 else self.hidden_dropout
        embed = nn.Embed(
            self.vocab_size,
            self.embed_dim,
            embedding_init=init,
            name="embed",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        table = embed.embedding.astype(self.dtype)
        if self.embed_dropout and not deterministic:
            # One keep/drop draw per vocabulary row: a word is dropped everywhere it occurs.
            # A token lookup fuses the row scaling (no scaled [V, E] copy is written); the
            # vocabulary-table path scales the small table it multiplies anyway.
            row_scale = nn.Dropout(self.embed_dropout)(
                jnp.ones((self.vocab_size,), jnp.float32), deterministic=False
            )
            table = table * row_scale[:, None].astype(table.dtype)
        if p_in and not deterministic:
            x = self._locked_dropout(
                jnp.take(table, tokens_BxT, axis=0, mode="clip"), p_in, deterministic
            )
            first = {}
        else:  # the first layer looks its input up itself (a [V, G] table when V is small)
            x, first = tokens_BxT, {"embedding": table}
        cls = self._cell()
        new_carry = []
        raw = x
        for i, size in enumerate(self.hidden_sizes):
            raw, c = cls(
                size,
                self.init_scale,
                weight_drop[i],
                self.dtype,
                self.param_dtype,
                name=f"layers_{i}",
            )(x, carry[i], deterministic=deterministic, **(first if i == 0 else {}))
            new_carry.append(c)
            x = self._locked_dropout(raw, p_hid if i < n - 1 else self.dropout, deterministic)
        aux: dict[str, jax.Array] = {}
        if not deterministic and (self.ar or self.tar):
            reg = jnp.zeros((), jnp.float32)
            if self.ar:
                reg += self.ar * jnp.mean(jnp.square(x.astype(jnp.float32)))
            if self.tar:
                diff = raw[:, 1:].astype(jnp.float32) - raw[:, :-1].astype(jnp.float32)
                reg += self.tar * jnp.mean(jnp.square(diff))
            aux["reg_loss"] = reg
        if self.tie_embeddings:
            if self.hidden_sizes[-1] != self.embed_dim:
                proj = nn.Dense(
                    self.embed_dim,
                    name="proj",
                    kernel_init=init,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                )
                x = on_rows(proj, x)
            logits = on_rows(embed.attend, x)
        else:
            head = nn.Dense(
                self.vocab_size,
                name="head",
                kernel_init=init,
                bias_init=init,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
            logits = on_rows(head, x)
        return logits.astype(self.output_dtype), tuple(new_carry), aux
