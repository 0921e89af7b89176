"""The time loop of a recurrent layer, as functions with a hand-written backward pass.

Forward: the input projection of the whole window is one matrix product; the scan then adds the
bias and the recurrent product step by step. Reverse-mode autodiff of a scan would accumulate
the recurrent weight's gradient inside the backward loop, one small ``[H, B] x [B, G]`` product
per step; the backward pass here only carries the state gradient through time (one
``[B, G] x [G, H]`` product per step, on a transposed copy of the weights made once) and stacks
the gradients of the gate pre-activations; both weight gradients are then one product each over
the whole window. The LSTM's four gate activations are one elementwise pass (see ``_lstm_act``).
:func:`recurrence` is the time loop alone, from a given input projection (a vocabulary table
lookup); :func:`recurrent_layer` adds the window's input projection and its gradients around it;
:func:`reference_layer` is the same forward pass left to autodiff, the reference for tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlm import precision
from jaxlm.runtime.backend import single_cpu_device

GateMasks = tuple[jax.Array | None, jax.Array | None, jax.Array | None] | None
"""Dropout masks on an LSTM's ``(forget, output, update)`` gates, already scaled (each entry 0
or ``1 / keep``, float32): an entry is ``[T, B, H]`` (a fresh mask at every time step), or
``[B, H]`` (one mask for the whole window), or None (that gate is not dropped); None: no gate
dropout. The update gate is the cell candidate ``g``: ``c_t = f c_{t-1} + i d(g)`` (Semeniuta
et al. 2016). A GRU reads only the update entry, on its candidate ``n``; an Elman layer none."""


def mm(a: jax.Array, w: jax.Array) -> jax.Array:
    """``a @ w`` in ``w``'s dtype with float32 accumulation and result: every product here.

    The operands are rounded to ``w``'s dtype (:func:`jaxlm.precision.product_operands`: held
    in float32 on CPU, where float32 kernels are faster).

    Args:
      a: ``[..., K]``, cast to ``w``'s dtype.
      w: ``[K, N]``, in the compute dtype.

    Returns:
      float32 ``[..., N]``.

    Example:
      >>> mm(jnp.ones((2, 3)), jnp.ones((3, 4), jnp.bfloat16)).dtype
      dtype('float32')
    """
    return precision.dot_general(a, w, (((a.ndim - 1,), (0,)), ((), ())), w.dtype)


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


def _masked(a: jax.Array, m: jax.Array | None) -> jax.Array:
    """``a * m``, or ``a`` itself where the gate has no dropout mask."""
    return a if m is None else a * m


def _step_masks(locked: GateMasks, per_step: GateMasks) -> GateMasks:
    """This step's gate masks: the window's shared ones, or this step's slice."""
    return per_step if per_step is not None else locked


def _lstm_step(w, b, hb, locked, carry, xs, *, residuals):
    del hb
    xw, per_step = xs
    c_prev, h = carry
    gates = _lstm_act(xw + b + mm(h, w))
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    m = _step_masks(locked, per_step)
    if m is None:
        c = f * c_prev + i * g
        h = o * jnp.tanh(c)
    else:  # dropped gate activations (the residuals keep the undropped ones)
        mf, mo, mg = m
        c = _masked(f, mf) * c_prev + i * _masked(g, mg)
        h = _masked(o, mo) * jnp.tanh(c)
    if residuals:  # c_prev, not c: the backward loop carries c itself (no shifted copy)
        return (c, h), (h, gates, c_prev)
    return (c, h), h


def _lstm_bwd_step(w_t, locked, carry, xs):
    dh_next, dc_next, c = carry
    dh_out, gates, c_prev, per_step = xs
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    mf, mo, mg = _step_masks(locked, per_step) or (None, None, None)
    tc = jnp.tanh(c)
    dh = dh_out + dh_next
    dc = dc_next + dh * _masked(o, mo) * (1.0 - tc * tc)
    # d act / dz = s^2 - (a - t)^2: a(1 - a) for sigmoid columns, 1 - a^2 for g. A dropped
    # gate's mask multiplies its own gradient: d(f mf c_prev)/df = mf c_prev, and so on.
    s, t = _gate_consts(dc.shape[-1])
    u = gates - t
    dgates = jnp.concatenate(
        [
            dc * _masked(g, mg),
            _masked(dc * c_prev, mf),
            _masked(dc * i, mg),
            _masked(dh * tc, mo),
        ],
        axis=-1,
    )
    dz = dgates * (s * s - u * u)
    return (mm(dz, w_t), _masked(dc * f, mf), c_prev), dz


