"""Search spaces for the LSTM recipes (``configs/lstm.py``).

Variants: ``configs/search/lstm.py`` (learning rate, dropout, weight decay and width, for TPE
or random search), ``:grid`` (a 3x3 grid over learning rate and dropout), ``:rates`` (learning
rate, dropout and weight decay only: every trial has the same shapes).
"""

from jaxlm.errors import SearchError
from jaxlm.search.space import choice, grid, loguniform, uniform


def get_space(arg: str | None = None) -> dict:
    """Returns the space; ``arg`` selects a variant: None, "grid" or "rates"."""
    if arg in (None, ""):
        return {
            "optimizer.learning_rate": loguniform(3e-4, 3e-2),
            "model.dropout": uniform(0.0, 0.5),
            "optimizer.weight_decay": loguniform(1e-6, 1e-1),
            "model.hidden_sizes": choice([(128, 128), (256, 256), (384, 384)]),
        }
    if arg == "grid":
        return {
            "optimizer.learning_rate": grid([1e-3, 3e-3, 1e-2]),
            "model.dropout": grid([0.0, 0.1, 0.2]),
        }
    if arg == "rates":
        return {
            "optimizer.learning_rate": loguniform(3e-4, 3e-2),
            "model.dropout": uniform(0.0, 0.5),
            "optimizer.weight_decay": loguniform(1e-6, 1e-1),
        }
    raise SearchError(f"configs/search/lstm.py: unknown variant {arg!r}; expected grid or rates")
