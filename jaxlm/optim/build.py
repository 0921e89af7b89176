"""Builds the optimizer from the config and the abstract parameter tree; the loop never branches.

The chain, outermost first: gradient accumulation (``optax.MultiSteps``) or skipping of
non-finite updates (``optax.apply_if_finite``); the fine-tuning preset
(:func:`jaxlm.optim.presets.strategy_transform`: freezing, gradual unfreezing, per-group rates)
around the base optimizer; the base optimizer is L2 (fine-tuning presets), gradient
centralization (weight matrices; embedding tables excluded), global-norm clipping, the update
rule with its schedule and weight decay, then reduce-on-plateau and NT-ASGD.

Presets that depend on the model's layout read it from the parameter tree, which is passed in
abstractly (``jax.eval_shape`` of the model's init): nothing is built lazily, and a pattern that
matches nothing fails here, before training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import optax

from jaxlm import transforms
from jaxlm.errors import ConfigError
from jaxlm.optim.presets import strategy_transform

SCHEDULES = ("constant", "cosine", "step", "slanted_triangular", "sgdr", "epoch_step", "plateau")
OPTIMIZERS = ("adam", "adamw", "sgd")
DECAY_MASKS = ("weights", "all")

# Lookup tables that gradient centralization and weight decay leave alone: the [V, E] token
# embedding of every jaxlm model (``embed/embedding``, also the output matrix when tied) and the
# Transformer's learned [max_len, E] positions (``pos_embed``). Their rows are vectors, not
# output units. Patterns match whole path components (jaxlm.tree.compile_pattern).
EMBEDDING_PATTERNS = (r"(^|/)embed/embedding$", r"(^|/)pos_embed$")


def _guarded(
    tx: optax.GradientTransformation, m: ml_collections.ConfigDict | None, hp: Mapping[str, Any]
) -> optax.GradientTransformation:
    """``tx`` inside the spike guard when ``config.monitor`` checks loss or gradient spikes."""
    if m is None or not (m.spike_factor or m.grad_factor):
        return tx

    def factor(name: str) -> Any:  # traced when the check is on (jaxlm.train.hparams)
        return hp.get(f"monitor.{name}", m[name]) if m[name] else 0.0

    return transforms.guard_spikes(
        tx,
        loss_factor=factor("spike_factor"),
        grad_factor=factor("grad_factor"),
        warmup=m.spike_warmup,
        decay=m.spike_decay,
        skip_loss=m.spike_policy == "skip",
        skip_grad=m.grad_policy == "skip",
        max_consecutive=m.spike_max_consecutive,
    )


def build_schedule(
    opt: ml_collections.ConfigDict, num_steps: int, peak: Any = None
) -> optax.Schedule:
    """The learning-rate schedule named by ``opt.schedule``, over optimizer updates.

    ``plateau`` is a constant rate here; the cut on a validation plateau is a transform
    (:func:`jaxlm.transforms.reduce_on_plateau`) that :func:`build_optimizer` adds.

    Args:
      opt: the ``optimizer`` section of a config.
      num_steps: total optimizer updates (the decaying schedules end there).
      peak: the peak rate as a traced scalar (a hyperparameter argument of the compiled step,
        :mod:`jaxlm.train.hparams`); None: ``opt.learning_rate``. optax's warm-up cosine
        asks ``peak_value == 0.0`` in Python, so with a traced peak the cosine schedule is
        composed here from the same optax pieces (its floor ``alpha`` is
        ``end_lr_fraction`` itself, which optax computes as ``end / peak``), and SGDR is the
        unit schedule times the peak.

    Returns:
      A function from update count to learning rate.

    Example:
      >>> from jaxlm.config import base_config
      >>> sched = build_schedule(base_config().optimizer, 1000)
      >>> float(sched(0))
      0.0
    """
    traced = peak is not None
    peak = opt.learning_rate if peak is None else peak
    name = opt.schedule
    if name in ("constant", "plateau"):
        return optax.constant_schedule(peak)
    if name == "cosine" and traced:
        return _traced_warmup_cosine(opt, peak, max(num_steps, 1))
    if name == "sgdr" and traced:
        unit = transforms.sgdr(
            1.0,
            opt.sgdr_period,
            max(num_steps, 1),
            period_mult=opt.sgdr_mult,
            end_value=opt.end_lr_fraction,
        )
        return lambda step: peak * unit(step)
    if name == "cosine":
        return transforms.warmup_cosine(
            peak, opt.warmup_steps, max(num_steps, 1), end_value=peak * opt.end_lr_fraction
        )
    if name == "step":
        return _step_schedule(opt, num_steps, peak)
    if name == "slanted_triangular":
        return transforms.slanted_triangular(
            peak, max(num_steps, 2), cut_frac=opt.cut_frac, ratio=opt.stlr_ratio
        )
    if name == "sgdr":
        return transforms.sgdr(
            peak,
            opt.sgdr_period,
            max(num_steps, 1),
            period_mult=opt.sgdr_mult,
            end_value=peak * opt.end_lr_fraction,
        )
    if name == "epoch_step":
        if opt.steps_per_epoch < 1:
            raise ConfigError(
                "config.optimizer.steps_per_epoch must be set (>= 1) for schedule 'epoch_step'"
            )
        return transforms.step_decay_per_epoch(
            peak, opt.steps_per_epoch, opt.decay_after_epochs, opt.decay_factor
        )
    raise ConfigError(
        f"config.optimizer.schedule: unknown schedule {name!r}; expected one of {SCHEDULES}"
    )


def _traced_warmup_cosine(
    opt: ml_collections.ConfigDict, peak: Any, total_steps: int
) -> optax.Schedule:
    """:func:`jaxlm.transforms.warmup_cosine` for a traced peak, built from optax's pieces."""
    warmup = min(max(int(opt.warmup_steps), 0), total_steps - 1)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak, warmup),
            optax.cosine_decay_schedule(peak, total_steps - warmup, alpha=opt.end_lr_fraction),
        ],
        [warmup],
    )


