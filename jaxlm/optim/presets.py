"""Fine-tuning strategy presets: which parameters train, and how fast, as optax transforms.

``config.finetune.strategy`` names a preset; :func:`strategy_transform` expands it into
``jaxlm.transforms`` around the base optimizer (``jaxlm.optim.build_optimizer`` calls it with the
abstract parameter tree). The presets find the model's layers in the parameter tree itself:
stacked layers are the path components ``layers_<i>`` / ``blocks_<i>``, the output layer is
``head`` (or the embedding when embeddings are tied, with any projection before it), the input
side is ``embed`` (and any positional embedding). :func:`model_layout` shows what they find. See
``docs/finetuning.md`` for when to use which. Nothing here reads files: loading the pretrained
weights is :func:`jaxlm.checkpoints.load_pretrained`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import ml_collections
import optax

from jaxlm import transforms
from jaxlm.errors import ConfigError

PyTree = Any
STRATEGIES = (
    "full",
    "freeze_all_but_last",
    "tune_last_layers",
    "feature",
    "gradual_unfreeze",
    "discriminative",
)
_LAYER = re.compile(r"^(?:layers|blocks)_(\d+)$")


class Layout(NamedTuple):
    """Where a model's parameters sit, as path patterns ordered from the output side down.

    Attributes:
      output: exact-path patterns of the output layer (``head``, or the tied embedding and any
        projection and final norm before it).
      layers: one pattern per stacked layer, top (last) first.
      inputs: exact-path patterns of the untied input embedding(s); empty when tied.
    """

    output: tuple[str, ...]
    layers: tuple[str, ...]
    inputs: tuple[str, ...]

    def groups(self) -> list[list[str]]:
        """Top-down groups: output, each layer from the last to the first, then the inputs."""
        out: list[list[str]] = [list(self.output)]
        out += [[p] for p in self.layers]
        if self.inputs:
            out.append(list(self.inputs))
        return out


def model_layout(params: PyTree) -> Layout:
    """Finds the output layer, the stacked layers and the input embedding of a model's tree.

    Args:
      params: the model's parameters (or their ``jax.eval_shape``).

    Returns:
      A :class:`Layout`.

    Raises:
      ValueError: when the tree has no ``layers_<i>``/``blocks_<i>`` or no output layer.

    Example:
      >>> import jax.numpy as jnp
      >>> tree = {"embed": {"embedding": jnp.zeros(1)}, "layers_0": {"k": jnp.zeros(1)},
      ...         "layers_1": {"k": jnp.zeros(1)}, "head": {"kernel": jnp.zeros(1)}}
      >>> model_layout(tree).groups()
      [['^head/kernel$'], ['layers_1'], ['layers_0'], ['^embed/embedding$']]
    """
    paths = transforms.param_paths(params)
    layers: dict[int, str] = {}
    has_head = any(p.split("/")[0] == "head" for p in paths)
    output, inputs = [], []
    for path in paths:
        parts = path.split("/")
        found = [(i, m) for i, part in enumerate(parts) if (m := _LAYER.match(part))]
        if found:
            i, m = found[0]
            layers[int(m.group(1))] = re.escape(parts[i])  # transforms match whole components
            continue
        exact = f"^{re.escape(path)}$"
        is_input = "embed" in parts[0] or parts[0].startswith("pos")
        if is_input and not (parts[0] == "embed" and not has_head):
            inputs.append(exact)
        else:
            output.append(exact)
    if not layers:
        raise ValueError(
            "fine-tuning presets need stacked layers named layers_<i> or blocks_<i>; the tree "
            f"has: {paths}"
        )
    if not output:
        raise ValueError(f"fine-tuning presets found no output layer (head) in: {paths}")
    ordered = tuple(layers[i] for i in sorted(layers, reverse=True))
    return Layout(tuple(output), ordered, tuple(inputs))


def _lower_layers(layout: Layout, keep: int) -> list[str]:
    """Patterns of everything below the top ``keep`` layers (input embedding included)."""
    if keep < 0:
        raise ConfigError(f"config.finetune.num_last_layers must be >= 0, got {keep}")
    return [*layout.layers[keep:], *layout.inputs]


def strategy_transform(
    finetune: ml_collections.ConfigDict | None,
    make_base: Callable[..., optax.GradientTransformation],
    params: PyTree = None,
    *,
    updates_per_step: float = 1.0,
) -> optax.GradientTransformation:
    """Expands ``finetune.strategy`` into transforms around the base optimizer.

    * ``full``: the base optimizer, unchanged.
    * ``freeze_all_but_last``: :func:`jaxlm.transforms.freeze` of every layer below the last
      ``num_last_layers`` and of the input embedding; the output layer trains.
    * ``tune_last_layers``: the same freezing, with L2 (``finetune.l2``) added to the gradient
      and global-norm clipping at ``finetune.clip_norm`` over the trainable leaves (dropout:
      see :func:`prepare_config`).
    * ``feature``: only the output layer trains, at ``finetune.lr_factor`` times the rate.
    * ``gradual_unfreeze``: :func:`jaxlm.transforms.gradual_unfreeze`, output layer from step
      0, then one more group (layer, top down; the input embedding last) every
      ``finetune.unfreeze_every`` steps.
    * ``discriminative``: :func:`jaxlm.transforms.discriminative_lr`, each group's rate
      ``finetune.discriminative_factor`` times smaller than the one above.

    Args:
      finetune: the ``finetune`` section of a config.
      make_base: ``make_base(clip_norm=None, l2=0.0)`` returns the base optimizer; the keyword
        arguments, when given, override the base clipping and add an L2 term.
      params: the parameter tree (abstract is enough); every preset but ``full`` reads the
        model's layout from it.
      updates_per_step: optimizer updates per training step (``1 / accumulate_steps``), to turn
        ``unfreeze_every`` into update counts.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ConfigError: an unknown strategy, or a preset other than ``full`` without ``params``.

    Example:
      >>> import optax
      >>> from jaxlm.config import base_config
      >>> import jax.numpy as jnp
      >>> ft = base_config().finetune
      >>> ft.strategy = "feature"
      >>> params = {"embed": {"embedding": jnp.ones((5, 2))}, "layers_0": {"k": jnp.ones(2)},
      ...           "head": {"kernel": jnp.ones((2, 5))}}
      >>> tx = strategy_transform(ft, lambda **kw: optax.adam(1e-3), params)

    References:
      Howard and Ruder, "Universal Language Model Fine-tuning for Text Classification", ACL 2018,
      https://arxiv.org/abs/1801.06146; Yosinski et al., "How transferable are features in deep
      neural networks?", NeurIPS 2014, https://arxiv.org/abs/1411.1792.
    """
    name = "full" if finetune is None else finetune.strategy
    if name not in STRATEGIES:
        raise ConfigError(
            f"config.finetune.strategy: unknown strategy {name!r}; expected one of {STRATEGIES}"
        )
    if name == "full":
        return make_base()
    if params is None:
        raise ConfigError(
            f"config.finetune.strategy={name!r} reads the model's layers from its parameter "
            "tree: pass params (jax.eval_shape of the model's init is enough)"
        )
    layout = model_layout(params)
    if name in ("freeze_all_but_last", "tune_last_layers"):
        frozen = _lower_layers(layout, finetune.num_last_layers)
        base = (
            make_base(clip_norm=finetune.clip_norm, l2=finetune.l2)
            if name == "tune_last_layers"
            else make_base()
        )
        return transforms.freeze(frozen, base) if frozen else base
    if name == "feature":
        frozen = [*layout.layers, *layout.inputs]
        return transforms.freeze(frozen, optax.chain(make_base(), optax.scale(finetune.lr_factor)))
    groups = layout.groups()
    if name == "gradual_unfreeze":
        every = max(int(round(finetune.unfreeze_every * updates_per_step)), 0)
        boundaries = [i * every for i in range(len(groups))]
        return transforms.gradual_unfreeze(groups, boundaries, make_base())
    # discriminative
    return optax.chain(
        make_base(), transforms.discriminative_lr(groups, finetune.discriminative_factor)
    )


def prepare_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config with the preset's model-side settings applied (a copy; ``config`` is untouched).

    Only ``tune_last_layers`` changes anything: ``model.dropout`` is raised to at least
    ``finetune.dropout``.

    Args:
      config: a run config.

    Returns:
      The config to build the model from.

    Example:
      >>> from jaxlm.config import base_config
      >>> c = base_config(); c.finetune.strategy = "tune_last_layers"; c.model.dropout = 0.0
      >>> prepare_config(c).model.dropout
      0.3
    """
    out = config.copy_and_resolve_references()
    if config.finetune.strategy == "tune_last_layers":
        out.model.dropout = max(config.model.dropout, config.finetune.dropout)
    return out
