"""Recurrent language models: a stack of recurrent layers between an embedding and a softmax.

Three cells share one layer shape: ``rnn`` (Elman, tanh), ``lstm`` and ``gru``. Every layer runs
its input-to-hidden product for the whole window as one matrix multiply outside the time loop;
only the hidden-to-hidden product runs inside ``jax.lax.scan``, and the gates of a cell are one
fused matrix multiply. Gate orders are PyTorch's (LSTM: input, forget, cell, output; GRU: reset,
update, new), so weights map one to one onto ``torch.nn.LSTM``/``GRU``/``RNN``:

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

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

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


class _RecurrentLayer(nn.Module):
    """Shared parts of one recurrent layer: parameters, weight-drop and the scan over time."""

    hidden_size: int
    init_scale: float = 0.1
    weight_drop: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    num_gates: ClassVar[int] = 1
    hh_bias: ClassVar[bool] = False

    def _step_fn(self, hh_GH: jax.Array, hb: jax.Array | None) -> Callable:
        raise NotImplementedError

    def initial_carry(self, batch_size: int) -> Carry:
        """Zero hidden state, float32 ``[B, H]``."""
        return jnp.zeros((batch_size, self.hidden_size), jnp.float32)

    @nn.compact
    def __call__(
        self, x_BxTxI: jax.Array, carry: Carry, *, deterministic: bool = True
    ) -> tuple[jax.Array, Carry]:
        init = uniform_init(self.init_scale)
        gh = self.num_gates * self.hidden_size
        xw_BxTxG = nn.Dense(
            gh,
            name="ih",
            kernel_init=init,
            bias_init=init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x_BxTxI).astype(jnp.float32)

        def hh_init(key, shape, dtype):
            k1, k2 = jax.random.split(key)
            p = {"kernel": init(k1, shape, dtype)}
            if self.hh_bias:
                p["bias"] = init(k2, shape[-1:], dtype)
            return p

        hh = self.param("hh", hh_init, (self.hidden_size, gh), self.param_dtype)
        kernel = hh["kernel"]
        if self.weight_drop and not deterministic:
            # DropConnect on the recurrent weights, one mask for the whole window.
            keep = 1.0 - self.weight_drop
            mask = jax.random.bernoulli(self.make_rng("dropout"), keep, kernel.shape)
            kernel = jnp.where(mask, kernel / keep, 0.0).astype(kernel.dtype)
        hb = hh["bias"].astype(jnp.float32) if self.hh_bias else None
        step = self._step_fn(kernel.astype(self.dtype), hb)
        carry, h_TxBxH = jax.lax.scan(step, carry, jnp.swapaxes(xw_BxTxG, 0, 1))
        return jnp.swapaxes(h_TxBxH, 0, 1), carry

    def _hh(self, h: jax.Array, hh_GH: jax.Array) -> jax.Array:
        return jnp.dot(h.astype(self.dtype), hh_GH, preferred_element_type=jnp.float32)


class LSTMLayer(_RecurrentLayer):
    """One LSTM layer over a window, ``[B, T, I] -> [B, T, H]``, carrying ``(c, h)``.

    Parameters: ``ih/kernel`` ``[I, 4H]``, ``ih/bias`` ``[4H]`` and ``hh/kernel`` ``[H, 4H]``;
    gate order (input, forget, cell, output) as in ``torch.nn.LSTM``.

    Attributes:
      hidden_size: H.
      init_scale: weights are uniform in ``[-init_scale, init_scale)``.
      weight_drop: DropConnect probability on ``hh/kernel`` (one mask per call) in training.
      dtype: compute dtype of the matrix products; the cell state stays float32.
      param_dtype: storage dtype of the parameters.

    Example:
      >>> layer = LSTMLayer(8)
      >>> x, carry = jnp.ones((2, 5, 4)), layer.initial_carry(2)
      >>> params = layer.init(jax.random.key(0), x, carry)
      >>> h, carry = layer.apply(params, x, carry)
    """

    num_gates: ClassVar[int] = 4

    def initial_carry(self, batch_size: int) -> tuple[jax.Array, jax.Array]:
        """Zero ``(c, h)``, float32 ``[B, H]`` each."""
        zeros = jnp.zeros((batch_size, self.hidden_size), jnp.float32)
        return zeros, zeros

    def _step_fn(self, hh_GH, hb):
        def step(carry, xw_BxG):
            c, h = carry
            z = xw_BxG + self._hh(h, hh_GH)
            i, f, g, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (c, h), h

        return step


class GRULayer(_RecurrentLayer):
    """One GRU layer over a window, ``[B, T, I] -> [B, T, H]``, carrying ``h``.

    Follows ``torch.nn.GRU``: ``r = σ(x W_ir + b_ir + h W_hr + b_hr)``, ``z`` likewise,
    ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``, ``h' = (1 - z) * n + z * h``.
    Parameters: ``ih/kernel`` ``[I, 3H]``, ``ih/bias`` ``[3H]``, ``hh/kernel`` ``[H, 3H]``,
    ``hh/bias`` ``[3H]``; gate order (reset, update, new).

    Attributes:
      hidden_size: H.
      init_scale: weights are uniform in ``[-init_scale, init_scale)``.
      weight_drop: DropConnect probability on ``hh/kernel`` (one mask per call) in training.
      dtype: compute dtype of the matrix products; the state stays float32.
      param_dtype: storage dtype of the parameters.

    Example:
      >>> layer = GRULayer(8)
      >>> x, carry = jnp.ones((2, 5, 4)), layer.initial_carry(2)
      >>> params = layer.init(jax.random.key(0), x, carry)
      >>> h, carry = layer.apply(params, x, carry)
    """

    num_gates: ClassVar[int] = 3
    hh_bias: ClassVar[bool] = True

    def _step_fn(self, hh_GH, hb):
        def step(h, xw_BxG):
            zh = self._hh(h, hh_GH) + hb
            xr, xz, xn = jnp.split(xw_BxG, 3, axis=-1)
            hr, hz, hn = jnp.split(zh, 3, axis=-1)
            r = jax.nn.sigmoid(xr + hr)
            z = jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = n + z * (h - n)
            return h, h

        return step


class ElmanLayer(_RecurrentLayer):
    """One Elman (tanh) RNN layer over a window, ``[B, T, I] -> [B, T, H]``, carrying ``h``.

    ``h' = tanh(x W_ih + b + h W_hh)``, as ``torch.nn.RNN`` (whose two biases sum to ``b``).

    Attributes:
      hidden_size: H.
      init_scale: weights are uniform in ``[-init_scale, init_scale)``.
      weight_drop: DropConnect probability on ``hh/kernel`` (one mask per call) in training.
      dtype: compute dtype of the matrix products; the state stays float32.
      param_dtype: storage dtype of the parameters.

    Example:
      >>> layer = ElmanLayer(8)
      >>> x, carry = jnp.ones((2, 5, 4)), layer.initial_carry(2)
      >>> params = layer.init(jax.random.key(0), x, carry)
      >>> h, carry = layer.apply(params, x, carry)
    """

    def _step_fn(self, hh_GH, hb):
        def step(h, xw_BxH):
            h = jnp.tanh(xw_BxH + self._hh(h, hh_GH))
            return h, h

        return step


CELLS: dict[str, type[_RecurrentLayer]] = {"rnn": ElmanLayer, "lstm": LSTMLayer, "gru": GRULayer}


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
      dtype: compute dtype; logits are returned in float32.
      param_dtype: parameter storage dtype.

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
    embed_dropout: float = 0.0
    weight_drop: float | Sequence[float] = 0.0
    ar: float = 0.0
    tar: float = 0.0
    tie_embeddings: bool = False
    init_scale: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

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
        return nn.Dropout(rate, broadcast_dims=(1,))(x_BxTxF, deterministic=deterministic)

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
        if self.embed_dropout and not deterministic:
            keep = 1.0 - self.embed_dropout
            rows = jax.random.bernoulli(self.make_rng("dropout"), keep, (self.vocab_size, 1))
            table = jnp.where(rows, embed.embedding / keep, 0.0)
            x = jnp.take(table, tokens_BxT, axis=0).astype(self.dtype)
        else:
            x = embed(tokens_BxT)
        x = self._locked_dropout(x, p_in, deterministic)
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
            )(x, carry[i], deterministic=deterministic)
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
                x = nn.Dense(
                    self.embed_dim,
                    name="proj",
                    kernel_init=init,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                )(x)
            logits = embed.attend(x)
        else:
            logits = nn.Dense(
                self.vocab_size,
                name="head",
                kernel_init=init,
                bias_init=init,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )(x)
        return logits.astype(jnp.float32), tuple(new_carry), aux