def _step_schedule(opt: ml_collections.ConfigDict, num_steps: int, peak: Any) -> optax.Schedule:
    """Decays at ``decay_start_step + k * decay_every``, those in ``[1, num_steps)``."""
    every = int(opt.decay_every)
    if every < 1:
        raise ConfigError(f"config.optimizer.decay_every must be >= 1, got {every}")
    # A decay at step 0 would only lower the peak: the first decay point and how many, in
    # closed form.
    start = int(opt.decay_start_step)
    points = range(start, num_steps, every)
    points = points[(-start) // every + 1 :] if start <= 0 else points
    return transforms.step_decay(
        peak, points.start, every, opt.decay_factor, max_decays=len(points)
    )


def accumulate_steps(config: ml_collections.ConfigDict) -> int:
    """Micro-batches per optimizer update (``optimizer.accumulate_steps``, at least 1)."""
    return max(int(config.optimizer.get("accumulate_steps", 1)), 1)


def learning_rate(config: ml_collections.ConfigDict, peak: Any = None) -> optax.Schedule:
    """The rate in force at each training (micro-batch) step, as the train step reports it.

    Args:
      config: a full run config.
      peak: the peak rate as a traced scalar (see :func:`build_schedule`); None: the config's.

    Returns:
      A function from training step to learning rate: the update schedule of
      :func:`build_schedule`, counted in updates when gradients are accumulated.

    Example:
      >>> from jaxlm.config import base_config
      >>> round(float(learning_rate(base_config())(100)), 6)  # the end of the warm-up
      0.002
    """
    k = accumulate_steps(config)
    schedule = build_schedule(config.optimizer, math.ceil(config.train.num_steps / k), peak)
    return schedule if k == 1 else lambda step: schedule(step // k)


def decay_mask(params: Any) -> Any:
    """Which parameters weight decay acts on: weight matrices, not embeddings, biases or norms.

    The usual mask for decoupled weight decay (GPT-2, nanoGPT, most fine-tuning recipes):
    leaves of rank >= 2, except the embedding tables of :data:`EMBEDDING_PATTERNS`.

    Args:
      params: the parameters (or any tree with their paths and shapes).

    Returns:
      A tree of bools shaped like ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> tree = {"embed": {"embedding": jnp.ones((5, 2))}, "head": {"kernel": jnp.ones((2, 5)),
      ...         "bias": jnp.ones(5)}}
      >>> decay_mask(tree)
      {'embed': {'embedding': False}, 'head': {'bias': False, 'kernel': True}}
    """
    from jaxlm.tree import compile_pattern, path_str

    tables = [compile_pattern(p) for p in EMBEDDING_PATTERNS]

    def decays(path: Any, leaf: Any) -> bool:
        name = path_str(path)
        return len(getattr(leaf, "shape", ())) >= 2 and not any(t.search(name) for t in tables)

    return jax.tree_util.tree_map_with_path(decays, params)


def _rule(
    opt: ml_collections.ConfigDict, schedule: optax.Schedule, weight_decay: Any
) -> optax.GradientTransformation:
    """The update rule named by ``opt.name`` with its weight decay (the config's value says
    whether there is any; ``weight_decay``, maybe traced, how much)."""
    mask = decay_mask if opt.get("decay_mask", "all") == "weights" else None
    if opt.name == "adamw":
        return optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=weight_decay, mask=mask)
    if opt.name == "adam":
        rule = optax.adam(schedule, b1=opt.b1, b2=opt.b2)
    elif opt.name == "sgd":
        rule = optax.sgd(schedule, momentum=opt.momentum or None)
    else:
        raise ConfigError(
            f"config.optimizer.name: unknown optimizer {opt.name!r}; expected one of {OPTIMIZERS}"
        )
    if opt.weight_decay:  # L2 added to the gradient, as classic Adam and SGD do
        rule = optax.chain(optax.add_decayed_weights(weight_decay, mask), rule)
    return rule


def build_optimizer(
    config: ml_collections.ConfigDict, params: Any = None, hparams: Mapping[str, Any] | None = None
) -> optax.GradientTransformation:
    """The optimizer for a run, everything the config asks for composed with ``optax.chain``.

    Continuous hyperparameters can be given as traced values (``hparams``), so that the
    optimizer is built inside the compiled step from its arguments and one program serves
    every value (:mod:`jaxlm.train.hparams`). The chain's shape, and so its state's tree,
    depends only on the config: a value the config sets to 0 (no weight decay, no clipping)
    leaves its transform out, whatever ``hparams`` holds.

    Args:
      config: a full run config (reads ``optimizer``, ``finetune`` and ``train.num_steps``).
      params: the parameter tree, usually abstract (``jax.eval_shape`` of the model's init).
        Fine-tuning presets other than ``full`` need it to find the model's layers; when given,
        the optimizer is also initialised abstractly once, so that a bad pattern fails here.
      hparams: ``{"optimizer.learning_rate": x, "optimizer.weight_decay": ...,
        "optimizer.clip_norm": ...}``, any of them, traced or not, in place of the config's
        values; None: the config's.

    Returns:
      An ``optax.GradientTransformation``. With ``optimizer.accumulate_steps = k > 1`` it is an
      ``optax.MultiSteps`` one: call ``update`` once per micro-batch; the parameters move every
      k-th call with the mean gradient (the schedule then counts updates, not micro-batches).

    Example:
      >>> from jaxlm.config import base_config
      >>> tx = build_optimizer(base_config())
    """
    opt = config.optimizer
    hp = dict(hparams or {})
    k = accumulate_steps(config)
    schedule = build_schedule(
        opt, math.ceil(config.train.num_steps / k), hp.get("optimizer.learning_rate")
    )
    weight_decay = hp.get("optimizer.weight_decay", opt.weight_decay)

    def make_base(clip_norm: float | None = None, l2: float = 0.0) -> optax.GradientTransformation:
        parts = []
        if l2:
            parts.append(optax.add_decayed_weights(l2))
        if opt.get("centralize", False):
            parts.append(transforms.centralize_matrices(exclude=EMBEDDING_PATTERNS))
        clip = opt.clip_norm if clip_norm is None else clip_norm
        if clip:
            value = hp.get("optimizer.clip_norm", clip) if clip_norm is None else clip
            parts.append(optax.clip_by_global_norm(value))
        parts.append(_rule(opt, schedule, weight_decay))
        return optax.chain(*parts)

    tx = strategy_transform(config.finetune, make_base, params, updates_per_step=1.0 / k)
    tail = []
    if opt.schedule == "plateau":
        tail.append(
            transforms.reduce_on_plateau(
                factor=opt.plateau_factor,
                patience=opt.plateau_patience,
                cooldown=opt.plateau_cooldown,
            )
        )
    if opt.get("nt_asgd_nonmono", 0):
        tail.append(transforms.nt_asgd(opt.nt_asgd_nonmono))
    if tail:
        tx = optax.chain(tx, *tail)
    skip = opt.get("skip_nonfinite", False)
    if k > 1:
        tx = optax.MultiSteps(
            tx, k, should_skip_update_fn=optax.skip_not_finite if skip else None
        ).gradient_transformation()
    elif skip:
        tx = optax.apply_if_finite(tx, opt.max_nonfinite)
    tx = _guarded(tx, config.get("monitor"), hp)
    if params is not None and hparams is None:
        jax.eval_shape(tx.init, params)
    return tx