def _gru_step(w, b, hb, locked, h, xs, *, residuals):
    xw, per_step = xs
    zh = mm(h, w) + hb
    xr, xz, xn = jnp.split(xw + b, 3, axis=-1)
    hr, hz, hn = jnp.split(zh, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    m = _step_masks(locked, per_step)
    n_kept = n if m is None else _masked(n, m[2])  # the candidate's dropout (Semeniuta)
    h_new = n_kept + z * (h - n_kept)
    if residuals:
        return h_new, (h_new, jnp.concatenate([r, z, n, hn], -1))
    return h_new, h_new


def _gru_bwd_step(w_t, locked, dh_next, xs):
    dh_out, acts, h_prev, per_step = xs
    r, z, n, hn = jnp.split(acts, 4, axis=-1)
    m = _step_masks(locked, per_step)
    mn = None if m is None else m[2]
    dh = dh_out + dh_next
    dn = _masked(dh * (1.0 - z), mn) * (1.0 - n * n)
    dr = dn * hn * r * (1.0 - r)
    dz = dh * (h_prev - _masked(n, mn)) * z * (1.0 - z)
    dxw = jnp.concatenate([dr, dz, dn], -1)
    dzh = jnp.concatenate([dr, dz, dn * r], -1)
    return dh * z + mm(dzh, w_t), (dxw, dzh)


def _elman_step(w, b, hb, locked, h, xs, *, residuals):
    del hb, residuals, locked
    xw, _ = xs
    h = jnp.tanh(xw + b + mm(h, w))
    return h, h


def _elman_bwd_step(w_t, locked, dh_next, xs):
    del locked
    dh_out, h, _ = xs
    da = (dh_out + dh_next) * (1.0 - h * h)
    return mm(da, w_t), da


_STEPS = {"lstm": _lstm_step, "gru": _gru_step, "rnn": _elman_step}


def _project(x_TxBxI: jax.Array, w_ih: jax.Array) -> jax.Array:
    """The whole window's input projection, float32 ``[T, B, G]`` (bias added in the scan)."""
    t, b, i = x_TxBxI.shape
    return mm(x_TxBxI.reshape(t * b, i), w_ih).reshape(t, b, -1)


def _tn(a: jax.Array, g: jax.Array) -> jax.Array:
    """``a.T @ g`` over rows (no transposed copy) in ``a``'s dtype, with a float32 result."""
    return precision.dot_general(a, g, (((0,), (0,)), ((), ())), a.dtype)


def _nt(g: jax.Array, w: jax.Array) -> jax.Array:
    """``g @ w.T`` (no transposed copy), in ``w``'s dtype with a float32 result."""
    return precision.dot_general(g, w, (((1,), (1,)), ((), ())), w.dtype)


def _split_masks(masks: GateMasks) -> tuple[GateMasks, GateMasks]:
    """``(locked, per_step)``: the masks shared by the whole window, or those with a time axis
    (scanned over); the other one is None."""
    if masks is None or all(m is None for m in masks):
        return None, None
    ndim = {m.ndim for m in masks if m is not None}
    if ndim == {2}:
        return masks, None
    if ndim == {3}:
        return None, masks
    raise ValueError(
        f"gate masks: expected [B, H] (one per window) or [T, B, H] (one per step) arrays, all "
        f"alike; got shapes {[None if m is None else m.shape for m in masks]}"
    )


def reference_layer(cell: str, x_TxBxI, w_ih, b_ih, w_hh, b_hh, carry, masks: GateMasks = None):
    """The plain computation of :func:`recurrent_layer`, differentiated by JAX's autodiff.

    The same forward pass as :func:`recurrent_layer` (one input projection, then a
    ``jax.lax.scan`` over the cell's steps) without the hand-written backward pass: the
    reference its gradients are checked against.

    Args:
      cell: "lstm", "gru" or "rnn".
      x_TxBxI, w_ih, b_ih, w_hh, b_hh, carry, masks: as in :func:`recurrent_layer`.

    Returns:
      ``(h_TxBxH, final carry)``, float32.

    Example:
      >>> x, w_ih, b = jnp.ones((5, 2, 4)), jnp.zeros((4, 3)), jnp.zeros(3)
      >>> h, h_last = reference_layer("rnn", x, w_ih, b, jnp.zeros((3, 3)), None, jnp.zeros((2, 3)))
      >>> h.shape
      (5, 2, 3)
    """
    locked, per_step = _split_masks(masks)
    step = functools.partial(_STEPS[cell], w_hh, b_ih, b_hh, locked, residuals=False)
    carry, h = jax.lax.scan(step, carry, (_project(x_TxBxI, w_ih), per_step))
    return h, carry


# The time loop alone, from a given input projection ``xw`` (with a hand-written backward pass).


def batch_groups(batch: int) -> int:
    """How many independent batch slices the time loop runs side by side.

    2 on a single CPU device (even batches of 8 or more), else 1. XLA's CPU runtime runs
    independent operations concurrently, so one slice's elementwise step overlaps the other's
    recurrent product: the char-shape LSTM loop (B 32, H 512, T 100) runs 45 -> 38 ms on 2
    cores. On GPUs it would only halve each kernel, and a batch sharded over devices would be
    resliced at every step. The loops look this function up at trace time, so a test can
    replace it to run either way on any machine.

    Args:
      batch: B, the batch size of the window.

    Returns:
      The number of slices, 1 or 2.

    Example:
      >>> batch_groups(3)
      1
    """
    return 2 if single_cpu_device() and batch % 2 == 0 and batch >= 8 else 1


def _scan(step, carry, xs, consts=None, *, reverse: bool = False):
    """``jax.lax.scan(partial(step, consts), carry, xs, reverse=reverse)`` for time-major
    ``xs`` (leaves ``[T, B, ...]``), a carry and step constants of ``[B, ...]`` leaves (the
    window's gate masks), run as :func:`batch_groups` independent batch slices whose per-step
    outputs go straight into shared ``[T, B, ...]`` buffers (no concatenation per step)."""
    t, batch = jax.tree.leaves(xs)[0].shape[:2]
    k = batch_groups(batch)
    if k == 1:
        return jax.lax.scan(functools.partial(step, consts), carry, xs, reverse=reverse)
    n = batch // k
    carries = tuple(jax.tree.map(lambda a, g=g: a[g * n : (g + 1) * n], carry) for g in range(k))
    group_consts = tuple(
        jax.tree.map(lambda a, g=g: a[g * n : (g + 1) * n], consts) for g in range(k)
    )
    y_shapes = jax.eval_shape(
        functools.partial(step, group_consts[0]),
        carries[0],
        jax.tree.map(lambda a: a[0, :n], xs),
    )[1]
    ys = jax.tree.map(lambda s: jnp.zeros((t, batch, *s.shape[1:]), s.dtype), y_shapes)

    def body(j, state):
        carries, ys = state
        i = t - 1 - j if reverse else j
        x_i = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), xs)
        new = []
        for g in range(k):
            x_g = jax.tree.map(lambda a, g=g: a[g * n : (g + 1) * n], x_i)
            c, y = step(group_consts[g], carries[g], x_g)
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


