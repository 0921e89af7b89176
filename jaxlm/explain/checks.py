"""Sanity checks of attributions: the model-parameter randomisation test.

Adebayo et al. (2018, "Sanity Checks for Saliency Maps", https://arxiv.org/abs/1810.03292): an
attribution method that explains the model must give different attributions when the trained
parameters are replaced by a fresh initialisation. :func:`randomisation_check` reports the
Spearman rank correlation between the two, per target, of the signed scores and of their
magnitudes; near 1 would mean the method shows the input, not what the model learned.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from jaxlm.explain.core import attribute


@dataclasses.dataclass
class RandomisationCheck:
    """The rank correlations between trained and re-initialised attributions.

    Attributes:
      method: the attribution method.
      spearman: per target, the rank correlation of the signed attributions.
      spearman_abs: per target, of their absolute values.
    """

    method: str
    spearman: np.ndarray
    spearman_abs: np.ndarray

    @property
    def mean(self) -> float:
        """The mean signed rank correlation over targets (NaNs left out)."""
        return float(np.nanmean(self.spearman))

    @property
    def mean_abs(self) -> float:
        """The mean rank correlation of the magnitudes over targets (NaNs left out)."""
        return float(np.nanmean(self.spearman_abs))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def randomisation_check(
    model: Any,
    params: Any,
    tokens: Any,
    targets: Any = None,
    method: str = "ig",
    *,
    seed: int = 0,
    **options: Any,
) -> RandomisationCheck:
    """Attributions of the trained model against those of a freshly initialised one.

    The targets are resolved on the trained model (its top tokens) and explained again, the
    same tokens, on the re-initialised one.

    Args:
      model: a neural registry model.
      params: its trained parameters.
      tokens: ``[T]`` token ids.
      targets: as :func:`~jaxlm.explain.attribute` takes them.
      method: one attribution method.
      seed: the seed of the fresh initialisation.
      **options: passed to :func:`~jaxlm.explain.attribute`.

    Returns:
      A :class:`RandomisationCheck`; only targets with at least two attributed tokens get a
      correlation (the others NaN).

    Example:
      >>> check = randomisation_check(model, params, tokens, "all")  # doctest: +SKIP
      >>> round(check.mean, 2)  # doctest: +SKIP
      0.12
    """
    from jaxlm.explain.core import Target

    trained = attribute(model, params, tokens, targets, method=method, **options)
    ids = jnp.asarray(trained.tokens, jnp.int32)[None]
    fresh = jax.jit(model.init)(jax.random.key(seed), ids, model.initial_carry(1))["params"]
    again = [Target(t.position, t.token, t.contrast) for t in trained.targets]
    other = attribute(model, fresh, tokens, again, method=method, **options)
    rho, rho_abs = [], []
    for a, b in zip(trained.targets, other.targets, strict=True):
        x, y = a.attributions[method], b.attributions[method]
        rho.append(_spearman(x, y))
        rho_abs.append(_spearman(np.abs(x), np.abs(y)))
    return RandomisationCheck(method, np.array(rho), np.array(rho_abs))
