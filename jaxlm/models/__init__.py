"""Language models behind one registry: ``get_model(config.model, vocab_size, policy)``.

Every model keeps one interface: ``model.apply({"params": p}, tokens_BxT, carry,
deterministic=bool, rngs={"dropout": key})`` returns ``(logits_BxTxV float32, new_carry, aux)``,
and ``model.initial_carry(batch_size, max_length=None)`` gives the starting carry.
"""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from jaxlm.models.recurrent import CELLS, ElmanLayer, GRULayer, LSTMLayer, RecurrentLM
from jaxlm.models.transformer import Transformer
from jaxlm.precision import Policy

RECURRENT = tuple(sorted(CELLS))
MODELS = (*RECURRENT, "transformer")

__all__ = [
    "MODELS",
    "RECURRENT",
    "ElmanLayer",
    "GRULayer",
    "LSTMLayer",
    "RecurrentLM",
    "Transformer",
    "get_model",
]


def get_model(
    model_config: ml_collections.ConfigDict, vocab_size: int, policy: Policy | None = None
) -> nn.Module:
    """Builds the flax module that ``model_config.name`` names.

    Args:
      model_config: the ``model`` section of a run config; ``name`` is one of :data:`MODELS`.
      vocab_size: the tokenizer's vocabulary size.
      policy: dtype policy; float32 throughout when None.

    Returns:
      A ``flax.linen.Module`` with jaxlm's model interface (see :class:`RecurrentLM` and
      :class:`Transformer`).

    Example:
      >>> from jaxlm.config import base_config
      >>> model = get_model(base_config().model, vocab_size=65)
    """
    policy = policy or Policy()
    m = model_config
    if m.name in RECURRENT:
        weight_drop = m.get("weight_drop", 0.0)
        return RecurrentLM(
            vocab_size=vocab_size,
            cell=m.name,
            embed_dim=m.embed_dim,
            hidden_sizes=tuple(m.hidden_sizes),
            dropout=m.dropout,
            input_dropout=m.get("input_dropout", -1.0),
            hidden_dropout=m.get("hidden_dropout", -1.0),
            locked_dropout=m.get("locked_dropout", True),
            embed_dropout=m.get("embed_dropout", 0.0),
            weight_drop=weight_drop if isinstance(weight_drop, int | float) else tuple(weight_drop),
            ar=m.get("ar", 0.0),
            tar=m.get("tar", 0.0),
            tie_embeddings=m.tie_embeddings,
            init_scale=m.init_scale,
            dtype=policy.compute_dtype,
            param_dtype=policy.param_dtype,
            output_dtype=policy.output_dtype,
        )
    if m.name == "transformer":
        return Transformer(
            vocab_size=vocab_size,
            embed_dim=m.embed_dim,
            num_layers=m.get("num_layers", 4),
            num_heads=m.get("num_heads", 4),
            mlp_dim=m.get("mlp_dim", 0),
            max_len=m.get("max_len", 512),
            dropout=m.dropout,
            attention_dropout=m.get("attention_dropout", 0.0),
            norm=m.get("norm", "layernorm"),
            positions=m.get("positions", "learned"),
            tie_embeddings=m.tie_embeddings,
            remat=m.get("remat", False),
            dtype=policy.compute_dtype,
            param_dtype=policy.param_dtype,
            output_dtype=policy.output_dtype,
        )
    raise ValueError(
        f"config.model.name: unknown model {m.name!r}; expected one of {sorted(MODELS)}"
    )