def _recurrence_fwd(cell, xw_TxBxG, b_ih, w_hh, b_hh, carry, masks):
    locked, per_step = _split_masks(masks)
    step = functools.partial(_STEPS[cell], w_hh, b_ih, b_hh, residuals=True)
    final, res = _scan(step, carry, (xw_TxBxG, per_step), locked)
    h = res[0] if cell != "rnn" else res
    return (h, final), (b_ih, w_hh, b_hh, carry, final, res, masks)


def _transposed(w: jax.Array) -> jax.Array:
    """``w.T`` as its own row-major array (the loop's products run faster on it)."""
    return jax.lax.optimization_barrier(w.T)


def _recurrence_bwd(cell, saved, cts):
    """Cotangents of ``(xw, b_ih, w_hh, b_hh, carry, masks)`` (the masks' are zero: they are
    drawn, not learned)."""
    b_ih, w_hh, b_hh, carry0, final, res, masks = saved
    locked, per_step = _split_masks(masks)
    dh_TxBxH, dfinal = cts
    w_t = _transposed(w_hh)
    if cell == "lstm":
        h, gates, c_prev = res
        h0 = carry0[1]
        (dh0, dc0, _), dzh = _scan(
            functools.partial(_lstm_bwd_step, w_t),
            (dfinal[1], dfinal[0], final[0]),
            (dh_TxBxH, gates, c_prev, per_step),
            locked,
            reverse=True,
        )
        dcarry, dxw = (dc0, dh0), dzh
    elif cell == "gru":
        h, acts = res
        h0 = carry0
        h_prev = jnp.concatenate([h0[None], h[:-1]], 0)
        dcarry, (dxw, dzh) = _scan(
            functools.partial(_gru_bwd_step, w_t),
            dfinal,
            (dh_TxBxH, acts, h_prev, per_step),
            locked,
            reverse=True,
        )
    else:
        h, h0 = res, carry0
        dcarry, dzh = _scan(
            functools.partial(_elman_bwd_step, w_t), dfinal, (dh_TxBxH, h, None), reverse=True
        )
        dxw = dzh
    # dw_hh = sum_t h_{t-1}^T dz_t, one product over the window.
    t, b, hsize = h.shape
    h_prev = jnp.concatenate([h0[None], h[:-1]], 0).reshape(t * b, hsize)
    dw_hh = _tn(h_prev.astype(w_hh.dtype), dzh.reshape(t * b, -1).astype(w_hh.dtype))
    db_ih = jnp.sum(dxw, axis=(0, 1)).astype(b_ih.dtype)
    db_hh = None if b_hh is None else jnp.sum(dzh, axis=(0, 1)).astype(b_hh.dtype)
    dmasks = jax.tree.map(jnp.zeros_like, masks)
    return dxw, db_ih, dw_hh.astype(w_hh.dtype), db_hh, dcarry, dmasks


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(cell, xw_TxBxG, b_ih, w_hh, b_hh, carry, masks):
    return _recurrence_fwd(cell, xw_TxBxG, b_ih, w_hh, b_hh, carry, masks)[0]


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def recurrence(cell: str, xw_TxBxG, b_ih, w_hh, b_hh, carry, masks: GateMasks = None):
    """The time loop of a recurrent layer whose input projection is already computed.

    ``z_t = xw_t + b_ih + h_{t-1} @ w_hh (+ b_hh)``, then the cell's gates, as in
    :func:`recurrent_layer`. The backward pass carries only the state gradient through time and
    computes the recurrent weight's gradient as one product over the whole window.

    Args:
      cell: "lstm", "gru" or "rnn".
      xw_TxBxG: float32 ``[T, B, G]``, the input projection ``x_t @ w_ih`` of every step.
      b_ih, w_hh, b_hh, carry, masks: as in :func:`recurrent_layer`.

    Returns:
      ``(h_TxBxH, final carry)``, float32.

    Example:
      >>> xw, b = jnp.ones((5, 2, 12)), jnp.zeros(12)
      >>> carry = (jnp.zeros((2, 3)), jnp.zeros((2, 3)))
      >>> h, (c, h_last) = recurrence("lstm", xw, b, jnp.zeros((3, 12)), None, carry)
      >>> h.shape
      (5, 2, 3)
    """
    return _recurrence(cell, xw_TxBxG, b_ih, w_hh, b_hh, carry, masks)


