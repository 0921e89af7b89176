"""Search spaces: dotted config fields mapped to distributions, checked against the config.

A space file (``configs/search/lstm.py``) has ``get_space(arg=None)`` returning a dict such as
``{"optimizer.learning_rate": loguniform(1e-4, 1e-2), "model.dropout": uniform(0, 0.5)}``.
:func:`to_distributions` turns a space into Optuna distributions (Optuna samples; nothing here
does), :func:`apply_params` turns a trial's parameters back into a validated config, and
:func:`check_space` rejects an unknown field, an empty space or a value the config would refuse
before any trial starts. What this adds to Optuna: the space lives next to the recipes as a
file with variants, entries can be overridden from the command line
(``--space.model.dropout=uniform:0:0.3``), every entry is checked against
:func:`jaxlm.config.validate` at its extremes, and choices of tuples (``model.hidden_sizes``)
travel through Optuna's storage as their ``repr`` (Optuna's categorical values must be plain
scalars).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import importlib.util
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxlm.config import validate
from jaxlm.errors import ConfigError, SearchError

SPACES_DIR = Path(__file__).resolve().parents[1] / "configs" / "search"
_SCALARS = (str, int, float, bool, type(None))


@dataclasses.dataclass(frozen=True)
class Distribution:
    """One entry of a search space; build it with :func:`loguniform`, :func:`uniform`,
    :func:`integer`, :func:`choice` or :func:`grid`.

    Attributes:
      kind: ``loguniform``, ``uniform``, ``int``, ``choice`` or ``grid``.
      low, high: the bounds (both included) of ``loguniform``, ``uniform`` and ``int``.
      values: the values of ``choice`` and ``grid``.
      step: ``int``'s step (and ``uniform``'s, when set).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()
    step: float | None = None

    def describe(self) -> str:
        """The entry as the command line writes it: ``loguniform:0.0001:0.01``.

        Example:
          >>> loguniform(1e-4, 1e-2).describe(), choice([1, 2]).describe()
          ('loguniform:0.0001:0.01', 'choice:[1, 2]')
        """
        if self.kind in ("choice", "grid"):
            return f"{self.kind}:{list(self.values)!r}"
        step = "" if self.step is None else f":{self.step!r}"
        return f"{self.kind}:{self.low!r}:{self.high!r}{step}"

    def extremes(self) -> list[Any]:
        """The values :func:`check_space` tries against the config: the bounds or every value."""
        if self.kind in ("choice", "grid"):
            return list(self.values)
        return [self.low, self.high]

    def grid_values(self, field: str) -> list[Any]:
        """Every value a grid search takes (``int`` ranges are expanded).

        Raises:
          SearchError: a continuous distribution, which has no finite grid.

        Example:
          >>> integer(1, 4).grid_values("model.num_layers")
          [1, 2, 3, 4]
        """
        if self.kind in ("choice", "grid"):
            return [_encode(v) for v in self.values]
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise SearchError(
            f"space field {field}: --sampler=grid needs finite values, got {self.describe()}; "
            "use grid([...]) or choice([...])"
        )


