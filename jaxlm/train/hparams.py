"""Continuous hyperparameters as arguments of the compiled train step, not constants in it.

The peak learning rate, weight decay, clip norm, label smoothing, every dropout rate (and
AWD-LSTM's AR/TAR coefficients) and the augmentation's rates (``data.augment.*``) enter
``train_step(state, batch, hparams)`` as float32 scalars, so two runs that differ only in
them lower to the same HLO and JAX's persistent compilation cache serves the second one its
compiled step: a hyperparameter search with the same shapes compiles once. ``hparams`` is a
flat dict keyed by the dotted config field (``{"optimizer.learning_rate": 2e-3,
"model.dropout": 0.1}``), built from the config at every run (:func:`from_config`); it is
not part of the :class:`~jaxlm.state.TrainState`, so checkpoints keep their structure and old
ones restore unchanged.

What we chose, and why: ``optax.inject_hyperparams`` keeps the values in the optimizer state,
which changes the state's tree (every checkpoint written so far would need an upgrade) and
covers only the optimizer, not the model's dropout or the loss's smoothing. Instead the step
rebuilds the optax chain from its traced arguments (:func:`jaxlm.optim.build_optimizer` with
``hparams``) at trace time: the chain's transforms are pure functions of their values, so the
same state tree, the same numbers, and no value is baked in. The model is cloned with the
traced rates (:func:`bind_model`), and its dropout (:class:`jaxlm.models.common.Dropout`)
accepts a traced rate where flax's compares ``rate == 0.0`` in Python.

A field the config sets to exactly 0 (no dropout, no weight decay, no clipping, no
smoothing) stays a static "off": its part of the program is left out, which is a different
(smaller) program. :func:`fields_in_force` says which fields are traced; runs that switch a
field on and off compile twice, once per shape of program. A per-layer ``weight_drop`` tuple
stays static too (only a scalar is traced).

Example:
  >>> from jaxlm.config import load_config
  >>> config = load_config("lstm:smoke")
  >>> sorted(from_config(config))
  ['model.dropout', 'optimizer.clip_norm', 'optimizer.learning_rate']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlm import optim
from jaxlm.errors import ConfigError

HParams = dict[str, Any]

# The continuous fields a compiled step takes as arguments. "Same as dropout" (< 0) values of
# input_dropout/hidden_dropout are static: the rate they stand for is model.dropout's.
OPTIMIZER_FIELDS = ("optimizer.learning_rate", "optimizer.weight_decay", "optimizer.clip_norm")
TRAIN_FIELDS = ("train.label_smoothing",)
MODEL_FIELDS = (
    "model.dropout",
    "model.input_dropout",
    "model.hidden_dropout",
    "model.embed_dropout",
    "model.weight_drop",
    "model.gate_dropout_forget",
    "model.gate_dropout_output",
    "model.gate_dropout_update",
    "model.ar",
    "model.tar",
    "model.attention_dropout",
)
# The augmentation's rates (jaxlm.data.augment): traced where the config switches them on. Its
# tables (the source's CDF, the word tables) join the same argument (jaxlm.train.plan.run_step).
DATA_FIELDS = (
    "data.augment.replace",
    "data.augment.delete",
    "data.augment.insert",
    "data.augment.swap",
)
# The spike guard's factors (jaxlm.transforms.spikes): traced where the config switches them on.
MONITOR_FIELDS = ("monitor.spike_factor", "monitor.grad_factor")
CONTINUOUS = OPTIMIZER_FIELDS + TRAIN_FIELDS + MODEL_FIELDS + DATA_FIELDS + MONITOR_FIELDS
# Rates that must stay below 1 (a perturbation or a search may not reach it).
RATES = (
    TRAIN_FIELDS
    + tuple(f for f in MODEL_FIELDS if f not in ("model.ar", "model.tar"))
    + DATA_FIELDS
)


def get_field(config: ml_collections.ConfigDict, dotted: str) -> Any:
    """The value of a dotted field (``"optimizer.learning_rate"``); KeyError if absent."""
    section, _, name = dotted.rpartition(".")
    node = config
    for part in section.split(".") if section else ():
        node = node[part]
    return node[name]


def _in_force(dotted: str, value: Any) -> bool:
    """Whether a field's config value is traced: a number that switches its part on."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False  # a per-layer tuple, or not a number
    if dotted == "optimizer.learning_rate":
        return True
    return value > 0


