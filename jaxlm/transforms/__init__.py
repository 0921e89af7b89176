"""Optax transforms and schedules for language-model training and fine-tuning.

Each piece stands alone: an ``optax.GradientTransformation`` (composes with ``optax.chain``, runs
under ``jax.jit``) or an ``optax.Schedule``, working on any parameter pytree.

Parameters are selected by patterns: regular expressions matched against their "/"-joined paths
(see :func:`param_paths`) as whole path components (:func:`jaxlm.tree.compile_pattern`). A match
must start at the beginning of the path or just after a "/" and end at its end or just before a
"/": ``layers_1`` selects ``layers_1/kernel`` and ``decoder/layers_1/kernel`` but not
``layers_10/kernel``; ``^head`` only a top-level ``head``; ``kernel$`` every kernel; write
``layers_1.*`` to match inside a component. A pattern that matches nothing is an error.

Example:
  >>> import jax.numpy as jnp
  >>> params = {"layers_1": {"kernel": jnp.ones(2)}, "layers_10": {"kernel": jnp.ones(2)}}
  >>> match_groups(params, "layers_1")
  {'layers_1': {'kernel': 0}, 'layers_10': {'kernel': -1}}
  >>> match_groups(params, "layers_1.*")
  {'layers_1': {'kernel': 0}, 'layers_10': {'kernel': 0}}
"""

from jaxlm.transforms.centralization import centralize, centralize_matrices
from jaxlm.transforms.freezing import (
    GradualUnfreezeState,
    discriminative_lr,
    discriminative_scales,
    freeze,
    gradual_unfreeze,
    per_group_lr,
)
from jaxlm.transforms.paths import match_groups, param_paths, path_str
from jaxlm.transforms.schedules import (
    sgdr,
    slanted_triangular,
    step_decay,
    step_decay_per_epoch,
    warmup_cosine,
)
from jaxlm.transforms.spikes import SpikeGuardState, guard_spikes, spike_metrics, wants_loss
from jaxlm.transforms.validation import (
    NTASGDState,
    PlateauState,
    averaged_params,
    nt_asgd,
    reduce_on_plateau,
    report_validation_loss,
)

__all__ = [
    "SpikeGuardState",
    "guard_spikes",
    "spike_metrics",
    "wants_loss",
    "GradualUnfreezeState",
    "NTASGDState",
    "PlateauState",
    "averaged_params",
    "centralize",
    "centralize_matrices",
    "discriminative_lr",
    "discriminative_scales",
    "freeze",
    "gradual_unfreeze",
    "match_groups",
    "nt_asgd",
    "param_paths",
    "path_str",
    "per_group_lr",
    "reduce_on_plateau",
    "report_validation_loss",
    "sgdr",
    "slanted_triangular",
    "step_decay",
    "step_decay_per_epoch",
    "warmup_cosine",
]