def recurrent_layer(cell: str, x_TxBxI, w_ih, b_ih, w_hh, b_hh, carry, masks: GateMasks = None):
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
      masks: gate dropout masks (:data:`GateMasks`): inputs of the loop like the carry, so the
        backward pass multiplies each dropped gate's gradient by its mask; None: no gate
        dropout (the program is the one without masks).

    Returns:
      ``(h_TxBxH, final carry)``, float32.

    Example:
      >>> x, w_ih, b = jnp.ones((5, 2, 4)), jnp.zeros((4, 12)), jnp.zeros(12)
      >>> carry = (jnp.zeros((2, 3)), jnp.zeros((2, 3)))
      >>> h, (c, h_last) = recurrent_layer("lstm", x, w_ih, b, jnp.zeros((3, 12)), None, carry)
      >>> h.shape
      (5, 2, 3)
    """
    return _recurrent_layer(cell, x_TxBxI, w_ih, b_ih, w_hh, b_hh, carry, masks)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrent_layer(cell, x_TxBxI, w_ih, b_ih, w_hh, b_hh, carry, masks):
    return _layer_fwd(cell, x_TxBxI, w_ih, b_ih, w_hh, b_hh, carry, masks)[0]


def _layer_fwd(cell, x_TxBxI, w_ih, b_ih, w_hh, b_hh, carry, masks):
    xw = _project(x_TxBxI, w_ih)
    out, saved = _recurrence_fwd(cell, xw, b_ih, w_hh, b_hh, carry, masks)
    return out, (x_TxBxI, w_ih, saved)


def _layer_bwd(cell, saved, cts):
    x, w_ih, saved = saved
    dxw, db_ih, dw_hh, db_hh, dcarry, dmasks = _recurrence_bwd(cell, saved, cts)
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
        dmasks,
    )


_recurrent_layer.defvjp(_layer_fwd, _layer_bwd)
