"""The study folder, its storage, samplers, pruners and objectives.

A study folder ``studies/x/`` holds::

    study.json        what the study is: base config (and its digest), space, objectives,
                      sampler, pruner, storage; a later command must agree with it
    base_config.py    the base config as a literal recipe (trials are built from it)
    journal.log       Optuna's JournalStorage (unless --storage names a database)
    trials/<n>/       trial n's run folder (config.json, metrics.jsonl, checkpoints/,
                      status.json, tensorboard/) and trial.json (its parameters)
    jobs/             the job queue of --workers=N
    xla_cache/        JAX's persistent compilation cache
    plots/            Optuna's matplotlib visualisations
    best_config.py    the best trial's config: python -m jaxlm.train --config=.../best_config.py

Samplers and pruners are Optuna's own (``grid``, ``random``, ``tpe``, ``gp``, ``cmaes``,
``nsga2``; ``none``, ``median``, ``hyperband``, ``asha``): this module only builds them from
names, with the optional ones' missing packages said in one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections

from jaxlm.errors import SearchError

STUDY_FILE = "study.json"
BASE_CONFIG_FILE = "base_config.py"
BEST_CONFIG_FILE = "best_config.py"
JOURNAL_FILE = "journal.log"
TRIALS_DIR = "trials"
TRIAL_FILE = "trial.json"
CACHE_DIR = "xla_cache"
PLOTS_DIR = "plots"
JOBS_DIR = "jobs"

SAMPLERS = ("grid", "random", "tpe", "gp", "cmaes", "nsga2")
PRUNERS = ("none", "median", "hyperband", "asha")
# Objectives that are maximised unless said otherwise (name:min / name:max overrides).
MAXIMISED = ("tokens_per_s", "train_tokens_per_s", "accuracy")
# The final report's and status.json's names for the metrics an objective may name.
METRIC_PREFIXES = ("validation_", "test_", "train_", "eval_")
ALIASES = {"loss": "validation_loss", "tokens_per_s": "train_tokens_per_s", "params": "param_count"}


class Objective(NamedTuple):
    """A metric to optimise: ``name`` (a key of the final report or ``status.json``, or
    ``param_count``) and ``direction`` (``minimize`` or ``maximize``)."""

    name: str
    direction: str


def parse_objectives(text: str) -> list[Objective]:
    """``--objectives=validation_loss,tokens_per_s:max`` as objectives with directions.

    Example:
      >>> [tuple(o) for o in parse_objectives("validation_loss,tokens_per_s")]
      [('validation_loss', 'minimize'), ('train_tokens_per_s', 'maximize')]
    """
    out = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, _, way = item.partition(":")
        name = ALIASES.get(name, name)
        if way in ("", None):
            direction = "maximize" if any(name.endswith(m) for m in MAXIMISED) else "minimize"
        elif way in ("min", "minimize"):
            direction = "minimize"
        elif way in ("max", "maximize"):
            direction = "maximize"
        else:
            raise SearchError(f"--objectives: {item!r}: expected NAME, NAME:min or NAME:max")
        if name != "param_count" and not name.startswith(METRIC_PREFIXES):
            raise SearchError(
                f"--objectives: unknown metric {name!r}; expected param_count (params) or a "
                "logged metric: validation_loss, validation_bits, test_loss, train_tokens_per_s "
                "(tokens_per_s), eval_loss, ... (validation_*, test_*, train_*, eval_*)"
            )
        out.append(Objective(name, direction))
    if not out:
        raise SearchError("--objectives: no objective given; e.g. validation_loss")
    if len({o.name for o in out}) != len(out):
        raise SearchError(f"--objectives: an objective is named twice in {text!r}")
    return out


class Settings(NamedTuple):
    """What a study is, as ``study.json`` keeps it."""

    name: str
    config: str  # how the base config was given (--config)
    config_digest: str
    space: dict[str, str]
    objectives: list[Objective]
    sampler: str
    pruner: str
    storage: str | None  # None: the journal in the folder
    seed: int

    def to_json(self) -> dict[str, Any]:
        d = self._asdict()
        d["objectives"] = [list(o) for o in self.objectives]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Settings:
        d = dict(d)
        d["objectives"] = [Objective(*o) for o in d["objectives"]]
        return cls(**{k: d[k] for k in cls._fields})


def config_digest(config: ml_collections.ConfigDict) -> str:
    """A short digest of a config's values, so a study refuses a different base config.

    Example:
      >>> from jaxlm.config import load_config
      >>> config_digest(load_config("lstm:smoke")) == config_digest(load_config("lstm:smoke"))
      True
    """
    text = json.dumps(config.to_dict(), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_settings(study_dir: Path) -> Settings | None:
    """The study's ``study.json``, or None for a new study folder."""
    path = study_dir / STUDY_FILE
    if not path.exists():
        return None
    try:
        return Settings.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise SearchError(f"{path}: unreadable study file ({e}); it is left as it is") from None


def check_same(old: Settings, new: Settings, study_dir: Path) -> None:
    """Refuses a command that disagrees with the study already in the folder (nothing in it
    is touched).

    Raises:
      SearchError: naming the first setting that differs, with both values.
    """
    names = {
        "config_digest": "base config",
        "space": "search space",
        "objectives": "objectives",
        "sampler": "sampler",
        "pruner": "pruner",
        "storage": "storage",
    }
    for field, said in names.items():
        a, b = getattr(old, field), getattr(new, field)
        if a != b:
            if field == "config_digest":
                a, b = f"{old.config} (digest {a})", f"{new.config} (digest {b})"
            raise SearchError(
                f"{study_dir} holds a study made with another {said}: {a} there, {b} now; "
                "use another --study folder (nothing in this one was changed)"
            )