def _check_bounds(kind: str, low: float, high: float) -> None:
    for name, value in (("low", low), ("high", high)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise SearchError(f"{kind}({low!r}, {high!r}): {name} must be a finite number")
    if low >= high:
        raise SearchError(f"{kind}({low!r}, {high!r}): expected low < high")


def loguniform(low: float, high: float) -> Distribution:
    """Real values between ``low`` and ``high`` (both > 0), uniform in their logarithm.

    Example:
      >>> loguniform(1e-4, 1e-2).kind
      'loguniform'
      >>> loguniform(0, 1)
      Traceback (most recent call last):
      ...
      jaxlm.errors.SearchError: loguniform(0, 1): expected 0 < low (a log scale)
    """
    _check_bounds("loguniform", low, high)
    if low <= 0:
        raise SearchError(f"loguniform({low!r}, {high!r}): expected 0 < low (a log scale)")
    return Distribution("loguniform", float(low), float(high))


def uniform(low: float, high: float, step: float | None = None) -> Distribution:
    """Real values between ``low`` and ``high``, uniform (every ``step`` if given).

    Example:
      >>> uniform(0, 0.5).high
      0.5
      >>> uniform(0.5, 0.5)
      Traceback (most recent call last):
      ...
      jaxlm.errors.SearchError: uniform(0.5, 0.5): expected low < high
    """
    _check_bounds("uniform", low, high)
    return Distribution("uniform", float(low), float(high), step=step)


def integer(low: int, high: int, step: int = 1) -> Distribution:
    """Integers from ``low`` to ``high`` (both included), every ``step``; ``int(1, 4)`` in the
    issue's words (``int_`` is the same function).

    Example:
      >>> integer(1, 4).grid_values("f")
      [1, 2, 3, 4]
    """
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, step)):
        raise SearchError(f"int({low!r}, {high!r}): expected integers")
    _check_bounds("int", low, high)
    if step < 1:
        raise SearchError(f"int({low!r}, {high!r}, step={step!r}): expected step >= 1")
    return Distribution("int", low, high, step=step)


int_ = integer


def choice(values: Sequence[Any]) -> Distribution:
    """One of ``values`` (numbers, strings, tuples such as ``(256, 256)``); a categorical
    distribution for the samplers, every value for a grid.

    Example:
      >>> choice([(256, 256), (512, 512)]).values
      ((256, 256), (512, 512))
    """
    return Distribution("choice", values=_values("choice", values))


def grid(values: Sequence[Any]) -> Distribution:
    """The values a grid search takes (a categorical distribution for the other samplers).

    Example:
      >>> grid([1e-3, 3e-3]).describe()
      'grid:[0.001, 0.003]'
    """
    return Distribution("grid", values=_values("grid", values))


