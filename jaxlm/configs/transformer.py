"""Character-level decoder-only Transformer on the built-in corpus.

Variants: ``configs/transformer.py`` (default: 4 layers, 4 heads, width 256, context 128, batch
32, the benchmark's shape), ``:smoke`` (seconds, for tests), ``:rotary`` (the default with
RMSNorm and rotary positions).
"""

import ml_collections

from jaxlm.config import base_config, shrink_to_smoke
from jaxlm.errors import ConfigError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the recipe; ``arg`` selects a variant: None, "smoke" or "rotary"."""
    c = base_config("transformer")
    c.name = "transformer"
    c.model.tie_embeddings = True
    c.model.embed_dim = 256
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.mlp_dim = 0  # 4 * embed_dim
    c.model.max_len = 512  # positions; a longer end-of-run sample crops its context to them
    c.model.dropout = 0.1
    c.data.batch_size = 32
    c.data.seq_len = 128
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.1
    c.optimizer.b2 = 0.99
    c.optimizer.warmup_steps = 100
    c.train.num_steps = 1500
    c.train.carry_state = False  # nothing to carry: each window is attended to on its own
    if arg in (None, ""):
        pass
    elif arg == "rotary":
        c.name = "transformer_rotary"
        c.model.positions = "rotary"
        c.model.norm = "rmsnorm"
    elif arg == "smoke":
        shrink_to_smoke(c)  # name, batch, window, width, steps: as every smoke variant
        c.model.num_layers = 2
        c.model.num_heads = 2
        c.model.max_len = 64
        c.model.dropout = 0.0
        c.optimizer.learning_rate = 3e-3
        c.optimizer.weight_decay = 0.0
    else:
        raise ConfigError(
            f"configs/transformer.py: unknown variant {arg!r}; expected smoke or rotary"
        )
    c.lock()
    return c