def write_text_atomic(path: Path, text: str) -> None:
    """Writes a file through a temporary file and a rename, so a reader never sees half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes JSON atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=1, default=repr) + "\n")


@contextlib.contextmanager
def folder_lock(study_dir: Path) -> Iterator[None]:
    """Serialises the creation of a study and the asking of trials between processes that
    join the same folder (an ``flock``, released on any death)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / ".search.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_storage(study_dir: Path, url: str | None) -> Any:
    """Optuna's storage for the study: a JournalStorage on ``journal.log`` in the folder, or
    the SQLAlchemy database ``url`` names (``sqlite:///...``, ``postgresql://...``).

    Example:
      >>> import tempfile
      >>> type(open_storage(Path(tempfile.mkdtemp()), None)).__name__
      'JournalStorage'
    """
    import optuna

    if url:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as e:  # SQLAlchemy's errors: a bad URL, a missing driver
            raise SearchError(f"--storage={url}: cannot open ({type(e).__name__}: {e})") from None
    study_dir.mkdir(parents=True, exist_ok=True)
    # Optuna's default lock (a symlink), the one optuna-dashboard and other readers take too.
    backend = optuna.storages.journal.JournalFileBackend(str(study_dir / JOURNAL_FILE))
    return optuna.storages.JournalStorage(backend)


def _need(package: str, sampler: str, extra: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise SearchError(
            f'--sampler={sampler} needs the {package} package: pip install -e ".[{extra}]"'
        )


def make_sampler(
    name: str,
    *,
    seed: int,
    grid: Mapping[str, Sequence[Any]] | None = None,
    n_objectives: int = 1,
) -> Any:
    """Optuna's sampler of that name, seeded.

    Args:
      name: grid, random, tpe (the default), gp (needs torch), cmaes (needs cmaes), nsga2.
      seed: the sampler's seed (the driver offsets it by the trials already asked, so a
        restarted search does not draw the same points again).
      grid: the grid's search space (``grid`` only).
      n_objectives: cmaes takes one objective only.

    Raises:
      SearchError: an unknown name, or a missing optional package.

    Example:
      >>> type(make_sampler("tpe", seed=0)).__name__
      'TPESampler'
    """
    import optuna

    s = optuna.samplers
    if name == "grid":
        return s.GridSampler(dict(grid or {}), seed=seed)
    if name == "random":
        return s.RandomSampler(seed=seed)
    if name == "tpe":
        return s.TPESampler(seed=seed)
    if name == "nsga2":
        return s.NSGAIISampler(seed=seed)
    if name == "gp":
        _need("torch", name, "search-gp")
        return s.GPSampler(seed=seed)  # one objective, or several (expected hypervolume)
    if name == "cmaes":
        _need("cmaes", name, "search-cmaes")
        if n_objectives > 1:
            raise SearchError("--sampler=cmaes takes one objective; use tpe or nsga2")
        return s.CmaEsSampler(seed=seed)
    raise SearchError(f"--sampler={name}: expected one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, config: ml_collections.ConfigDict) -> Any:
    """Optuna's pruner of that name, with resources in training steps.

    ``median``: Optuna's MedianPruner (5 startup trials, the first evaluation not pruned);
    ``hyperband`` and ``asha`` (SuccessiveHalvingPruner): from ``train.eval_every`` steps to
    ``train.num_steps``, reduction factor 3.

    Example:
      >>> from jaxlm.config import load_config
      >>> type(make_pruner("hyperband", load_config("lstm:smoke"))).__name__
      'HyperbandPruner'
    """
    import optuna

    p = optuna.pruners
    t = config.train
    first = max(1, int(t.eval_every or 1))
    if name == "none":
        return p.NopPruner()
    if name == "median":
        return p.MedianPruner(n_startup_trials=5, n_warmup_steps=first)
    if name == "hyperband":
        return p.HyperbandPruner(
            min_resource=first, max_resource=int(t.num_steps), reduction_factor=3
        )
    if name == "asha":
        return p.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    raise SearchError(f"--pruner={name}: expected one of {', '.join(PRUNERS)}")


def trial_dir(study_dir: Path, number: int) -> Path:
    """Trial ``number``'s run folder.

    Example:
      >>> str(trial_dir(Path("studies/x"), 3))
      'studies/x/trials/3'
    """
    return study_dir / TRIALS_DIR / str(number)


def load_base_config(study_dir: Path) -> ml_collections.ConfigDict:
    """The study's base config, from its ``base_config.py``."""
    from jaxlm.config import load_config

    path = study_dir / BASE_CONFIG_FILE
    if not path.exists():
        raise SearchError(f"{study_dir}: no {BASE_CONFIG_FILE}; is this a study folder?")
    return load_config(str(path))


def config_source(config: ml_collections.ConfigDict, doc: str) -> str:
    """A config as a recipe file: ``get_config()`` returns it, locked (what
    ``python -m jaxlm.train --config=FILE`` reads).

    Example:
      >>> from jaxlm.config import load_config
      >>> "def get_config" in config_source(load_config("lstm:smoke"), "The smoke run.")
      True
    """
    body = repr(config.to_dict())
    return (
        f'"""{doc}"""\n\nimport ml_collections\n\n\n'
        "def get_config(arg=None):\n"
        "    del arg\n"
        f"    config = ml_collections.ConfigDict({body})\n"
        "    config.lock()\n"
        "    return config\n"
    )
