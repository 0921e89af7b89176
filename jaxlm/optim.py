"""Builds the optimizer from the config out of optax pieces; the loop never branches on it."""

from __future__ import annotations

import ml_collections
import optax


def build_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """The learning-rate schedule named by ``opt.schedule``.

    Args:
      opt: the ``optimizer`` section of a config.
      num_steps: total training steps (the cosine decay ends there).

    Returns:
      A function from step to learning rate.

    Example:
      >>> from jaxlm.config import base_config
      >>> sched = build_schedule(base_config().optimizer, 1000)
      >>> float(sched(0))
      0.0
    """
    peak = opt.learning_rate
    if opt.schedule == "constant":
        return optax.constant_schedule(peak)
    if opt.schedule == "cosine":
        warmup = min(opt.warmup_steps, max(num_steps - 1, 0))
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=max(num_steps, warmup + 1),
            end_value=peak * opt.end_lr_fraction,
        )
    if opt.schedule == "step":
        boundaries = {
            int(step): opt.decay_factor
            for step in range(opt.decay_start_step, num_steps, opt.decay_every)
            if step > 0
        }
        return optax.piecewise_constant_schedule(peak, boundaries)
    raise ValueError(
        f"config.optimizer.schedule: unknown schedule {opt.schedule!r}; expected constant, "
        "cosine or step"
    )


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimizer chain for a run: clipping, then the update rule with its schedule.

    Args:
      config: a full run config (reads ``optimizer`` and ``train.num_steps``).

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> from jaxlm.config import base_config
      >>> tx = build_optimizer(base_config())
    """
    opt = config.optimizer
    schedule = build_schedule(opt, config.train.num_steps)
    if opt.name == "adam":
        rule = optax.adam(schedule, b1=opt.b1, b2=opt.b2)
        if opt.weight_decay:  # L2 added to the gradient, as classic Adam does
            rule = optax.chain(optax.add_decayed_weights(opt.weight_decay), rule)
    elif opt.name == "adamw":
        rule = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
    elif opt.name == "sgd":
        rule = optax.sgd(schedule, momentum=opt.momentum or None)
        if opt.weight_decay:
            rule = optax.chain(optax.add_decayed_weights(opt.weight_decay), rule)
    else:
        raise ValueError(
            f"config.optimizer.name: unknown optimizer {opt.name!r}; expected adam, adamw or sgd"
        )
    parts = []
    if opt.clip_norm:
        parts.append(optax.clip_by_global_norm(opt.clip_norm))
    parts.append(rule)
    return optax.chain(*parts)
