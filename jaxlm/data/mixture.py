"""Mixtures of corpora: ``config.data.mixture`` parsed, checked, and turned into probabilities.

A mixture is one string, so that it is one field a command line can set
(``--config.data.mixture=...``) and that a checkpoint's config JSON keeps as it is: entries
separated by commas, each ``[name=]corpus[:path]:weight``::

    builtin:0.3,shakespeare=text_files:/work/shared/data/tinyshakespeare/input.txt:0.7

``corpus`` is ``builtin`` or ``text_files`` (then a file, split by ``config.data.split``, or a
folder with ``*train*``, ``*valid*`` and ``*test*`` files); the weight is the last ``:``-field,
so paths may hold colons but not commas. A source is named by ``name=``, else ``builtin`` or
its path's stem. The first source is the target (or ``config.data.mixture_target``): its
validation loss is the run's. Nothing here reads a corpus or imports JAX or TFDS, so
``config.validate`` checks a mixture before any work.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np

from jaxlm.errors import ConfigError

CORPORA = ("builtin", "text_files")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One entry of a mixture: a corpus (``corpus``, ``path``), its name and its weight."""

    name: str
    corpus: str
    path: str
    weight: float
    entry: str  # the entry as written, for messages


def parse_mixture(spec: str) -> tuple[SourceSpec, ...]:
    """The sources a ``config.data.mixture`` string names (no file is read).

    Args:
      spec: ``"[name=]corpus[:path]:weight,..."``; empty: no mixture.

    Returns:
      The sources in order (the first is the default target).

    Raises:
      ConfigError: an entry without a weight, a weight that is not a positive number, an
        unknown corpus, a text_files entry without a path, or two sources of one name; the
        message names the entry.

    Example:
      >>> sources = parse_mixture("builtin:0.3,ts=text_files:a.txt:0.7")
      >>> [(s.name, s.corpus, s.weight) for s in sources]
      [('builtin', 'builtin', 0.3), ('ts', 'text_files', 0.7)]
      >>> parse_mixture("builtin:0")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxlm.errors.ConfigError: config.data.mixture: entry 1 'builtin:0': weight 0 is not ...
    """
    sources: list[SourceSpec] = []
    entries = spec.split(",") if spec.strip() else []
    for i, raw in enumerate(entries, 1):
        entry = raw.strip()
        where = f"config.data.mixture: entry {i} {entry!r}"
        if not entry:
            raise ConfigError(f"{where}: empty (two commas, or a trailing one?)")
        name = ""
        named = re.match(rf"({_NAME.pattern})=", entry)
        rest = entry[named.end() :] if named else entry
        if named:
            name = named.group(1)
        body, colon, weight_text = rest.rpartition(":")
        if not colon:
            raise ConfigError(
                f"{where}: no weight; expected [name=]corpus[:path]:weight, e.g. builtin:0.3"
            )
        try:
            weight = float(weight_text)
        except ValueError:
            raise ConfigError(
                f"{where}: weight {weight_text!r} is not a number; expected "
                "[name=]corpus[:path]:weight, e.g. builtin:0.3"
            ) from None
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"{where}: weight {weight_text} is not a positive number")
        corpus, _, path = body.partition(":")
        if corpus not in CORPORA:
            raise ConfigError(f"{where}: unknown corpus {corpus!r}; expected one of {CORPORA}")
        if corpus == "builtin" and path:
            raise ConfigError(f"{where}: builtin reads no files; write builtin:weight")
        if corpus == "text_files" and not path:
            raise ConfigError(f"{where}: text_files needs a path, text_files:PATH:weight")
        if not name:
            stem = "builtin" if corpus == "builtin" else Path(path).stem
            name = "_".join(_NAME.findall(stem)) or f"source{i}"
        for other in sources:
            if other.name == name:
                raise ConfigError(
                    f"{where}: a second source named {name!r} (also {other.entry!r}); name one "
                    "with name=, e.g. other=text_files:PATH:weight"
                )
        sources.append(SourceSpec(name, corpus, path, weight, entry))
    return tuple(sources)


