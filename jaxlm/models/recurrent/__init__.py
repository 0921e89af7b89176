"""Recurrent language models: a stack of recurrent layers between an embedding and a softmax.

Three cells share one layer shape: ``rnn`` (Elman, tanh), ``lstm`` and ``gru``.

- :mod:`.kernels`: the time loop as functions with a hand-written backward pass
  (:func:`recurrent_layer`, :func:`recurrence`) and its autodiff reference.
- :mod:`.layers`: one layer over a window as a flax module (:class:`LSTMLayer`,
  :class:`GRULayer`, :class:`ElmanLayer`), with the mapping of its weights onto PyTorch's.
- :mod:`.lm`: the language model, :class:`RecurrentLM`, with the AWD-LSTM regularizers.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = RecurrentLM(vocab_size=65, cell="gru", embed_dim=16, hidden_sizes=(32,))
  >>> tokens, carry = jnp.zeros((2, 10), jnp.int32), model.initial_carry(2)
  >>> params = model.init(jax.random.key(0), tokens, carry)["params"]
  >>> sorted(params)
  ['embed', 'head', 'layers_0']
"""

from jaxlm.models.recurrent.kernels import (
    batch_groups,
    recurrence,
    recurrent_layer,
    reference_layer,
)
from jaxlm.models.recurrent.layers import (
    CELLS,
    GATES,
    ElmanLayer,
    GRULayer,
    LSTMLayer,
    RecurrentLayer,
    gate_mask,
    uniform_init,
)
from jaxlm.models.recurrent.lm import RecurrentLM

__all__ = [
    "CELLS",
    "GATES",
    "ElmanLayer",
    "GRULayer",
    "LSTMLayer",
    "RecurrentLM",
    "RecurrentLayer",
    "batch_groups",
    "recurrence",
    "recurrent_layer",
    "reference_layer",
    "gate_mask",
    "uniform_init",
]
