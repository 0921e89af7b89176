"""jaxlm: a functional JAX library to train, fine-tune, scale and explain language models.

The names most programs need are here; each lives in its module (``jaxlm.train``,
``jaxlm.checkpoints``, ...), imported on first use so that ``import jaxlm`` stays cheap::

    import jaxlm

    config = jaxlm.load_config("lstm:smoke")
    final = jaxlm.train_and_evaluate(config, "runs/smoke")
    model, params, tokenizer, config, *_ = jaxlm.load_run("runs/smoke")

The subpackages are attributes too: ``jaxlm.transforms`` (optax transforms), ``jaxlm.models``,
``jaxlm.data``, ``jaxlm.optim``, ``jaxlm.checkpoints``, ``jaxlm.train``, ``jaxlm.runtime``,
``jaxlm.jobs`` (the job balancer), ``jaxlm.search`` (hyperparameter search), ``jaxlm.explain``
(why a model predicted a token).
"""

from typing import TYPE_CHECKING

from jaxlm._lazy import attach

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Hook",
    "JaxlmError",
    "Progress",
    "Run",
    "base_config",
    "evaluate_run",
    "generate",
    "get_model",
    "load_config",
    "load_run",
    "train_and_evaluate",
]
_HOME = {
    "ConfigError": "jaxlm.errors",
    "JaxlmError": "jaxlm.errors",
    "Hook": "jaxlm.train.hooks",
    "Progress": "jaxlm.train.hooks",
    "Run": "jaxlm.checkpoints.run",
    "load_run": "jaxlm.checkpoints.run",
    "base_config": "jaxlm.config",
    "load_config": "jaxlm.config",
    "evaluate_run": "jaxlm.train.evaluate",
    "generate": "jaxlm.sampling",
    "get_model": "jaxlm.models",
    "train_and_evaluate": "jaxlm.train.loop",
}
_SUBPACKAGES = (
    "checkpoints",
    "config",
    "data",
    "errors",
    "explain",
    "jobs",
    "losses",
    "models",
    "optim",
    "precision",
    "runtime",
    "sampling",
    "search",
    "sharding",
    "state",
    "train",
    "transforms",
    "tree",
)
__getattr__, __dir__ = attach(__name__, _HOME, _SUBPACKAGES)

if TYPE_CHECKING:
    from jaxlm.checkpoints.run import Run, load_run
    from jaxlm.config import base_config, load_config
    from jaxlm.errors import ConfigError, JaxlmError
    from jaxlm.models import get_model
    from jaxlm.sampling import generate
    from jaxlm.train.evaluate import evaluate_run
    from jaxlm.train.hooks import Hook, Progress
    from jaxlm.train.loop import train_and_evaluate
