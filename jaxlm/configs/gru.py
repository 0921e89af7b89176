"""Character-level GRU on the built-in corpus.

Variants: ``configs/gru.py`` (default, about the lstm recipe's size and time), ``:smoke``
(seconds, for tests).
"""

import ml_collections

from jaxlm.config import base_config, shrink_to_smoke
from jaxlm.errors import ConfigError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the recipe; ``arg`` selects a variant: None or "smoke"."""
    c = base_config("gru")
    c.name = "gru"
    c.model.dropout = 0.1
    if arg in (None, ""):
        c.data.batch_size = 64
        c.data.seq_len = 64
        c.model.embed_dim = 128
        c.model.hidden_sizes = (288, 288)  # 3 gates to an LSTM's 4: a little wider, same cost
        c.optimizer.learning_rate = 3e-3
        c.train.num_steps = 1500
    elif arg == "smoke":
        shrink_to_smoke(c)
    else:
        raise ConfigError(f"configs/gru.py: unknown variant {arg!r}; expected smoke")
    c.lock()
    return c
