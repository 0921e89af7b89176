"""Builds the optimizer from the config out of optax pieces; the loop never branches on it.

The chain, outermost first: gradient accumulation (``optax.MultiSteps``) or skipping of
non-finite updates (``optax.apply_if_finite``); the fine-tuning preset
(:func:`jaxlm.finetune.strategy_transform`: freezing, gradual unfreezing, per-group rates) around
the base optimizer; the base optimizer is L2 (fine-tuning presets), gradient centralization
(weight matrices; embedding tables excluded), global-norm clipping, the update rule with its
schedule, then reduce-on-plateau and NT-ASGD.
"""

from __future__ import annotations

import math

import jax
import ml_collections
import optax

from jaxlm import finetune, transforms

SCHEDULES = ("constant", "cosine", "step", "slanted_triangular", "sgdr", "epoch_step", "plateau")

# Lookup tables that gradient centralization leaves alone: the [V, E] token embedding of every
# jaxlm model (``embed/embedding``, also the output matrix when tied) and the Transformer's
# learned [max_len, E] positions (``pos_embed``). Their rows are vectors, not output units.
EMBEDDING_PATTERNS = (r"(^|/)embed/embedding$", r"(^|/)pos_embed$")


def build_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """The learning-rate schedule named by ``opt.schedule``.

    ``plateau`` is a constant rate here; the cut on a validation plateau is a transform
    (:func:`jaxlm.transforms.reduce_on_plateau`) that :func:`build_optimizer` adds.

    Args:
      opt: the ``optimizer`` section of a config.
      num_steps: total optimizer updates (the decaying schedules end there).

    Returns:
      A function from step to learning rate.

    Example:
      >>> from jaxlm.config import base_config
      >>> sched = build_schedule(base_config().optimizer, 1000)
      >>> float(sched(0))
      0.0
    """
    peak = opt.learning_rate
    name = opt.schedule
    if name in ("constant", "plateau"):
        return optax.constant_schedule(peak)
    if name == "cosine":
        return transforms.warmup_cosine(
            peak, opt.warmup_steps, max(num_steps, 1), end_value=peak * opt.end_lr_fraction
        )
    if name == "step":
        every = int(opt.decay_every)
        if every < 1:
            raise ValueError(f"config.optimizer.decay_every must be >= 1, got {every}")
        # Decays at decay_start_step + k * every, those in [1, num_steps) (a decay at step 0
        # would only lower the peak): the first of them and how many, in closed form.
        start = int(opt.decay_start_step)
        points = range(start, num_steps, every)
        points = points[(-start) // every + 1 :] if start <= 0 else points
        return transforms.step_decay(
            peak, points.start, every, opt.decay_factor, max_decays=len(points)
        )
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
            raise ValueError(
                "config.optimizer.steps_per_epoch must be set (>= 1) for schedule 'epoch_step'"
            )
        return transforms.step_decay_per_epoch(
            peak, opt.steps_per_epoch, opt.decay_after_epochs, opt.decay_factor
        )
    raise ValueError(
        f"config.optimizer.schedule: unknown schedule {name!r}; expected one of {SCHEDULES}"
    )


def _rule(opt: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """The update rule named by ``opt.name`` with its weight decay."""
    if opt.name == "adam":
        rule = optax.adam(schedule, b1=opt.b1, b2=opt.b2)
        if opt.weight_decay:  # L2 added to the gradient, as classic Adam does
            rule = optax.chain(optax.add_decayed_weights(opt.weight_decay), rule)
        return rule
    if opt.name == "adamw":
        return optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
    if opt.name == "sgd":
        rule = optax.sgd(schedule, momentum=opt.momentum or None)
        if opt.weight_decay:
            rule = optax.chain(optax.add_decayed_weights(opt.weight_decay), rule)
        return rule
    raise ValueError(
        f"config.optimizer.name: unknown optimizer {opt.name!r}; expected adam, adamw or sgd"
    )


def build_optimizer(config: ml_collections.ConfigDict, params=None) -> optax.GradientTransformation:
    """The optimizer for a run, everything the config asks for composed with ``optax.chain``.

    Args:
      config: a full run config (reads ``optimizer``, ``finetune`` and ``train.num_steps``).
      params: optional parameters (or their ``jax.eval_shape``); when given, the optimizer is
        initialised abstractly once so that a bad pattern or preset fails here, early.

    Returns:
      An ``optax.GradientTransformation``. With ``optimizer.accumulate_steps = k > 1`` it is an
      ``optax.MultiSteps`` one: call ``update`` once per micro-batch; the parameters move every
      k-th call with the mean gradient (the schedule then counts updates, not micro-batches).

    Example:
      >>> from jaxlm.config import base_config
      >>> tx = build_optimizer(base_config())
    """
    opt = config.optimizer
    accumulate = max(int(opt.get("accumulate_steps", 1)), 1)
    num_updates = math.ceil(config.train.num_steps / accumulate)
    schedule = build_schedule(opt, num_updates)

    def make_base(clip_norm: float | None = None, l2: float = 0.0) -> optax.GradientTransformation:
        parts = []
        if l2:
            parts.append(optax.add_decayed_weights(l2))
        if opt.get("centralize", False):
            parts.append(transforms.centralize_matrices(exclude=EMBEDDING_PATTERNS))
        clip = opt.clip_norm if clip_norm is None else clip_norm
        if clip:
            parts.append(optax.clip_by_global_norm(clip))
        parts.append(_rule(opt, schedule))
        return optax.chain(*parts)

    ft = config.get("finetune")
    if ft is None:
        tx = make_base()
    else:
        tx = finetune.strategy_transform(ft, make_base, updates_per_step=1.0 / accumulate)
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
    if accumulate > 1:
        tx = optax.MultiSteps(
            tx, accumulate, should_skip_update_fn=optax.skip_not_finite if skip else None
        ).gradient_transformation()
    elif skip:
        tx = optax.apply_if_finite(tx, opt.max_nonfinite)
    if params is not None:
        jax.eval_shape(tx.init, params)
    return tx
