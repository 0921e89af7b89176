"""Language models behind one registry: ``get_model(config.model, vocab_size, policy)``.

Every neural model keeps one interface: ``model.apply({"params": p}, tokens_BxT, carry,
deterministic=bool, rngs={"dropout": key})`` returns ``(logits_BxTxV float32, new_carry, aux)``,
and ``model.initial_carry(batch_size, max_length=None)`` gives the starting carry. The n-gram
model is count-based: its entry, :class:`NGramLM`, holds the config and ``fit`` builds it.

Each model owns its defaults: they are the fields of its class (a dataclass, as flax modules
are), which :func:`model_defaults` reads, so a config only names what it changes.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from jaxlm._lazy import attach

if TYPE_CHECKING:
    import flax.linen as nn
    import ml_collections

    from jaxlm.models.ngram import NGramLM
    from jaxlm.models.recurrent import ElmanLayer, GRULayer, LSTMLayer, RecurrentLM
    from jaxlm.models.transformer import Transformer
    from jaxlm.precision import Policy

# The recurrent cells (``jaxlm.models.recurrent.CELLS``; a test keeps the two equal).
RECURRENT = ("gru", "lstm", "rnn")
# Model name -> the module and class that build it, imported when first asked for: the n-gram
# path (numpy only) never imports flax or JAX.
_CLASSES: dict[str, tuple[str, str]] = {
    **dict.fromkeys(RECURRENT, ("jaxlm.models.recurrent", "RecurrentLM")),
    "ngram": ("jaxlm.models.ngram", "NGramLM"),
    "transformer": ("jaxlm.models.transformer", "Transformer"),
}
MODELS = tuple(sorted(_CLASSES))
# Constructor arguments that are not config fields: the vocabulary comes from the tokenizer, the
# dtypes from the precision policy, a recurrent model's cell from its name; flax sets the rest.
_NOT_CONFIG = frozenset({"vocab_size", "dtype", "param_dtype", "output_dtype", "parent", "name"})

__all__ = [
    "MODELS",
    "RECURRENT",
    "ElmanLayer",
    "GRULayer",
    "LSTMLayer",
    "NGramLM",
    "RecurrentLM",
    "Transformer",
    "get_model",
    "model_defaults",
]
__getattr__, __dir__ = attach(
    __name__,
    {
        **dict.fromkeys(["ElmanLayer", "GRULayer", "LSTMLayer", "RecurrentLM"],
                        "jaxlm.models.recurrent"),
        "NGramLM": "jaxlm.models.ngram",
        "Transformer": "jaxlm.models.transformer",
    },
    ("common", "ngram", "recurrent", "transformer"),
)  # fmt: skip


def _model_class(name: str) -> type:
    """The class that builds model ``name``, or the registry's error."""
    try:
        module, attr = _CLASSES[name]
    except KeyError:
        raise ValueError(
            f"config.model.name: unknown model {name!r}; expected one of {sorted(MODELS)}"
        ) from None
    return getattr(importlib.import_module(module), attr)


def model_defaults(name: str) -> dict[str, Any]:
    """The config fields of model ``name`` and their defaults, read from the model's class.

    Args:
      name: one of :data:`MODELS`.

    Returns:
      ``{field: default}`` for every field of the class that a config may set: all but
      ``vocab_size`` (the tokenizer's), the dtypes (the precision policy's), a recurrent
      model's ``cell`` (its name) and flax's ``parent`` and ``name``.

    Raises:
      ValueError: ``name`` is not a registered model.

    Example:
      >>> model_defaults("lstm")["hidden_sizes"]
      (512, 512)
      >>> model_defaults("ngram")["method"]
      'modified_kneser_ney'
    """
    cls = _model_class(name)
    skip = _NOT_CONFIG | ({"cell"} if name in RECURRENT else set())
    return {
        f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(cls)
        if f.init and f.name not in skip
    }


def _frozen(value: Any) -> Any:
    """Lists (from JSON) and tuples as tuples, all the way down; other values as they are."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def _fields(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of model ``name`` that ``given`` sets, checked by name."""
    own = model_defaults(name)
    out = {}
    for key, value in given.items():
        if key in own:
            out[key] = _frozen(value)
        elif key != "name":
            raise ValueError(
                f"config.model.{key}: {name} has no such field; its fields are {sorted(own)}"
            )
    return out


def get_model(
    model_config: ml_collections.ConfigDict | Mapping[str, Any],
    vocab_size: int,
    policy: Policy | None = None,
) -> nn.Module | NGramLM:
    """Builds the model that ``model_config.name`` names.

    Only ``name`` is required: every field the config leaves out takes the model's default
    (:func:`model_defaults`). Lists (configs read back from JSON) become tuples.

    Args:
      model_config: the ``model`` section of a run config, a ConfigDict or a plain mapping;
        ``name`` is one of :data:`MODELS`.
      vocab_size: the tokenizer's vocabulary size.
      policy: dtype policy of the neural models; float32 throughout when None.

    Returns:
      A ``flax.linen.Module`` with jaxlm's model interface (see :class:`RecurrentLM` and
      :class:`Transformer`), or for ``"ngram"`` an :class:`NGramLM` (its ``fit`` builds the
      model).

    Raises:
      ValueError: the name is missing or unknown, or a field is not one of the model's; the
        message names the ``config.model`` field.

    Example:
      >>> model = get_model({"name": "gru", "hidden_sizes": [64]}, vocab_size=65)
      >>> model.cell, model.hidden_sizes, model.embed_dim
      ('gru', (64,), 256)
    """
    name = model_config.get("name")
    if name is None:
        raise ValueError(f"config.model.name: missing; expected one of {sorted(MODELS)}")
    cls = _model_class(name)
    fields = _fields(name, dict(model_config.items()))
    if name == "ngram":
        return cls(vocab_size=vocab_size, **fields)
    if name in RECURRENT:
        fields["cell"] = name
    if policy is None:
        from jaxlm.precision import Policy

        policy = Policy()
    return cls(
        vocab_size=vocab_size,
        **fields,
        dtype=policy.compute_dtype,
        param_dtype=policy.param_dtype,
        output_dtype=policy.output_dtype,
    )