def fields_in_force(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The continuous fields that ``config`` switches on, in :data:`CONTINUOUS` order.

    Args:
      config: a run config (the fine-tuning preset's model settings applied or not: this
        applies them, :func:`jaxlm.optim.prepare_config`).

    Returns:
      Dotted field names: the learning rate always; the others when non-zero (present in the
      config's model section, and a scalar).

    Example:
      >>> from jaxlm.config import load_config
      >>> fields_in_force(load_config("transformer:smoke"))
      ('optimizer.learning_rate', 'optimizer.clip_norm')
    """
    prepared = optim.prepare_config(config)
    out = []
    for dotted in CONTINUOUS:
        try:
            value = get_field(prepared, dotted)
        except (KeyError, AttributeError):
            continue
        if _in_force(dotted, value):
            out.append(dotted)
    return tuple(out)


def from_config(config: ml_collections.ConfigDict, fields: Sequence[str] | None = None) -> HParams:
    """The step's hyperparameter argument for a run: each field's value as a float32 scalar.

    Args:
      config: a run config.
      fields: which fields (a population passes the union over its members); None:
        :func:`fields_in_force`.

    Returns:
      ``{dotted field: np.float32}`` (the fine-tuning preset's model settings applied).

    Example:
      >>> from jaxlm.config import load_config
      >>> float(from_config(load_config("lstm:smoke"))["model.dropout"])
      0.1...
    """
    prepared = optim.prepare_config(config)
    fields = fields_in_force(config) if fields is None else fields
    return {f: np.float32(get_field(prepared, f)) for f in fields}


def abstract(hparams: Mapping[str, Any], sharding: Any = None) -> HParams:
    """``hparams`` as ``jax.ShapeDtypeStruct`` s, to compile from shapes: float32, or int32
    for integer arrays (the augmentation's word table, :func:`jaxlm.data.augment.tables`).

    Args:
      hparams: from :func:`from_config` (or a population's, with a leading member axis).
      sharding: each one's sharding (e.g. replicated over the mesh); None: unspecified.

    Returns:
      The same keys, abstract.

    Example:
      >>> {k: v.dtype.name for k, v in abstract({"a": 0.5, "b": np.zeros(3, np.int32)}).items()}
      {'a': 'float32', 'b': 'int32'}
    """

    def dtype(v: Any) -> Any:
        return jnp.int32 if np.issubdtype(np.asarray(v).dtype, np.integer) else jnp.float32

    return {
        k: jax.ShapeDtypeStruct(np.shape(v), dtype(v), sharding=sharding)
        for k, v in hparams.items()
    }


def bind_model(model: Any, hparams: Mapping[str, Any]) -> Any:
    """The model with its rates taken from ``hparams`` (traced values inside a step).

    Args:
      model: a jaxlm flax model.
      hparams: the step's hyperparameters; ``model.*`` entries the model has are applied.

    Returns:
      ``model.clone(...)`` with those attributes, or ``model`` itself when there are none.

    Example:
      >>> from jaxlm.models import RecurrentLM
      >>> m = bind_model(RecurrentLM(vocab_size=5), {"model.dropout": 0.25})
      >>> m.dropout
      0.25
    """
    attrs = {
        name: value
        for dotted, value in hparams.items()
        if dotted.startswith("model.") and hasattr(model, name := dotted[len("model.") :])
    }
    return model.clone(**attrs) if attrs else model


def check_same_shapes(
    configs: Sequence[ml_collections.ConfigDict], *, allowed: Sequence[str] = CONTINUOUS
) -> None:
    """Refuses configs that differ in anything but continuous hyperparameters.

    A population trains its members in one compiled step, so everything else (sizes, the
    schedule's name, the seed, the corpus) must agree.

    Args:
      configs: the members' configs.
      allowed: the fields that may differ.

    Raises:
      ConfigError: naming the first field that differs and its values.

    Example:
      >>> from jaxlm.config import load_config
      >>> a, b = load_config("lstm:smoke"), load_config("lstm:smoke")
      >>> b.model.hidden_sizes = (32, 32)
      >>> check_same_shapes([a, b])
      Traceback (most recent call last):
      ...
      jaxlm.errors.ConfigError: population member 1: config.model.hidden_sizes=(32, 32) differs ...
    """
    first = _flat(configs[0])
    for i, config in enumerate(configs[1:], 1):
        other = _flat(config)
        for key in sorted(set(first) | set(other)):
            a, b = first.get(key), other.get(key)
            if a == b:
                continue
            if key in allowed and all(_in_force(key, v) or v == 0 for v in (a, b)):
                continue  # both scalars: a traced value
            raise ConfigError(
                f"population member {i}: config.{key}={_shown(b)} differs from member 0's "
                f"{_shown(a)}; only continuous hyperparameters (scalars of "
                f"{', '.join(allowed)}) may differ inside a population"
            )


def _flat(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Every field of a config by dotted name (sections recursed, values as they are)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown(value: Any) -> str:
    return repr(tuple(value) if isinstance(value, list) else value)
