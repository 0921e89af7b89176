"""Language models behind one registry: ``get_model(config.model, vocab_size, policy)``."""

from __future__ import annotations

import ml_collections

from jaxlm.models.rnn import RecurrentLM
from jaxlm.precision import Policy

RECURRENT = ("lstm",)


def get_model(
    model_config: ml_collections.ConfigDict, vocab_size: int, policy: Policy | None = None
):
    """Builds the flax module that ``model_config.name`` names.

    Args:
      model_config: the ``model`` section of a run config.
      vocab_size: the tokenizer's vocabulary size.
      policy: dtype policy; float32 throughout when None.

    Returns:
      A ``flax.linen.Module`` with jaxlm's model interface (see :class:`RecurrentLM`).

    Example:
      >>> from jaxlm.config import base_config
      >>> model = get_model(base_config().model, vocab_size=65)
    """
    policy = policy or Policy()
    m = model_config
    if m.name in RECURRENT:
        return RecurrentLM(
            vocab_size=vocab_size,
            cell=m.name,
            embed_dim=m.embed_dim,
            hidden_sizes=tuple(m.hidden_sizes),
            dropout=m.dropout,
            embed_dropout=m.get("embed_dropout", 0.0),
            tie_embeddings=m.tie_embeddings,
            init_scale=m.init_scale,
            dtype=policy.compute_dtype,
            param_dtype=policy.param_dtype,
        )
    raise ValueError(
        f"config.model.name: unknown model {m.name!r}; expected one of {sorted(RECURRENT)}"
    )
