"""Recurrent layers: Elman (tanh), LSTM and GRU, one layer shape with three cells.

Every layer runs its input-to-hidden product for the whole window as one matrix multiply outside
the time loop; only the hidden-to-hidden product runs inside the loop (:mod:`.kernels`), and the
gates of a cell are one fused matrix multiply. When the layer reads an embedding of a vocabulary
no larger than half the window's tokens (characters), its input projection is a lookup into the
``[V, G]`` table ``embedding @ W_ih`` instead: the same products, once per vocabulary entry.
Gate orders are PyTorch's (LSTM: input, forget, cell, output; GRU: reset, update, new), so
weights map one to one onto ``torch.nn.LSTM``/``GRU``/``RNN``:

=================  ===========================  ====================================
ours               shape                        torch (``_l{i}`` suffix per layer)
=================  ===========================  ====================================
``ih/kernel``      ``[I, G*H]``                 ``weight_ih.T``
``ih/bias``        ``[G*H]``                    ``bias_ih`` (+ ``bias_hh`` for LSTM, RNN)
``hh/kernel``      ``[H, G*H]``                 ``weight_hh.T``
``hh/bias``        ``[3H]`` (GRU only)          ``bias_hh``
=================  ===========================  ====================================
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.models.common import Dropout, is_on
from jaxlm.models.recurrent.kernels import GateMasks, mm, recurrence, recurrent_layer

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


GATES = ("forget", "output", "update")
"""The gates that gate dropout may drop, in :data:`~.kernels.GateMasks` order."""


def gate_mask(key: jax.Array, rate: float | jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """One scaled dropout mask: 0 with chance ``rate``, else ``1 / (1 - rate)``, float32.

    Args:
      key: a PRNG key.
      rate: the drop probability in [0, 1), a Python number or a traced scalar.
      shape: ``[B, H]`` (one mask for the window) or ``[T, B, H]`` (one per step).

    Returns:
      The mask; its mean is 1 in expectation.

    Example:
      >>> m = gate_mask(jax.random.key(0), 0.5, (4, 8))
      >>> sorted(set(m.ravel().tolist())) == [0.0, 2.0]
      True
    """
    keep = 1.0 - rate
    kept = jax.random.bernoulli(key, keep, shape)
    return jnp.where(kept, 1.0 / jnp.asarray(keep, jnp.float32), 0.0).astype(jnp.float32)


class RecurrentLayer(nn.Module):
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
      gate_dropout_forget: dropout on the forget gate's activation in training (LSTM):
        ``c_t = d(f) c_{t-1} + i g``.
      gate_dropout_output: dropout on the output gate's activation (LSTM):
        ``h_t = d(o) tanh(c_t)``.
      gate_dropout_update: dropout on the update, the cell candidate: ``c_t = f c_{t-1} +
        i d(g)`` (LSTM), ``h_t = (1 - z) d(n) + z h_{t-1}`` (GRU): Semeniuta et al. 2016's
        recurrent dropout without memory loss. Every gate rate drops with inverted scaling
        (kept values times ``1 / (1 - p)``), from the ``dropout`` rng; a traced rate is
        always on (:func:`~jaxlm.models.common.is_on`). A cell without the gate
        (:attr:`gate_dropouts`) refuses a rate that is on.
      locked_gates: True: one mask per window and sequence, shared over its time steps;
        False: a fresh mask at every step.

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

    gate_dropout_forget: float = 0.0
    gate_dropout_output: float = 0.0
    gate_dropout_update: float = 0.0
    locked_gates: bool = True

    cell: ClassVar[str] = "rnn"
    num_gates: ClassVar[int] = 1
    hh_bias: ClassVar[bool] = False
    gate_dropouts: ClassVar[tuple[str, ...]] = ()  # the gates of GATES this cell can drop

    def initial_carry(self, batch_size: int) -> Carry:
        """Zero hidden state, float32 ``[B, H]``."""
        return jnp.zeros((batch_size, self.hidden_size), jnp.float32)

    def _gate_masks(self, batch: int, steps: int, deterministic: bool) -> GateMasks:
        """The window's gate dropout masks (:data:`~.kernels.GateMasks`), None when none is on
        or in evaluation."""
        rates = (self.gate_dropout_forget, self.gate_dropout_output, self.gate_dropout_update)
        for gate, rate in zip(GATES, rates, strict=True):
            if is_on(rate) and gate not in self.gate_dropouts:
                can = ", ".join(self.gate_dropouts) or "none"
                raise ValueError(
                    f"gate_dropout_{gate}: a {self.cell} layer has no {gate} gate to drop "
                    f"(it can drop: {can}); set it to 0"
                )
        if deterministic or not any(map(is_on, rates)):
            return None
        key = self.make_rng("dropout")
        shape = (batch, self.hidden_size) if self.locked_gates else (steps, batch, self.hidden_size)
        return tuple(
            gate_mask(jax.random.fold_in(key, j), rate, shape) if is_on(rate) else None
            for j, rate in enumerate(rates)
        )

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
          deterministic: False in training (weight-drop, gate dropout).
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
        kernel = Dropout(self.weight_drop)(hh["kernel"], deterministic=deterministic)
        w_ih, b_ih = ih["kernel"].astype(self.dtype), ih["bias"].astype(jnp.float32)
        w_hh = kernel.astype(self.dtype)
        hb = hh["bias"].astype(jnp.float32) if self.hh_bias else None
        masks = self._gate_masks(x_BxTxI.shape[0], x_BxTxI.shape[1], deterministic)
        # Time-major inside: the scan walks the leading axis.
        if embedding is None:
            x_TxBxI = jnp.swapaxes(x_BxTxI, 0, 1).astype(self.dtype)
            h_TxBxH, carry = recurrent_layer(self.cell, x_TxBxI, w_ih, b_ih, w_hh, hb, carry, masks)
        elif 2 * embedding.shape[0] <= x_BxTxI.size:
            table = mm(embedding.astype(self.dtype), w_ih)  # [V, G] float32
            xw_TxBxG = jnp.take(table, x_BxTxI.T, axis=0, mode="clip")
            h_TxBxH, carry = recurrence(self.cell, xw_TxBxG, b_ih, w_hh, hb, carry, masks)
        else:
            x_TxBxI = jnp.take(embedding, x_BxTxI.T, axis=0, mode="clip").astype(self.dtype)
            h_TxBxH, carry = recurrent_layer(self.cell, x_TxBxI, w_ih, b_ih, w_hh, hb, carry, masks)
        return jnp.swapaxes(h_TxBxH, 0, 1), carry


class LSTMLayer(RecurrentLayer):
    """One LSTM layer over a window, ``[B, T, I] -> [B, T, H]``, carrying ``(c, h)``.

    Parameters: ``ih/kernel`` ``[I, 4H]``, ``ih/bias`` ``[4H]`` and ``hh/kernel`` ``[H, 4H]``;
    gate order (input, forget, cell, output) as in ``torch.nn.LSTM``.

    Attributes and example: see :class:`RecurrentLayer`.
    """

    cell: ClassVar[str] = "lstm"
    num_gates: ClassVar[int] = 4
    gate_dropouts: ClassVar[tuple[str, ...]] = GATES

    def initial_carry(self, batch_size: int) -> tuple[jax.Array, jax.Array]:
        """Zero ``(c, h)``, float32 ``[B, H]`` each."""
        shape = (batch_size, self.hidden_size)
        # Two buffers, not one twice: a caller may donate the carry.
        return jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)


class GRULayer(RecurrentLayer):
    """One GRU layer over a window, ``[B, T, I] -> [B, T, H]``, carrying ``h``.

    Follows ``torch.nn.GRU``: ``r = σ(x W_ir + b_ir + h W_hr + b_hr)``, ``z`` likewise,
    ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``, ``h' = (1 - z) * n + z * h``.
    Parameters: ``ih/kernel`` ``[I, 3H]``, ``ih/bias`` ``[3H]``, ``hh/kernel`` ``[H, 3H]``,
    ``hh/bias`` ``[3H]``; gate order (reset, update, new). Of the gate dropouts only
    ``gate_dropout_update`` applies, to the candidate ``n`` (Semeniuta et al.'s GRU form);
    note that torch's "update gate" is ``z``, which is not dropped.

    Attributes and example: see :class:`RecurrentLayer`.
    """

    cell: ClassVar[str] = "gru"
    num_gates: ClassVar[int] = 3
    hh_bias: ClassVar[bool] = True
    # Only the update (candidate) maps: a GRU has no output gate, and its update gate z both
    # keeps and replaces the state, so a dropped z is not a dropped forget gate.
    gate_dropouts: ClassVar[tuple[str, ...]] = ("update",)


class ElmanLayer(RecurrentLayer):
    """One Elman (tanh) RNN layer over a window, ``[B, T, I] -> [B, T, H]``, carrying ``h``.

    ``h' = tanh(x W_ih + b + h W_hh)``, as ``torch.nn.RNN`` (whose two biases sum to ``b``).

    Attributes and example: see :class:`RecurrentLayer`.
    """

    cell: ClassVar[str] = "rnn"


CELLS: dict[str, type[RecurrentLayer]] = {c.cell: c for c in (ElmanLayer, LSTMLayer, GRULayer)}
