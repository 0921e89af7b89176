"""The optimizer a config describes: :func:`build_optimizer` and the fine-tuning presets.

``build`` composes optax pieces and :mod:`jaxlm.transforms` from ``config.optimizer`` and
``config.finetune`` and the (abstract) parameter tree; ``presets`` expands a fine-tuning
strategy into freezing, unfreezing and per-group rates. Neither reads files.
"""

from jaxlm.optim.build import (
    DECAY_MASKS,
    EMBEDDING_PATTERNS,
    OPTIMIZERS,
    SCHEDULES,
    accumulate_steps,
    build_optimizer,
    build_schedule,
    decay_mask,
    learning_rate,
)
from jaxlm.optim.presets import STRATEGIES, Layout, model_layout, prepare_config, strategy_transform

__all__ = [
    "DECAY_MASKS",
    "EMBEDDING_PATTERNS",
    "OPTIMIZERS",
    "SCHEDULES",
    "STRATEGIES",
    "Layout",
    "accumulate_steps",
    "build_optimizer",
    "build_schedule",
    "decay_mask",
    "learning_rate",
    "model_layout",
    "prepare_config",
    "strategy_transform",
]