def probabilities(weights: tuple[float, ...] | np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Each source's probability: ``p_i ∝ w_i^(1/τ)`` over the weights as given.

    Temperature acts on the weights the mixture states, not on the sources' sizes (the form
    of XLM and mT5, ``p_i ∝ n_i^(1/τ)``): a mixture's weights are already the choice of how
    much each source should count, so τ flattens it (τ > 1, towards uniform) or sharpens it
    (τ < 1, towards the heaviest) from there. To get the size-based form, give each source
    its size (e.g. training bytes) as its weight.

    Args:
      weights: positive weights, one per source.
      temperature: τ > 0; 1 keeps the weights' proportions.

    Returns:
      Probabilities summing to 1.

    Example:
      >>> probabilities((0.3, 0.7)).round(3).tolist()
      [0.3, 0.7]
      >>> probabilities((1.0, 4.0), temperature=2.0).round(3).tolist()  # sqrt: 1 : 2
      [0.333, 0.667]
    """
    w = np.asarray(weights, np.float64) ** (1.0 / temperature)
    return w / w.sum()


def target_index(sources: tuple[SourceSpec, ...], target: str) -> int:
    """The index of the target source: the one named ``target``, or the first.

    Raises:
      ConfigError: no source has that name.

    Example:
      >>> target_index(parse_mixture("builtin:1,ts=text_files:a.txt:2"), "ts")
      1
    """
    if not target:
        return 0
    names = [s.name for s in sources]
    if target not in names:
        raise ConfigError(
            f"config.data.mixture_target: {target!r} names no source of config.data.mixture; "
            f"expected one of {names}"
        )
    return names.index(target)


def check_mixture(data, carry_state: bool) -> None:
    """``config.data``'s mixture fields, and that every source's file or folder is there.

    Args:
      data: the ``data`` section of a config.
      carry_state: ``config.train.carry_state`` (streams mode needs a stream per source).

    Raises:
      ConfigError: naming the field or the entry, before any work.

    Example:
      >>> from jaxlm.config import base_config
      >>> data = base_config().data
      >>> data.mixture = "builtin:0.5,text_files:no/such/file.txt:0.5"
      >>> check_mixture(data, carry_state=True)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxlm.errors.ConfigError: config.data.mixture: entry 2 'text_files:no/such/file.txt:0.5': ...
    """
    spec, target = data.get("mixture", ""), data.get("mixture_target", "")
    resample = data.get("resample")
    temperature = resample.get("temperature", 1.0) if resample is not None else 1.0
    if not spec:
        if target:
            raise ConfigError(
                f"config.data.mixture_target is {target!r} but config.data.mixture is empty"
            )
        if temperature != 1.0:
            raise ConfigError(
                f"config.data.resample.temperature is {temperature} but config.data.mixture is "
                "empty: the temperature weighs a mixture's sources"
            )
        return
    if not isinstance(spec, str):
        raise ConfigError(
            f"config.data.mixture: expected a string like 'builtin:0.3,text_files:PATH:0.7', "
            f"got {spec!r}"
        )
    if data.corpus != "builtin" or data.path:
        raise ConfigError(
            "config.data.mixture names every corpus of the run, so config.data.corpus and "
            f"config.data.path must be left unset (they are {data.corpus!r}, {data.path!r}): "
            "put that corpus in the mixture"
        )
    sources = parse_mixture(spec)
    target_index(sources, target)
    for i, s in enumerate(sources, 1):
        if s.corpus != "text_files":
            continue
        path = Path(s.path).expanduser()
        where = f"config.data.mixture: entry {i} {s.entry!r}"
        if not path.exists():
            raise ConfigError(
                f"{where}: {s.path} does not exist (relative paths are taken from {Path.cwd()})"
            )
        if path.is_file() and _blank(path):
            raise ConfigError(f"{where}: {s.path} is empty")
    from jaxlm.data.batching import window_mode

    mode = window_mode(data.get("windows", "streams"), carry_state)
    if mode == "streams" and data.batch_size < len(sources):
        raise ConfigError(
            f"config.data.batch_size={data.batch_size}: streams mode gives each of the "
            f"{len(sources)} sources of config.data.mixture at least one stream; raise it"
        )


def _blank(path: Path) -> bool:
    """A file with nothing but whitespace (files over 1 MiB count as text, unread here)."""
    size = path.stat().st_size
    return size == 0 or (size < 1 << 20 and not path.read_bytes().strip())


def resets_per_row(data, carry_state: bool) -> bool:
    """Whether training batches carry one reset flag per row: a mixture in streams mode,
    whose sources' streams start their epochs at different steps.

    Example:
      >>> from jaxlm.config import base_config
      >>> data = base_config().data
      >>> data.mixture = "builtin:1,again=builtin:1"
      >>> resets_per_row(data, carry_state=True), resets_per_row(data, carry_state=False)
      (True, False)
    """
    from jaxlm.data.batching import window_mode

    spec = data.get("mixture", "")
    if not spec or window_mode(data.get("windows", "streams"), carry_state) != "streams":
        return False
    return len(parse_mixture(spec)) > 1
