"""The recurrent language model: an embedding, stacked recurrent layers and a softmax.

The AWD-LSTM regularizers (Merity et al. 2017, https://arxiv.org/abs/1708.02182) are switches
of :class:`RecurrentLM`: embedding dropout, locked dropout, weight-drop, AR and TAR; so is
dropout on an LSTM's forget, output and update gates (Semeniuta et al. 2016,
https://arxiv.org/abs/1603.05118, for the update).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.models.common import Dense, Dropout, is_on, on_rows
from jaxlm.models.recurrent.layers import CELLS, Carry, Dtype, RecurrentLayer, uniform_init


def _per_layer(value: float | Sequence[float], n: int, name: str) -> tuple[float, ...]:
    """A scalar broadcast to ``n`` layers (a traced one too), or a sequence of exactly ``n``."""
    if isinstance(value, int | float):
        return (float(value),) * n
    if getattr(value, "ndim", None) == 0:  # a traced hyperparameter (jaxlm.train.hparams)
        return (value,) * n
    values = tuple(float(v) for v in value)
    if len(values) != n:
        raise ValueError(f"RecurrentLM.{name}: {len(values)} values for {n} layers")
    return values


def _unset(rate: float | jax.Array) -> bool:
    """A negative ``input_dropout``/``hidden_dropout``: "same as ``dropout``" (a traced rate
    is always a set one)."""
    return isinstance(rate, int | float) and rate < 0


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
        Ghahramani; AWD-LSTM); False: a fresh mask at every time step (Zaremba et al.). The
        gate dropouts follow it too.
      embed_dropout: drops whole rows of the embedding matrix (a word is dropped everywhere it
        appears in the batch), remaining rows scaled by ``1 / (1 - p)``.
      weight_drop: DropConnect on each layer's ``hh/kernel``, one mask per window; a float for
        every layer or one value per layer.
      gate_dropout_forget: dropout on every LSTM layer's forget gate activation,
        ``c_t = d(f) c_{t-1} + i g`` (a kept ``f`` is scaled by ``1 / (1 - p)`` and may
        exceed 1).
      gate_dropout_output: dropout on the output gate, ``h_t = d(o) tanh(c_t)``.
      gate_dropout_update: dropout on the update (the cell candidate), ``c_t = f c_{t-1} +
        i d(g)``: Semeniuta et al.'s recurrent dropout without memory loss. A GRU takes this
        one only, on its candidate ``n``; an Elman RNN none (see :class:`RecurrentLayer`).
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
    gate_dropout_forget: float = 0.0
    gate_dropout_output: float = 0.0
    gate_dropout_update: float = 0.0
    ar: float = 0.0
    tar: float = 0.0
    tie_embeddings: bool = False
    init_scale: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    output_dtype: Dtype = jnp.float32

    def _cell(self) -> type[RecurrentLayer]:
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
        return Dropout(rate, broadcast_dims=dims)(x_BxTxF, deterministic=deterministic)

    @nn.compact
    def __call__(
        self,
        tokens_BxT: jax.Array,
        carry: Carry,
        *,
        deterministic: bool = True,
        embedded: jax.Array | None = None,
    ) -> tuple[jax.Array, Carry, dict[str, jax.Array]]:
        """Runs the model over a window.

        Args:
          tokens_BxT: int token ids.
          carry: the state at the window start (:meth:`initial_carry`).
          deterministic: False in training (dropout, weight-drop, AR/TAR).
          embedded: ``[B, T, E]`` inputs in embedding space that replace the lookup of
            ``tokens_BxT`` (embedding dropout does not apply to them): what
            :mod:`jaxlm.explain` differentiates and interpolates. None (the default) leaves
            the program as it is.

        Returns:
          ``(logits_BxTxV, new_carry, aux)``.
        """
        init = uniform_init(self.init_scale)
        n = len(self.hidden_sizes)
        weight_drop = _per_layer(self.weight_drop, n, "weight_drop")
        p_in = self.dropout if _unset(self.input_dropout) else self.input_dropout
        p_hid = self.dropout if _unset(self.hidden_dropout) else self.hidden_dropout
        embed = nn.Embed(
            self.vocab_size,
            self.embed_dim,
            embedding_init=init,
            name="embed",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        # Rounded to the compute dtype after the lookup, not before: a PTB-sized table is not
        # converted whole at every step for the window's few hundred rows.
        table = embed.embedding
        if is_on(self.embed_dropout) and not deterministic:
            # One keep/drop draw per vocabulary row: a word is dropped everywhere it occurs.
            # A token lookup fuses the row scaling (no scaled [V, E] copy is written); the
            # vocabulary-table path scales the small table it multiplies anyway.
            row_scale = Dropout(self.embed_dropout)(
                jnp.ones((self.vocab_size,), jnp.float32), deterministic=False
            )
            table = table * row_scale[:, None].astype(table.dtype)
        if embedded is not None:  # given in embedding space (jaxlm.explain)
            x, first = self._locked_dropout(embedded.astype(self.dtype), p_in, deterministic), {}
        elif is_on(p_in) and not deterministic:
            x = self._locked_dropout(
                jnp.take(table, tokens_BxT, axis=0, mode="clip").astype(self.dtype),
                p_in,
                deterministic,
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
                gate_dropout_forget=self.gate_dropout_forget,
                gate_dropout_output=self.gate_dropout_output,
                gate_dropout_update=self.gate_dropout_update,
                locked_gates=self.locked_dropout,
                name=f"layers_{i}",
            )(x, carry[i], deterministic=deterministic, **(first if i == 0 else {}))
            new_carry.append(c)
            x = self._locked_dropout(raw, p_hid if i < n - 1 else self.dropout, deterministic)
        aux: dict[str, jax.Array] = {}
        if not deterministic and (is_on(self.ar) or is_on(self.tar)):
            reg = jnp.zeros((), jnp.float32)
            if is_on(self.ar):
                reg += self.ar * jnp.mean(jnp.square(x.astype(jnp.float32)))
            if is_on(self.tar):
                diff = raw[:, 1:].astype(jnp.float32) - raw[:, :-1].astype(jnp.float32)
                reg += self.tar * jnp.mean(jnp.square(diff))
            aux["reg_loss"] = reg
        if self.tie_embeddings:
            if self.hidden_sizes[-1] != self.embed_dim:
                proj = Dense(
                    self.embed_dim,
                    name="proj",
                    kernel_init=init,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                )
                x = on_rows(proj, x)
            logits = on_rows(embed.attend, x)
        else:
            head = Dense(
                self.vocab_size,
                name="head",
                kernel_init=init,
                bias_init=init,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
            logits = on_rows(head, x)
        return logits.astype(self.output_dtype), tuple(new_carry), aux
