"""Fine-tuning a Hugging Face GPT-2 converted to jaxlm, with GPT-2's own tokenizer.

Convert first (``python tools/checkpoint.py gpt2 to-jaxlm hf/gpt2 runs/gpt2``), then::

    python -m jaxlm.train --config=configs/gpt2.py --config.init_from=runs/gpt2 \\
        --config.data.tokenizer_path=hf/gpt2 \\
        --config.data.corpus=text_files --config.data.path=../shared/data/tinyshakespeare/input.txt

Variants: the default is GPT-2 small's shape (124M: 12 layers, 12 heads, width 768, 1024
positions); ``medium``, ``large`` and ``xl`` are the larger GPT-2s; ``smoke`` is a tiny
model of the same kind for tests (its own tokenizer folder still has to be given). The model
fields must be the checkpoint's (a mismatch is refused before training and named).
"""

import ml_collections

from jaxlm.config import base_config, shrink_to_smoke
from jaxlm.errors import ConfigError

# (layers, heads, width) of the released GPT-2s.
SIZES = {
    None: (12, 12, 768),
    "medium": (24, 16, 1024),
    "large": (36, 20, 1280),
    "xl": (48, 25, 1600),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the recipe; ``arg`` selects a variant: None, "medium", "large", "xl", "smoke"."""
    c = base_config("transformer")
    c.name = "gpt2"
    c.data.tokenizer = "gpt2"
    c.data.tokenizer_path = ""  # the Hugging Face folder: required, checked before any work
    c.data.seq_len = 256
    c.data.batch_size = 8
    c.data.eval_batch_size = 8
    c.model.update(
        {
            "max_len": 1024,
            "mlp_dim": 0,  # 4 * embed_dim
            "norm": "layernorm",
            "positions": "learned",
            "tie_embeddings": True,
            "dropout": 0.1,
            "attention_dropout": 0.1,
        }
    )
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-4  # fine-tuning: well below pre-training's 6e-4
    c.optimizer.weight_decay = 0.1
    c.optimizer.b2 = 0.95
    c.optimizer.warmup_steps = 50
    c.optimizer.clip_norm = 1.0
    c.train.num_steps = 1000
    c.train.carry_state = False  # nothing to carry: each window is attended to on its own
    if arg == "smoke":
        shrink_to_smoke(c)
        c.model.update({"num_layers": 2, "num_heads": 2, "max_len": 64, "dropout": 0.0})
        c.model.attention_dropout = 0.0
        c.optimizer.learning_rate = 1e-3
    elif arg in SIZES or arg == "":
        layers, heads, width = SIZES[arg or None]
        c.model.update({"num_layers": layers, "num_heads": heads, "embed_dim": width})
        if arg:
            c.name = f"gpt2_{arg}"
    else:
        raise ConfigError(
            f"configs/gpt2.py: unknown variant {arg!r}; expected medium, large, xl or smoke"
        )
    c.lock()
    return c
