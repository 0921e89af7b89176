"""The training state: one pytree holding everything a run needs to resume exactly."""

from __future__ import annotations

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
    """Parameters, optimizer state, step, base RNG key and the recurrent carry.

    Attributes:
      step: int32 scalar, the number of updates applied.
      params: the model parameters (a plain nested dict).
      opt_state: the optax state (schedule counts, moments, loss scale, unfreeze progress).
      rng: the run's base key (raw uint32[2]); step ``s`` uses ``fold_in(rng, s)``.
      carry: the recurrent state carried from window to window (None for Transformers).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    carry: Any