def _values(kind: str, values: Sequence[Any]) -> tuple[Any, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise SearchError(f"{kind}({values!r}): expected a non-empty list of values")
    out = tuple(tuple(v) if isinstance(v, list) else v for v in values)
    if len({repr(v) for v in out}) != len(out):
        raise SearchError(f"{kind}({list(values)!r}): a value is given twice")
    return out


def _encode(value: Any) -> Any:
    """A value as Optuna's storage keeps it: a scalar as it is, a tuple as its repr."""
    return value if isinstance(value, _SCALARS) else repr(value)


# --------------------------------------------------------------------------------------------
# Space files and overrides.


def parse_entry(text: str, where: str = "") -> Distribution:
    """A distribution written on the command line.

    Args:
      text: ``loguniform:1e-4:1e-2``, ``uniform:0:0.5``, ``int:1:4``, ``choice:[(64,),(128,)]``,
        ``grid:1e-3,3e-3,1e-2`` (a list, or values separated by commas).
      where: the flag, for the error message.

    Returns:
      The distribution.

    Raises:
      SearchError: an unknown kind or bad numbers, said with the flag.

    Example:
      >>> parse_entry("loguniform:1e-4:1e-2")
      Distribution(kind='loguniform', low=0.0001, high=0.01, values=(), step=None)
      >>> parse_entry("grid:0.0,0.1").values
      (0.0, 0.1)
    """
    kind, _, rest = text.partition(":")
    prefix = f"{where}: " if where else ""
    try:
        if kind in ("choice", "grid"):
            literal = rest if rest.lstrip().startswith("[") else f"[{rest}]"
            values = ast.literal_eval(literal)
            return (choice if kind == "choice" else grid)(values)
        parts = [ast.literal_eval(p) for p in rest.split(":")] if rest else []
        makers = {"loguniform": loguniform, "uniform": uniform, "int": integer}
        if kind not in makers:
            raise SearchError(
                f"unknown distribution {kind!r}; expected loguniform, uniform, int, choice or grid"
            )
        if len(parts) not in (2, 3) or (kind == "loguniform" and len(parts) != 2):
            raise SearchError(f"expected {kind}:LOW:HIGH, got {text!r}")
        return makers[kind](*parts)
    except SearchError as e:
        raise SearchError(f"{prefix}{e}") from None
    except (ValueError, SyntaxError, TypeError) as e:
        raise SearchError(
            f"{prefix}cannot read {text!r} ({e}); e.g. loguniform:1e-4:1e-2"
        ) from None


def space_file(spec: str) -> tuple[Path, str | None]:
    """The file and variant a ``--space`` value names: a path, or a shipped space's name.

    Example:
      >>> space_file("lstm:grid")[0].name, space_file("lstm:grid")[1]
      ('lstm.py', 'grid')
    """
    path, _, arg = spec.partition(":")
    file = Path(path).expanduser()
    if file.is_file():
        return file, arg or None
    shipped = SPACES_DIR / f"{file.stem}.py"
    if shipped.is_file() and file.suffix in ("", ".py"):
        return shipped, arg or None
    names = sorted(p.stem for p in SPACES_DIR.glob("*.py") if not p.stem.startswith("_"))
    raise SearchError(f"space file not found: {path} (shipped spaces: {', '.join(names)})")


def load_space(
    spec: str | None, overrides: Mapping[str, str] | None = None
) -> dict[str, Distribution]:
    """Reads a space file's ``get_space(arg)`` and applies command-line overrides.

    Args:
      spec: ``configs/search/lstm.py[:variant]`` or a shipped name (``lstm:grid``); None: the
        overrides alone make the space.
      overrides: dotted field -> entry text (``{"model.dropout": "uniform:0:0.3"}``).

    Returns:
      Dotted field -> distribution, in the file's order, overrides last.

    Raises:
      SearchError: a missing file, a file without ``get_space``, an entry that is no
        distribution, or a bad override.

    Example:
      >>> space = load_space("lstm:grid", {"model.dropout": "grid:0.0,0.2"})
      >>> space["model.dropout"].values
      (0.0, 0.2)
    """
    space: dict[str, Distribution] = {}
    if spec:
        file, arg = space_file(spec)
        module_spec = importlib.util.spec_from_file_location(f"{file.stem}_space", file)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not hasattr(module, "get_space"):
            raise SearchError(f"space file {file}: no get_space(arg=None) function")
        raw = module.get_space(arg)
        if not isinstance(raw, Mapping):
            raise SearchError(f"space file {file}: get_space returned {type(raw).__name__}")
        for field, dist in raw.items():
            if not isinstance(dist, Distribution):
                raise SearchError(
                    f"space file {file}: {field} is {dist!r}, expected a distribution "
                    "(loguniform, uniform, integer, choice, grid)"
                )
            space[str(field)] = dist
    for field, text in (overrides or {}).items():
        space[field] = parse_entry(text, f"--space.{field}")
    return space


# --------------------------------------------------------------------------------------------
# Against the config, and to and from Optuna.


def apply_params(
    config: ml_collections.ConfigDict, params: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with a trial's parameters set, validated.

    Args:
      config: the study's base config (left unchanged).
      params: dotted field -> value, as Optuna's ``trial.params`` holds them (a tuple field's
        value may be its repr, the way categorical values are stored).

    Returns:
      The trial's config, locked.

    Raises:
      ConfigError: an unknown field, a value of the wrong type, or one the config refuses.

    Example:
      >>> from jaxlm.config import load_config
      >>> base = load_config("lstm:smoke")
      >>> c = apply_params(base, {"optimizer.learning_rate": 0.01, "model.hidden_sizes": "(32,)"})
      >>> c.optimizer.learning_rate, c.model.hidden_sizes, base.model.hidden_sizes
      (0.01, (32,), (64, 64))
    """
    config = copy.deepcopy(config)
    for field, value in params.items():
        holder, name = _holder(config, field)
        current = holder[name]
        if isinstance(value, str) and not isinstance(current, str):
            value = ast.literal_eval(value)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        try:
            setattr(holder, name, value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config.{field}: cannot take {value!r} ({e})") from None
    validate(config)
    config.lock()
    return config


def _holder(config: ml_collections.ConfigDict, field: str) -> tuple[Any, str]:
    """The ConfigDict that holds a dotted field, and the field's last name."""
    parts = field.split(".")
    holder: Any = config
    for i, part in enumerate(parts):
        if not isinstance(holder, ml_collections.ConfigDict) or part not in holder:
            known = list(holder.keys()) if isinstance(holder, ml_collections.ConfigDict) else []
            prefix = ".".join(parts[:i])
            hint = difflib.get_close_matches(part, known, n=1)
            said = f"; did you mean {'.'.join([*parts[:i], hint[0]])}?" if hint else ""
            where = f"config.{prefix}" if prefix else "the config"
            raise ConfigError(f"unknown config field {field}: {where} has no {part!r}{said}")
        if i < len(parts) - 1:
            holder = holder[part]
    return holder, parts[-1]


def check_space(
    space: Mapping[str, Distribution], config: ml_collections.ConfigDict, where: str = "space"
) -> None:
    """Checks a space against the base config before any trial starts: not empty, every field
    known, every bound (or value) accepted by :func:`jaxlm.config.validate` with the other
    fields at the base config's values.

    Args:
      space: from :func:`load_space`.
      config: the base config.
      where: the space file, for the messages.

    Raises:
      SearchError: the first bad entry, named with its field and value.

    Example:
      >>> from jaxlm.config import load_config
      >>> check_space({"model.dropout": uniform(0, 1.5)}, load_config("lstm:smoke"))
      ... # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxlm.errors.SearchError: space: model.dropout = 1.5 (uniform:0.0:1.5) is refused by ...
    """
    if not space:
        raise SearchError(
            f"{where}: the search space is empty; give get_space() entries or --space.FIELD=..."
        )
    for field, dist in space.items():
        try:
            _holder(config, field)
        except ConfigError as e:
            raise SearchError(f"{where}: {e}") from None
        for value in dist.extremes():
            try:
                apply_params(config, {field: value})
            except ConfigError as e:
                raise SearchError(
                    f"{where}: {field} = {value!r} ({dist.describe()}) is refused by the "
                    f"config: {e}"
                ) from None


def to_distributions(space: Mapping[str, Distribution], sampler: str = "tpe") -> dict[str, Any]:
    """The space as Optuna distributions, keyed by dotted config field (what ``study.ask``
    takes, and what :mod:`jaxlm.search.population` reuses).

    Args:
      space: from :func:`load_space`.
      sampler: ``grid`` makes every entry categorical over its grid values.

    Returns:
      ``{field: optuna.distributions.BaseDistribution}``.

    Example:
      >>> d = to_distributions({"optimizer.learning_rate": loguniform(1e-4, 1e-2)})
      >>> d["optimizer.learning_rate"]
      FloatDistribution(high=0.01, log=True, low=0.0001, step=None)
    """
    from optuna import distributions as od

    out: dict[str, Any] = {}
    for field, dist in space.items():
        if sampler == "grid" or dist.kind in ("choice", "grid"):
            values = dist.grid_values(field)
            out[field] = od.CategoricalDistribution(values)
        elif dist.kind == "loguniform":
            out[field] = od.FloatDistribution(dist.low, dist.high, log=True)
        elif dist.kind == "uniform":
            out[field] = od.FloatDistribution(dist.low, dist.high, step=dist.step)
        else:
            out[field] = od.IntDistribution(int(dist.low), int(dist.high), step=int(dist.step or 1))
    return out


def grid_space(space: Mapping[str, Distribution]) -> dict[str, list[Any]]:
    """The search space ``optuna.samplers.GridSampler`` takes: field -> every value.

    Example:
      >>> grid_space({"model.dropout": grid([0.0, 0.1])})
      {'model.dropout': [0.0, 0.1]}
    """
    return {field: dist.grid_values(field) for field, dist in space.items()}


def describe_space(space: Mapping[str, Distribution]) -> dict[str, str]:
    """Field -> entry text, as ``study.json`` records it (a study refuses another space)."""
    return {field: dist.describe() for field, dist in space.items()}
