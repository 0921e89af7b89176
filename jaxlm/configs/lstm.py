"""Character-level LSTM on the built-in corpus (the default recipe).

Variants: ``configs/lstm.py`` (default, under 10 min on 2 CPU cores), ``:smoke`` (seconds, for
tests), ``:ptb`` (word-level Penn Treebank from ../shared/data/ptb).
"""

import ml_collections

from jaxlm.config import base_config, shrink_to_smoke
from jaxlm.errors import ConfigError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the recipe; ``arg`` selects a variant: None, "smoke" or "ptb"."""
    c = base_config("lstm")
    c.model.dropout = 0.1
    if arg in (None, ""):
        # 2x256 LSTM, ~0.96M parameters, 1300 steps of 64x64 characters (about 13 epochs of the
        # 0.42M-character training split): about 1.25 nats/char on validation in under 10
        # minutes on 2 CPU cores.
        c.data.batch_size = 64
        c.data.seq_len = 64
        c.model.embed_dim = 128
        c.model.hidden_sizes = (256, 256)
        c.optimizer.learning_rate = 3e-3
        c.train.num_steps = 1300
    elif arg == "smoke":
        shrink_to_smoke(c)
    elif arg == "ptb":
        c.name = "lstm_ptb"
        c.data.corpus = "text_files"
        c.data.path = "../shared/data/ptb"
        c.data.tokenizer = "word"
        c.data.batch_size = 20
        c.data.seq_len = 35
        c.data.eval_batch_size = 10
        c.model.embed_dim = 200
        c.model.hidden_sizes = (200, 200)
        c.model.dropout = 0.0
        c.train.num_steps = 3000
        c.train.eval_every = 1000
        c.train.checkpoint_every = 1000
        c.train.sample_prompt = "the "
    else:
        raise ConfigError(f"configs/lstm.py: unknown variant {arg!r}; expected smoke or ptb")
    c.lock()
    return c
